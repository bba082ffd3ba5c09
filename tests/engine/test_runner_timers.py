"""``MachineGroup``'s timer work: what the hosts and the simulator run, on the virtual clock.

A timer pushed back keeps its one clock entry (a heartbeat or a streamed delta re-arming a
silence window must not leave a dead entry behind each time); the expiry still reaches the
machine exactly once, at the last deadline armed, with the last token armed. A timer brought
forward, cancelled, or removed with its machine behaves as if each arm had its own entry.
"""

from __future__ import annotations

from typing import Any

from fsm.engine.clock import VirtualClock
from fsm.engine.effects import ArmTimer, CancelTimer, Effect
from fsm.engine.events import Event, TimerFired
from fsm.engine.machine import StateMachine, without_internal_records
from fsm.engine.runner import MachineGroup
from tests.engine.test_engine_timers import SILENCE


def _group() -> tuple[VirtualClock, MachineGroup, StateMachine[Any]]:
    clock = VirtualClock()
    group = MachineGroup(clock, lambda _mid, _effect: None)
    machine = group.add(StateMachine(SILENCE, machine_id="m"))
    return clock, group, machine


def _expiries(machine: StateMachine[Any]) -> list[tuple[float, str, str]]:
    return [(r.at, r.kind, r.timer) for r in machine.history if r.timer]


def test_a_pushed_back_timer_keeps_one_clock_entry_and_fires_once_at_its_last_deadline() -> None:
    clock, group, machine = _group()
    for t in range(1, 101):
        clock.advance(t / 25)  # every 40 ms, well inside the 5 s window
        group.send("m", Event("ping"))
    last = 100 / 25
    assert clock.pending() == 1
    assert len(clock._queue._heap) == 1  # no dead entries left behind either
    clock.advance(last + 4.999)
    assert machine.state == "quiet"
    clock.advance(last + 5.0)
    assert machine.state == "done"
    assert _expiries(machine) == [(last + 5.0, "transition", "hush")]
    # the entry came due at 5 s, 10 s ... and was moved on each time: a handful, not a hundred
    assert clock.fired <= 3


def test_a_timer_cancelled_after_being_pushed_back_never_fires() -> None:
    clock, group, machine = _group()
    clock.advance(2.0)
    group.send("m", Event("ping"))
    group.send("m", Event("leave"))
    clock.advance(100.0)
    assert machine.state == "away"
    assert _expiries(machine) == []
    assert clock.pending() == 0


def test_a_timer_left_and_armed_afresh_fires_at_the_new_deadline_only() -> None:
    clock, group, machine = _group()
    clock.advance(4.0)
    group.send("m", Event("leave"))
    group.send("m", Event("enter_loud"))  # armed again: 4 + 5
    clock.advance(8.999)
    assert machine.state == "loud"
    clock.advance(9.0)
    assert _expiries(machine) == [(9.0, "transition", "hush")]


class _Recorder:
    """Stands in for a machine to see exactly what the group delivers, and when."""

    machine_id = "r"

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.got: list[tuple[float, TimerFired | Event]] = []

    def handle(self, event: TimerFired | Event, now: float) -> list[Effect]:
        self.got.append((now, event))
        return []


def _arm(timer: str, token: int, deadline: float) -> ArmTimer:
    return ArmTimer(machine_id="r", timer=timer, token=token, deadline=deadline, delay=deadline)


def test_a_timer_brought_forward_fires_at_the_earlier_deadline_with_the_token_armed_last() -> None:
    clock = VirtualClock()
    group = MachineGroup(clock, lambda _mid, _effect: None)
    recorder = _Recorder(clock)
    group.adopt(recorder, [_arm("t", 1, 10.0), _arm("t", 2, 4.0)])  # type: ignore[arg-type]
    clock.advance(20.0)
    assert recorder.got == [(4.0, TimerFired("t", 2))]


def test_a_timer_pushed_back_then_forward_again_fires_once_at_the_deadline_armed_last() -> None:
    clock = VirtualClock()
    group = MachineGroup(clock, lambda _mid, _effect: None)
    recorder = _Recorder(clock)
    arms = [_arm("t", 1, 5.0), _arm("t", 2, 9.0), _arm("t", 3, 7.0)]
    group.adopt(recorder, arms)  # type: ignore[arg-type]
    clock.advance(20.0)
    assert recorder.got == [(7.0, TimerFired("t", 3))]


def test_timers_of_one_machine_are_independent_and_die_with_their_machine() -> None:
    clock = VirtualClock()
    group = MachineGroup(clock, lambda _mid, _effect: None)
    recorder = _Recorder(clock)
    group.adopt(recorder, [_arm("a", 1, 3.0), _arm("b", 1, 6.0)])  # type: ignore[arg-type]
    later = [_arm("a", 2, 8.0), CancelTimer(machine_id="r", timer="b", token=1)]
    group.adopt(recorder, later)  # type: ignore[arg-type]
    clock.advance(5.0)
    assert recorder.got == []  # a: pushed back to 8; b: cancelled
    group.adopt(recorder, [_arm("c", 1, 9.0)])  # type: ignore[arg-type]
    group.remove("r")
    clock.advance(20.0)
    assert recorder.got == []
    assert clock.pending() == 0


def test_without_internal_records_the_timers_and_states_are_the_same() -> None:
    def run() -> tuple[list[Any], StateMachine[Any], VirtualClock]:
        clock, group, machine = _group()
        for t in range(1, 41):
            clock.advance(t / 10)
            group.send("m", Event("ping"))  # internal: re-arms the silence window
        group.send("m", Event("toggle"))  # a transition
        clock.advance(20.0)
        return [(r.kind, r.trigger, r.at) for r in machine.history], machine, clock

    kept, full, full_clock = run()
    with without_internal_records():
        lean, bare, bare_clock = run()
    assert StateMachine.internal_records  # restored on the way out
    assert [r for r in kept if r[0] != "internal"] == lean
    assert sum(r[0] == "internal" for r in kept) == 40 and len(lean) == 3
    assert (bare.state, bare._next_token, bare_clock.fired) == (
        full.state,
        full._next_token,
        full_clock.fired,
    )
    assert bare.state == "done" and lean[-1] == ("transition", "hushed", 9.0)
