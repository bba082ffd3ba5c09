"""Fixtures shared by every test that runs the real Kilo server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.kilo.binary import KiloNotFound, find_kilo
from tests.fakes.fake_llm import FakeLLM, running_fake_llm


@pytest.fixture(scope="session")
def kilo_available() -> None:
    try:
        find_kilo()
    except KiloNotFound as exc:  # the setup installs it; say so instead of failing obscurely
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def fake_llm(kilo_available: None) -> Iterator[FakeLLM]:
    with running_fake_llm() as fake:
        yield fake
