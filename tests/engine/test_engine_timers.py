"""The engine's timer rules, each on a toy machine built to show it, all on the virtual clock.

Timers are where lifecycle bugs hide (the source system's idle clock was armed when a run started,
so a long run was killed right after it ended); each rule of ``fsm.engine.model``'s three timer
kinds gets
a test that fails if the engine bends it.
"""

from __future__ import annotations

import pytest

from fsm.engine.effects import ArmTimer, CancelTimer
from fsm.engine.events import Event
from fsm.engine.machine import StateMachine
from fsm.engine.model import State, on, silence_timer, span_timer, state_timer
from tests.engine.harness import Driver
from tests.engine.toy import TOY_TIMERS, toy

# -- a state timer: ``ring`` (10 s) in ``a`` fires ``rang`` -------------------------------------

ALARM = toy(
    (
        State("a", timers=(state_timer("ring", "ten", "rang"),)),
        State("b"),
        State("c", terminal=True),
    ),
    (
        on("rang", "a", "c"),
        on("go", "a", "b"),
        on("back", "b", "a"),
        on("stay", "a", "a", doc="reflexive: exits and re-enters a"),
        on("nudge", "a", None, doc="internal: no exit, no entry"),
    ),
)


def test_the_initial_state_timer_is_armed_by_start_and_fires() -> None:
    d = Driver(ALARM)
    d.start()
    assert d.arms == [ArmTimer("toy", "ring", token=1, deadline=10.0, delay=10.0)]
    d.advance(9.999)
    assert d.state == "a"
    d.advance(10.0)
    assert d.state == "c"
    assert d.moves() == [(10.0, "rang", "a", "c")]
    assert d.timer_records()[0].timer == "ring"


def test_a_machine_must_be_started_once_before_it_handles_events() -> None:
    machine = StateMachine(ALARM)
    with pytest.raises(RuntimeError, match=r"must be start\(\)ed before handle\(\)"):
        machine.handle(Event("go"), 0.0)
    machine.start(0.0)
    with pytest.raises(RuntimeError, match="was already started"):
        machine.start(1.0)


def test_a_timer_of_a_state_that_was_left_never_fires() -> None:
    d = Driver(ALARM)
    d.start()
    d.advance(5.0)
    d.send("go")
    assert d.raw[-1] == CancelTimer("toy", "ring", 1)
    d.advance(1000.0)
    assert d.state == "b"
    assert d.timer_records() == []
    assert d.machine.timers == {}
    assert d.clock.pending() == 0


def test_an_expiry_delivered_after_the_cancel_is_dropped_by_its_token() -> None:
    """A clock may have dequeued the callback before the cancel arrives: the token saves us."""
    d = Driver(ALARM)
    d.start()
    d.advance(5.0)
    d.send("go")
    d.advance(10.0)
    assert d.fire("ring", 1) == []
    assert d.state == "b"
    dropped = d.history[-1]
    assert dropped.kind == "timer_dropped"
    assert dropped.reason == "timer 'ring' token 1 is no longer armed"


def test_re_entering_a_state_arms_a_fresh_timer() -> None:
    d = Driver(ALARM)
    d.start()
    d.advance(5.0)
    d.send("go")
    d.advance(8.0)
    d.send("back")
    d.advance(17.999)
    assert d.state == "a", "the first arming (due at 10) must not fire"
    d.advance(18.0)
    assert d.moves()[-1] == (18.0, "rang", "a", "c")


def test_a_reflexive_transition_re_arms_but_an_internal_one_does_not() -> None:
    reflexive = Driver(ALARM)
    reflexive.start()
    reflexive.advance(5.0)
    reflexive.send("stay")
    reflexive.advance(14.999)
    assert reflexive.state == "a"
    reflexive.advance(15.0)
    assert reflexive.state == "c"

    internal = Driver(ALARM)
    internal.start()
    internal.advance(5.0)
    internal.send("nudge")
    internal.advance(10.0)
    assert internal.moves()[-1] == (10.0, "rang", "a", "c")


def test_durations_come_from_the_effective_values_not_the_defaults() -> None:
    d = Driver(ALARM, TOY_TIMERS.resolve({"ten": "2s"}))
    d.start()
    d.advance(2.0)
    assert d.moves() == [(2.0, "rang", "a", "c")]


# -- chained state timers --------------------------------------------------------------------

CHAIN = toy(
    (
        State("a", timers=(state_timer("first", "one", "next"),)),
        State("b", timers=(state_timer("second", "one", "next"),)),
        State("c", terminal=True),
    ),
    (on("next", "a", "b"), on("next", "b", "c")),
)


def test_chained_timers_both_fire_within_one_advance() -> None:
    d = Driver(CHAIN)
    d.start()
    d.advance(2.0)
    assert d.moves() == [(1.0, "next", "a", "b"), (2.0, "next", "b", "c")]
    assert [r.timer for r in d.timer_records()] == ["first", "second"]


# -- a silence timer: ``hush`` (5 s) over quiet+loud, pushed back by ``ping`` only ----------------

SILENCE = toy(
    (
        State(
            "quiet",
            timers=(silence_timer("hush", "silence", "hushed", ("ping",), span=("loud",)),),
        ),
        State("loud"),
        State("away"),
        State("done", terminal=True),
    ),
    (
        on("ping", ("quiet", "loud"), None),
        on("other", ("quiet", "loud"), None),
        on("toggle", "quiet", "loud"),
        on("toggle", "loud", "quiet"),
        on("leave", ("quiet", "loud"), "away"),
        on("enter_loud", "away", "loud"),
        on("enter_quiet", "away", "quiet"),
        on("hushed", ("quiet", "loud"), "done"),
    ),
)


def test_a_silence_timer_is_pushed_back_by_its_events_and_nothing_else() -> None:
    d = Driver(SILENCE)
    d.start()
    assert d.machine.deadlines() == {"hush": 5.0}
    d.advance(3.0)
    d.send("ping")
    assert d.machine.deadlines() == {"hush": 8.0}
    d.advance(4.0)
    d.send("other")  # an event, but not one of rearmed_by
    d.send("nonsense")  # an ignored event
    d.advance(6.0)
    d.send("toggle")  # a move inside the span
    d.send("toggle")
    assert d.machine.deadlines() == {"hush": 8.0}
    d.advance(7.999)
    assert d.state == "quiet"
    d.advance(8.0)
    assert d.moves()[-1] == (8.0, "hushed", "quiet", "done")


def test_each_push_back_drops_the_previous_expiry() -> None:
    d = Driver(SILENCE)
    d.start()
    tokens = []
    for t in (1.0, 2.0, 3.0):
        d.advance(t)
        d.send("ping")
        tokens.append(d.machine.timers["hush"].token)
    assert len(set(tokens)) == 3
    assert d.fire("hush", tokens[0]) == []
    assert d.history[-1].kind == "timer_dropped"
    d.advance(8.0)
    assert d.state == "done"


def test_a_silence_timer_dies_when_its_span_is_left() -> None:
    d = Driver(SILENCE)
    d.start()
    d.advance(2.0)
    d.send("leave")
    d.advance(100.0)
    assert d.state == "away"
    assert d.timer_records() == []


def test_a_silence_timer_is_armed_afresh_on_entering_its_span_through_any_of_its_states() -> None:
    """Regression: entering the span through a state other than the declaring one armed nothing
    (a session back from ``stale`` into ``running`` stopped watching heartbeats)."""
    d = Driver(SILENCE)
    d.start()
    d.advance(2.0)
    d.send("leave")
    d.advance(10.0)
    d.send("enter_loud")
    assert d.machine.deadlines() == {"hush": 15.0}
    d.advance(15.0)
    assert d.moves()[-1] == (15.0, "hushed", "loud", "done")


# -- a span timer: ``cap`` (30 s) armed in running, kept over waiting ----------------------------

SPAN = toy(
    (
        State("running", timers=(span_timer("cap", "cap", "capped", span=("waiting",)),)),
        State("waiting"),
        State("idle"),
        State("over", terminal=True),
    ),
    (
        on("wait", "running", "waiting"),
        on("resume", "waiting", "running"),
        on("finish", ("running", "waiting"), "idle"),
        on("again", "idle", "running"),
        on("capped", ("running", "waiting"), "over"),
    ),
)


def test_a_span_timer_survives_moves_inside_its_span() -> None:
    d = Driver(SPAN)
    d.start()
    d.advance(10.0)
    d.send("wait")
    d.advance(20.0)
    d.send("resume")  # re-entering the declaring state from inside the span keeps the deadline
    d.send("wait")
    assert d.machine.deadlines() == {"cap": 30.0}
    d.advance(29.999)
    assert d.state == "waiting"
    d.advance(30.0)
    assert d.moves()[-1] == (30.0, "capped", "waiting", "over")


def test_a_span_timer_dies_outside_its_span_and_restarts_on_coming_back() -> None:
    d = Driver(SPAN)
    d.start()
    d.advance(10.0)
    d.send("finish")
    d.advance(100.0)
    assert d.state == "idle"
    assert d.timer_records() == []
    d.send("again")
    d.advance(129.999)
    assert d.state == "running"
    d.advance(130.0)
    assert d.moves()[-1] == (130.0, "capped", "running", "over")
