"""The ``supervisor`` machine's stories on the virtual clock: a wrapper that stops by itself, one
that crashes (restarted 5 times in 10 min with a 1 s doubling backoff, then given up on), one
that crashes after running healthily (the backoff starts again), and stop signals."""

from __future__ import annotations

from fsm.engine.effects import ExitProcess, StartWrapper
from fsm.machines import supervisor
from fsm.machines.supervisor import SignalWrapper, exit_status
from tests.engine.harness import Driver

MIN = 60.0


def restart(d: Driver) -> float:
    """Let the restart delay run out; how long it was."""
    before = d.clock.now()
    d.advance(d.machine.deadlines()["restart_delay"])
    assert d.state == "running"
    return d.clock.now() - before


def started() -> Driver:
    d = Driver(supervisor.SPEC)
    d.start()
    assert d.take_effects() == [StartWrapper(attempt=1)]
    return d


def test_exit_0_ends_the_supervisor_with_0() -> None:
    d = started()
    d.advance(20 * MIN)
    assert d.state == "stable"
    assert d.send("wrapper_exited", code=0) == [ExitProcess(0, "wrapper exited")]
    assert d.state == "exited"


def test_a_crash_loop_is_paced_1_2_4_8_16_s_and_given_up_after_5_restarts() -> None:
    d = started()
    starts: list[float] = []
    for _ in range(5):
        d.send("wrapper_exited", code=1)
        assert d.state == "restarting"
        restart(d)
        starts.append(d.clock.now())
    gaps = [round(b - a, 3) for a, b in zip([0.0, *starts], starts, strict=False)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert [e for e in d.take_effects() if isinstance(e, StartWrapper)] == [
        StartWrapper(attempt=n) for n in range(2, 7)
    ]
    assert d.send("wrapper_exited", code=3) == [ExitProcess(3, "wrapper restart budget spent")]
    assert d.state == "failed"


def test_exit_2_a_refused_command_line_ends_it_at_once_with_2() -> None:
    d = started()
    assert d.send("wrapper_exited", code=2) == [ExitProcess(2, "wrapper refused its command line")]
    assert d.state == "failed"


def test_the_backoff_is_capped_at_30_s() -> None:
    values = supervisor.SPEC.table.resolve({"supervisor_stable": "10m"})
    d = Driver(supervisor.SPEC, values)
    d.start()
    # Space the crashes out so the budget (5 in 10 min) never runs out, but never run stable.
    gaps = []
    for _ in range(7):
        d.advance_by(2.5 * MIN)
        d.send("wrapper_exited", code=1)
        gaps.append(round(restart(d), 3))
    assert gaps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_wrapper_that_ran_a_minute_was_healthy_the_next_crash_waits_1_s_again() -> None:
    d = started()
    for _ in range(3):  # 1, 2, 4 s
        d.send("wrapper_exited", code=1)
        restart(d)
    d.advance_by(MIN)
    assert d.state == "stable"
    d.send("wrapper_exited", code=1)
    at = d.clock.now()
    d.advance(at + 1.0)
    assert d.moves()[-1] == (at + 1.0, "restart_due", "restarting", "running")


def test_the_budget_counts_restarts_in_the_last_10_min_however_healthy() -> None:
    d = started()
    for _ in range(5):
        d.advance_by(MIN + 1.0)  # each one ran stable, so each restart waits 1 s
        d.send("wrapper_exited", code=1)
        d.advance_by(1.0)
    assert d.clock.now() < 10 * MIN
    d.send("wrapper_exited", code=1)
    assert d.state == "failed", "a sixth crash within 10 min is one too many"


def test_restarts_older_than_the_window_no_longer_count() -> None:
    d = started()
    for _ in range(5):
        d.send("wrapper_exited", code=1)
        restart(d)
    d.advance_by(10 * MIN)
    d.send("wrapper_exited", code=1)
    assert d.state == "restarting"


def test_sigterm_is_forwarded_and_the_wrappers_code_is_the_supervisors() -> None:
    d = started()
    assert d.send("stop_requested", signal="SIGTERM") == [SignalWrapper("SIGTERM")]
    assert d.state == "stopping"
    assert d.send("stop_requested", signal="SIGINT") == [SignalWrapper("SIGINT")]
    d.advance(2.0)
    assert d.send("wrapper_exited", code=0) == [ExitProcess(0, "wrapper exited")]


def test_a_wrapper_that_ignores_the_signal_is_killed_after_the_grace() -> None:
    d = started()
    d.send("stop_requested", signal="SIGTERM")
    d.advance(8.0)
    assert d.take_effects() == [SignalWrapper("SIGTERM"), SignalWrapper("SIGKILL")]
    assert d.send("wrapper_exited", code=-9) == [ExitProcess(137, "wrapper exited")]


def test_a_stop_while_waiting_to_restart_ends_at_once() -> None:
    d = started()
    d.send("wrapper_exited", code=1)
    assert d.send("stop_requested", signal="SIGTERM") == [ExitProcess(0, "wrapper exited")]
    assert d.state == "exited"
    d.advance(60.0)
    assert not [e for e in d.effects if isinstance(e, StartWrapper)]


def test_exit_status_is_the_shells() -> None:
    assert [exit_status(c) for c in (0, 1, -9, -15, None)] == [0, 1, 137, 143, 1]
