"""The virtual clock's order under churn: what the simulator's timelines rest on.

Every simulated world is a sequence of callbacks in (deadline, scheduling order). Re-armed timers
leave dead entries that the queue drops lazily and compacts away in bulk, and ``advance`` pops
from the heap in a tight loop while the callbacks it runs cancel and schedule more: none of that
may change which callbacks run, or when, or in what order.
"""

from __future__ import annotations

import random

from fsm.engine.clock import TimerHandle, VirtualClock


def test_ties_run_in_scheduling_order_and_callbacks_scheduled_now_run_now() -> None:
    clock = VirtualClock()
    ran: list[tuple[float, str]] = []

    def note(label: str) -> None:
        ran.append((clock.now(), label))

    clock.call_at(5.0, lambda: note("a"))
    clock.call_at(5.0, lambda: (note("b"), clock.call_at(1.0, lambda: note("late"))))
    clock.call_at(5.0, lambda: note("c"))
    clock.call_at(7.0, lambda: note("d"))
    assert clock.advance(6.0) == 4
    assert ran == [(5.0, "a"), (5.0, "b"), (5.0, "c"), (5.0, "late")]
    assert clock.now() == 6.0 and clock.pending() == 1


def test_compaction_during_advance_keeps_every_live_callback_in_order() -> None:
    """A callback that cancels most of the heap (a compaction) mid-``advance``."""
    clock = VirtualClock()
    ran: list[int] = []
    doomed: list[TimerHandle] = [
        clock.call_at(50.0 + i, lambda: ran.append(-1)) for i in range(600)
    ]
    for i in range(10):
        clock.call_at(10.0 + i, lambda i=i: ran.append(i))

    def cancel_all() -> None:
        for handle in doomed:
            handle.cancel()
        clock.call_at(12.5, lambda: ran.append(100))

    clock.call_at(12.0, cancel_all)
    clock.advance(1000.0)
    assert ran == [0, 1, 2, 100, 3, 4, 5, 6, 7, 8, 9]
    assert clock.pending() == 0


def test_random_churn_runs_exactly_the_live_callbacks_in_deadline_order() -> None:
    """Re-arm storms (cancel + schedule, as a silence timer does) against a plain model."""
    rng = random.Random(7)
    clock = VirtualClock()
    live: dict[int, tuple[float, int]] = {}
    handles: dict[int, TimerHandle] = {}
    ran: list[int] = []
    seq = 0

    def schedule(key: int, deadline: float) -> None:
        nonlocal seq
        old = handles.pop(key, None)
        if old is not None:
            old.cancel()
        seq += 1
        live[key] = (max(deadline, clock.now()), seq)

        def fire(key: int = key) -> None:
            ran.append(key)
            del live[key]
            handles.pop(key)

        handles[key] = clock.call_at(deadline, fire)

    now = 0.0
    for _ in range(3000):
        schedule(rng.randrange(40), now + rng.uniform(0, 30))
        if rng.random() < 0.2:
            now += rng.uniform(0, 5)
            expected = [
                k for k, _ in sorted(live.items(), key=lambda kv: kv[1]) if _ <= (now, 1e18)
            ]
            ran.clear()
            clock.advance(now)
            assert ran == expected
    assert clock.pending() == len(live)
