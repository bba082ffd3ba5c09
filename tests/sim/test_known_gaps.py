"""Behaviour the issue or the design asks for that the core does not have yet.

Each test states the wanted behaviour as a scenario and is a *strict* xfail: the day the core
is fixed it passes, the xfail turns into a failure, and whoever fixed it removes the marker. The
library scenarios meanwhile assert what the core does today (with a note pointing here).
"""

from __future__ import annotations

import pytest

from fsm.sim.run import run_scenario
from fsm.sim.scenario import parse_scenario


def run(text: str) -> bool:
    return run_scenario(parse_scenario(text, "gap.toml")).passed


def test_ingest_down_past_the_window_fails_connection_lost() -> None:
    """Was a strict xfail (the session failed a replaced stale wrapper's messages
    ``agent_restarted``): giving up on a silent wrapper now fails them ``connection_lost``."""
    assert run(
        """
name = "gap"
until = "10m"
[[step]]
at = "10s"
do = "prompt"
message = "m1"
plan = ["text 10m"]
[[step]]
at = "20s"
do = "ingest.drop"
for = "5m"
[[expect]]
kind = "outcome"
message = "m1"
status = "failed"
reason = "connection_lost"
"""
    )


def test_a_silent_tool_longer_than_the_hung_window_completes_with_default_timers() -> None:
    """Was a strict xfail: the 5 min hung timer failed a turn whose silent tool the wrapper was
    rightly holding; the hung session is now a 16.5 min backstop above the wrapper's clocks."""
    assert run(
        """
name = "gap"
until = "10m"
[[step]]
at = "10s"
do = "prompt"
message = "m1"
plan = ["text 2s", "tool 6m", "text 5s"]
[[expect]]
kind = "outcome"
message = "m1"
status = "completed"
"""
    )


def test_a_question_answered_after_six_minutes_completes_with_default_timers() -> None:
    """Was a strict xfail: the hung timer ran while the agent waited on the user. It now pauses
    with the wrapper's no-progress clock (and is a backstop above it)."""
    assert run(
        """
name = "gap"
[[step]]
at = "10s"
do = "prompt"
message = "m1"
plan = ["text 2s", "question", "text 3s"]
[[step]]
at = "6m10s"
do = "answer"
[[expect]]
kind = "outcome"
message = "m1"
status = "completed"
"""
    )


@pytest.mark.xfail(
    strict=True,
    reason="Kilo's superseded close names no message and every Kilo event goes to every open "
    "turn: the first message's outcome waits for the follow-up's turn to close",
)
def test_the_first_message_completes_when_its_own_turn_ends() -> None:
    assert run(
        """
name = "gap"
[[step]]
at = "10s"
do = "prompt"
message = "m1"
plan = ["text 20s"]
[[step]]
at = "15s"
do = "prompt"
message = "m2"
plan = ["text 60s"]
[[expect]]
kind = "outcome"
message = "m1"
status = "completed"
within = ["30s", "32s"]
"""
    )


@pytest.mark.xfail(
    strict=True,
    reason="hosts, mirrored here: the control plane starts every wrapper with agent_<session> and "
    "never learns the Kilo session id the first wrapper created, so after an idle stop the next "
    "wrapper creates a new Kilo session instead of resuming it",
)
def test_idle_cleanup_resumes_the_kilo_session_the_first_wrapper_created() -> None:
    assert run(
        """
name = "gap"
[[step]]
at = "10s"
do = "prompt"
message = "m1"
plan = ["text 5s"]
[[step]]
at = "11m"
do = "prompt"
message = "m2"
plan = ["text 5s"]
[[expect]]
kind = "count"
action = "agent.session_created"
equals = 1
"""
    )
