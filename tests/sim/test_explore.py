"""``fsm-agent check``: the bounded exhaustive search over the composed machines."""

from __future__ import annotations

from fsm.engine.events import Event
from fsm.engine.machine import StateMachine
from fsm.engine.runner import MachineGroup
from fsm.sim.explore import ChoiceClock, explore
from fsm.sim.run import mutated
from fsm.sim.scenario import Removal
from tests.engine.test_engine_timers import SILENCE


def test_the_real_machines_keep_every_invariant_within_the_bound() -> None:
    report = explore(depth=3)
    assert report.violation is None, report.render()
    assert report.states > 100 and report.transitions > report.states
    assert "states and" in report.render() and "no invariant violated" in report.render()


def test_a_broken_machine_yields_a_shortest_trace() -> None:
    with mutated([Removal("session", "resume", "stopped", "starting")]):
        report = explore(depth=3)
    assert report.violation is not None
    assert report.violation.invariant == "deadlock"
    lines = report.trace.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    # Breadth-first: nothing shorter exists. The session stops (idle, or the client), then a
    # message arrives that nothing will ever send.
    assert len(steps) == 2 and steps[1] == "step 2: prompt"
    assert any("→ stopped" in line for line in lines)
    assert "VIOLATION" in report.render()


def test_the_choice_clock_runs_fast_reactions_at_once_and_offers_slow_ones() -> None:
    clock = ChoiceClock(prompt=1.0)
    ran: list[str] = []
    clock.call_later(0.01, lambda: ran.append("fast"))
    clock.call_later(30, lambda: ran.append("slow"))
    clock.drain()
    assert ran == ["fast"]
    (slow,) = clock.choices()
    clock.fire(slow)
    assert ran == ["fast", "slow"] and clock.now() == 30


def test_machine_timers_are_choices_named_for_their_machine_and_fire_in_one_step() -> None:
    """On the choice clock a pushed-back timer gets a new entry (the runner's kept-and-moved
    entry would make an expiry cost two steps of the search and lose states within the bound),
    and every timer entry is labelled as the machine timer it is, whatever its delay."""
    clock = ChoiceClock(prompt=1.0)
    group = MachineGroup(clock, lambda _mid, _effect: None)
    machine = group.add(StateMachine(SILENCE, machine_id="m"))
    clock.drain()
    clock.call_at(2.0, lambda: None)  # something else happens first: time moves to 2 s
    (_hush, other) = sorted(clock.choices(), key=lambda p: p.deadline, reverse=True)
    clock.fire(other)
    group.send("m", Event("ping"))  # pushed back from 5 s to 7 s
    (entry,) = clock.choices()
    assert entry.label == "timer m.hush" and entry.deadline == 7.0
    clock.fire(entry)
    assert machine.state == "done"
