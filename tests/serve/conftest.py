from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.ingest_server import FakeIngest


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    server = FakeIngest()
    server.start()
    yield server
    server.close()
