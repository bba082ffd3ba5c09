"""Which agent servers the tests can run: each test needing one skips, naming the install command,
where it is missing, unless CI requires it (``.ci/run`` sets ``FSM_AGENT_REQUIRE_OPENCODE=1``:
there a missing OpenCode fails its half of the suite instead of skipping)."""

from __future__ import annotations

import os

import pytest

from adapters.agents.registry import AGENTS
from adapters.kilo.binary import AgentNotFound, find_agent

REQUIRE_OPENCODE = "FSM_AGENT_REQUIRE_OPENCODE"


def require_agent(name: str) -> str:
    """``name`` when its binary is installed; else a skip naming the install command (a failure
    for Kilo, always required, and for OpenCode where CI requires it)."""
    try:
        find_agent(AGENTS[name])
    except AgentNotFound as exc:
        message = f"{name} not installed (run scripts/setup-{name}.sh or just setup): {exc}"
        if name == "kilo" or os.environ.get(REQUIRE_OPENCODE) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return name
