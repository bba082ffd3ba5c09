"""The ``turn`` machine's stories: one prompt, exactly one outcome.

Defaults: no progress 7 min (paused while the user is asked, held while a tool runs), hard cap
120 min from receipt, 1 s grace after Kilo closes a turn for the error that explains it.
"""

from __future__ import annotations

from fsm.engine.effects import AbortAgentTurn, AgentStuck, EmitOutcome, SubmitPrompt
from fsm.machines import turn
from fsm.machines.turn import TurnContext
from tests.engine.harness import Driver

MIN = 60.0


def running() -> Driver:
    d = Driver(turn.SPEC, context=TurnContext(message_id="m1"))
    d.start()
    d.send("dispatch")
    d.send("started")
    d.take_effects()
    return d


def test_a_turn_that_completes() -> None:
    d = Driver(turn.SPEC, context=TurnContext(message_id="m1"))
    d.start()
    assert d.send("dispatch") == [SubmitPrompt("m1", resubmission=False)]
    d.send("started")
    d.advance(30.0)
    d.send("progress")
    d.send("turn_closed", reason="completed")
    assert d.state == "finalizing"
    d.advance(30.999)
    assert d.state == "finalizing"
    d.advance(31.0)
    assert d.state == "completed"
    assert d.take_effects()[-1] == EmitOutcome("m1", "completed", "completed", "")


def test_one_outcome_only_late_and_duplicate_events_are_ignored() -> None:
    d = running()
    d.send("turn_closed")
    d.advance(1.0)
    d.send("turn_closed")
    d.send("error_reported", error="late")
    d.send("cancel")
    outcomes = [e for e in d.effects if isinstance(e, EmitOutcome)]
    assert outcomes == [EmitOutcome("m1", "completed", "completed", "")]
    assert {r.reason for r in d.history[-3:]} == {"machine is terminal"}


def test_an_error_just_after_the_close_makes_the_turn_fail_with_it() -> None:
    d = running()
    d.send("turn_closed", reason="completed")
    d.advance(0.4)
    d.send("error_reported", error="model overloaded")
    d.advance(1.0)
    assert d.state == "failed"
    assert d.effects[-1] == EmitOutcome("m1", "failed", "agent_error", "model overloaded")


def test_an_interrupted_close_is_cancelled() -> None:
    d = running()
    d.send("turn_closed", reason="interrupted")
    d.advance(1.0)
    assert d.effects[-1] == EmitOutcome("m1", "cancelled", "cancelled", "")


def test_no_progress_for_7_minutes_aborts_the_turn() -> None:
    d = running()
    d.advance(2 * MIN)
    d.send("progress")
    d.send("heartbeat")  # not progress: ignored, and it pushes nothing back
    d.advance(9 * MIN - 0.001)
    assert d.state == "running"
    d.advance(9 * MIN)
    assert d.moves()[-1] == (9 * MIN, "no_progress", "running", "failed")
    assert d.take_effects() == [
        AbortAgentTurn("m1"),
        EmitOutcome("m1", "failed", "no_progress", ""),
    ]


def test_waiting_on_the_user_pauses_the_no_progress_clock() -> None:
    d = running()
    d.advance(6 * MIN)
    d.send("asked")
    d.advance(60 * MIN)
    assert d.state == "waiting_user"
    d.send("answered")
    d.advance(67 * MIN - 0.001)
    assert d.state == "running", "a fresh 7-minute window started at the answer"
    d.advance(67 * MIN)
    assert d.state == "failed"


def test_a_running_tool_holds_the_no_progress_clock_until_it_finishes() -> None:
    d = running()
    d.advance(1 * MIN)
    d.send("tool_started", part="npm-install")
    d.advance(8 * MIN)
    assert d.state == "running"
    assert d.moves()[-1] == (8 * MIN, "no_progress", "running", "running")
    d.advance(20 * MIN)
    d.send("tool_finished", part="npm-install")
    d.advance(27 * MIN - 0.001)
    assert d.state == "running"
    d.advance(27 * MIN)
    assert d.state == "failed"


def test_the_hard_cap_fires_120_minutes_after_receipt_whatever_the_progress() -> None:
    d = Driver(turn.SPEC, context=TurnContext(message_id="m1"))
    d.start()
    d.advance(5 * MIN)
    d.send("dispatch")
    d.send("started")
    while d.clock.now() < 120 * MIN - 60.0:
        d.advance_by(60.0)
        d.send("progress")
    d.advance(120 * MIN - 0.001)
    assert d.state == "running"
    d.advance(120 * MIN)
    assert d.moves()[-1] == (120 * MIN, "hard_cap", "running", "failed")
    assert d.effects[-1] == EmitOutcome("m1", "failed", "execution_limit", "")


def test_a_turn_lost_before_any_progress_is_resubmitted_once() -> None:
    d = running()
    d.send("agent_lost")
    assert d.state == "queued"
    assert d.send("dispatch") == [SubmitPrompt("m1", resubmission=True)]
    d.send("started")
    d.send("agent_lost")
    assert d.state == "failed"
    assert d.effects[-1] == EmitOutcome("m1", "failed", "agent_restarted", "")


def test_a_turn_lost_after_progress_fails_agent_restarted() -> None:
    d = running()
    d.send("progress")
    d.send("agent_lost")
    assert d.effects[-1] == EmitOutcome("m1", "failed", "agent_restarted", "")


def test_cancel_aborts_the_agent_turn() -> None:
    d = running()
    assert d.send("cancel") == [AbortAgentTurn("m1"), EmitOutcome("m1", "cancelled", "cancelled")]


def test_a_prompt_kilo_took_but_never_started_fails_no_progress_not_at_the_hard_cap() -> None:
    """Kilo answered prompt_async and then never opened the turn (an abort raced the prompt):
    before, ``accepted`` had no timer but the 120 min cap."""
    d = Driver(turn.SPEC, context=TurnContext(message_id="m1"))
    d.start()
    d.send("dispatch")
    d.take_effects()
    d.advance(7 * MIN - 1)
    assert d.state == "accepted"
    d.advance(7 * MIN)
    assert d.state == "failed"
    effects = d.take_effects()
    assert any(isinstance(e, AbortAgentTurn) for e in effects)
    assert AgentStuck("m1") in effects  # Kilo is wedged: the wrapper restarts it
    assert effects[-1] == EmitOutcome("m1", "failed", "no_progress", "")
