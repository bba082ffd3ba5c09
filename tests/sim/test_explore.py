"""``fsm-agent check``: the bounded exhaustive search over the composed machines."""

from __future__ import annotations

from fsm.sim.explore import ChoiceClock, explore
from fsm.sim.run import mutated
from fsm.sim.scenario import Removal


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
