from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.agents.registry import AGENTS
from tests.fakes.agent_binaries import require_agent
from tests.fakes.ingest_server import FakeIngest


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    server = FakeIngest()
    server.start()
    yield server
    server.close()


@pytest.fixture(params=list(AGENTS))
def agent(request: pytest.FixtureRequest) -> str:
    """Each agent server in turn (issue 17): the serve suite's shared behaviour holds for both."""
    return require_agent(str(request.param))


@pytest.fixture
def opencode() -> str:
    return require_agent("opencode")
