"""Behaviour the issue or the design asks for that the core does not have yet.

Each test states the wanted behaviour as a scenario and was a *strict* xfail: the day the core
was fixed it passed, the xfail turned into a failure, and whoever fixed it removed the marker.
None is left: each test now says what was wrong and stays, so the gap cannot come back.
"""

from __future__ import annotations

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


def test_a_follow_up_joins_the_running_turn_and_both_end_from_its_one_outcome() -> None:
    """Was a strict xfail asking the first message to complete when "its own" turn ends. That is
    not Kilo's model: a prompt sent while a run is open is queued into that run (a ``superseded``
    close, then the run goes on with it), and Kilo drops it if the run fails or is aborted. The
    later design's acceptance 3 and 4 say the same: A and B end together from one outcome, and
    both fail with Kilo's reason. The wrapper now tracks Kilo's runs and ends a run's messages,
    and only those, at its final close (the ``own_turn`` invariant)."""
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
within = ["90s", "93s"]
[[expect]]
kind = "outcome"
message = "m2"
status = "completed"
within = ["90s", "93s"]
"""
    )


def test_idle_cleanup_resumes_the_kilo_session_the_first_wrapper_created() -> None:
    """Was a strict xfail: the hosts never learned the Kilo session the first wrapper created.
    The real wrapper records it in its state dir (``fsm.serve.host.SESSIONS_FILE``), and the
    simulated one now mirrors that record, so the next wrapper resumes the conversation."""
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
