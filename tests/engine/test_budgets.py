"""Budgets (N uses in a sliding window) and backoffs, on toy machines with round numbers.

Restart intensity is data, as in an OTP supervisor: a transition that ``consumes`` a budget is
taken only while the budget has room, else the next declared transition for the trigger is (here
``failed``). Uses leave the window one by one, at exactly ``window`` seconds after they happened.
"""

from __future__ import annotations

import random

from fsm.engine.model import Backoff, Budget, State, backoff_timer, on
from tests.engine.harness import Driver
from tests.engine.toy import toy

CRASHY = toy(
    (
        State("up"),
        State("restarting", timers=(backoff_timer("delay", "restarts", "restart_due"),)),
    ),
    (
        on("crash", "up", "restarting", consumes="restarts"),
        on("crash", "up", "failed"),
        on("restart_due", "restarting", "up"),
    ),
    budgets=(
        Budget(
            "restarts",
            limit=3,
            window="window",  # 10 s
            backoff_initial="backoff_initial",  # 1 s
            backoff_maximum="backoff_max",  # 4 s
        ),
    ),
)


def crash_at(d: Driver, t: float) -> float | None:
    """Crash at ``t``; return the restart delay, or None when the crash was fatal."""
    d.advance(t)
    d.send("crash")
    if d.state != "restarting":
        return None
    delay = d.machine.deadlines()["delay"] - t
    d.advance(t + delay)
    assert d.state == "up"
    return delay


def test_a_budget_counts_uses_and_paces_them_with_its_backoff() -> None:
    d = Driver(CRASHY)
    d.start()
    assert d.machine.budget_remaining("restarts") == 3
    assert [crash_at(d, t) for t in (0.0, 2.0, 5.0)] == [1.0, 2.0, 4.0]
    assert d.machine.budget_remaining("restarts") == 0
    assert crash_at(d, 9.999) is None
    assert d.state == "failed"


def test_a_use_leaves_the_window_exactly_window_seconds_later() -> None:
    d = Driver(CRASHY)
    d.start()
    for t in (0.0, 2.0, 5.0):
        crash_at(d, t)
    # At t=10 the use at t=0 is out: one restart is allowed again, paced as the third in window.
    assert crash_at(d, 10.0) == 4.0
    assert d.machine.budget_uses["restarts"] == [2.0, 5.0, 10.0]
    assert crash_at(d, 14.0) == 4.0  # the use at t=2 is out by now
    assert d.machine.budget_uses["restarts"] == [5.0, 10.0, 14.0]


def test_a_quiet_period_longer_than_the_window_resets_everything() -> None:
    d = Driver(CRASHY)
    d.start()
    for t in (0.0, 2.0, 5.0):
        crash_at(d, t)
    assert [crash_at(d, t) for t in (100.0, 102.0, 105.0)] == [1.0, 2.0, 4.0]


def test_a_spent_budget_with_no_alternative_is_recorded_as_blocked() -> None:
    spec = toy(
        (State("up"), State("down")),
        (on("crash", "up", "down", consumes="restarts"), on("back", "down", "up")),
        budgets=(Budget("restarts", limit=1, window="window"),),
    )
    d = Driver(spec)
    d.start()
    d.send("crash")
    d.send("back")
    d.send("crash")
    assert d.state == "up"
    assert d.history[-1].reason == "blocked in 'up' by budget restarts"


# -- backoffs --------------------------------------------------------------------------------


def link(jitter: float = 0.0) -> Driver:
    spec = toy(
        (
            State("connecting"),
            State("backoff", timers=(backoff_timer("retry", "reconnect", "retry_due"),)),
            State("connected"),
        ),
        (
            on("fail", ("connecting", "connected"), "backoff"),
            on("retry_due", "backoff", "connecting"),
            on("ok", "connecting", "connected"),
        ),
        backoffs=(
            Backoff(
                "reconnect",
                initial="backoff_initial",
                maximum="backoff_max",
                factor=2.0,
                jitter=jitter,
                resets_in=("connected",),
            ),
        ),
    )
    return Driver(spec, rng=random.Random(42))


def fail_and_wait(d: Driver) -> float:
    d.send("fail")
    delay = d.machine.deadlines()["retry"] - d.clock.now()
    d.advance_by(delay)
    return delay


def test_a_backoff_doubles_up_to_its_maximum_and_resets_on_success() -> None:
    d = link()
    d.start()
    assert [fail_and_wait(d) for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    d.send("ok")
    assert d.machine.backoff_attempts["reconnect"] == 0
    assert fail_and_wait(d) == 1.0


def test_jitter_adds_at_most_its_fraction_and_comes_from_the_injected_random_source() -> None:
    d = link(jitter=0.5)
    d.start()
    delays = [fail_and_wait(d) for _ in range(6)]
    for delay, base in zip(delays, [1.0, 2.0, 4.0, 4.0, 4.0, 4.0], strict=True):
        assert base <= delay <= base * 1.5
    again = link(jitter=0.5)
    again.start()
    assert [fail_and_wait(again) for _ in range(6)] == delays
