"""The ``wrapper`` machine's stories, told with the concrete effects a host executes.

The catalog test drives each declared transition once; these tests follow the wrapper through
the paths that matter to a user — a normal life, Kilo dying or hanging, the restart budget running
out — on the virtual clock with the default timer table (15-minute idle in microseconds).
"""

from __future__ import annotations

from fsm.engine.effects import (
    ExitProcess,
    NotifyTurns,
    OpenAgentLink,
    ReportState,
    Signal,
    SpawnAgent,
    StopAgent,
)
from fsm.machines import wrapper
from tests.engine.harness import Driver

MIN = 60.0


def started() -> Driver:
    d = Driver(wrapper.SPEC)
    d.start()
    return d


def test_a_normal_life_start_serve_idle_and_exit() -> None:
    d = started()
    assert d.take_effects() == [SpawnAgent(attempt=1)]
    d.advance(4.0)
    assert d.send("agent_ready") == [OpenAgentLink(), ReportState("ready")]
    d.send("turn_started")
    assert d.state == "running"
    d.advance(4.0 + 20 * MIN)  # a turn much longer than the idle window
    d.send("turn_ended")
    assert d.state == "idle"
    d.take_effects()
    # Idle is armed on entering idle, so a 20-minute run is not cut the moment it ends.
    d.advance(4.0 + 35 * MIN - 0.001)
    assert d.state == "idle"
    d.advance(4.0 + 35 * MIN)
    assert d.state == "stopping"
    assert d.take_effects() == [StopAgent(keep_session=True), Signal("agent_link", "close")]
    d.advance(4.0 + 35 * MIN + 1.0)
    assert d.send("agent_exited") == [Signal("ingest_link", "close"), ExitProcess(0, "stopped")]
    assert d.state == "stopped"


def test_a_wrapper_nobody_uses_exits_after_the_idle_window() -> None:
    d = started()
    d.send("agent_ready")
    d.advance(15 * MIN)
    assert d.moves()[-1] == (15 * MIN, "idle_timeout", "ready", "stopping")


def test_stopping_gives_kilo_a_grace_then_stops_anyway() -> None:
    d = started()
    d.send("agent_ready")
    d.send("stop")
    d.advance(5.0)
    assert d.moves()[-1] == (5.0, "stop_timeout", "stopping", "stopped")
    assert ExitProcess(0, "stopped") in d.effects


def test_kilo_not_healthy_in_time_is_restarted_after_a_backoff() -> None:
    d = started()
    d.advance(30.0)
    assert d.state == "restarting"
    assert d.take_effects() == [
        SpawnAgent(attempt=1),
        Signal("agent_link", "close"),
        StopAgent(keep_session=True),
        NotifyTurns("agent_lost", "agent_restarted"),
        ReportState("restarting"),
    ]
    d.advance(31.0)
    assert d.state == "starting"
    assert d.take_effects() == [SpawnAgent(attempt=2)]


def test_kilo_dying_after_start_up_is_noticed_in_every_serving_state() -> None:
    """The source system kept reporting healthy after Kilo died; here the exit is an event."""
    for state_path in ([], ["turn_started"], ["turn_started", "turn_ended"], ["agent_silent"]):
        d = started()
        d.send("agent_ready")
        for trigger in state_path:
            d.send(trigger)
        before = d.state
        d.send("agent_exited")
        assert d.state == "restarting", before


def test_the_restart_budget_allows_three_restarts_in_ten_minutes_paced_1_2_4_s() -> None:
    d = started()
    delays = []
    for crash in range(3):
        d.send("agent_ready")
        d.send("agent_exited")
        assert d.state == "restarting", crash
        delays.append(d.machine.deadlines()["restart_delay"] - d.clock.now())
        d.advance_by(delays[-1])
        assert d.state == "starting"
    assert delays == [1.0, 2.0, 4.0]
    d.send("agent_ready")
    d.take_effects()
    d.send("agent_exited")
    assert d.state == "failed"
    assert d.take_effects() == [
        NotifyTurns("agent_unavailable", "agent_unavailable"),
        ReportState("failed", "agent_unavailable"),
    ]


def test_restarts_older_than_the_window_no_longer_count() -> None:
    def three_restarts_then_hang_at(t: float) -> str:
        d = started()
        for _ in range(3):  # restarts at 0, 5 and 10 s
            d.send("agent_ready")
            d.send("agent_exited")
            d.advance_by(5.0)
        d.send("agent_ready")
        d.advance(t)
        d.send("agent_hung")
        return d.state

    assert three_restarts_then_hang_at(10 * MIN - 0.001) == "failed"
    assert three_restarts_then_hang_at(10 * MIN) == "restarting"


def test_a_silent_stream_makes_the_wrapper_stale_until_kilo_proves_alive() -> None:
    d = started()
    d.send("agent_ready")
    d.send("turn_started")
    d.send("agent_silent")
    assert d.state == "stale"
    d.send("agent_alive")
    assert d.state == "running"
    d.send("turn_ended")
    d.send("agent_silent")
    d.send("agent_alive")
    assert d.state == "idle"


def test_turns_are_counted_wherever_they_start_and_end() -> None:
    """A turn accepted during a restart must keep the wrapper running when Kilo is back."""
    d = started()
    d.send("turn_started")  # while starting
    assert d.state == "starting"
    d.send("agent_ready")
    assert d.state == "running"
    d.send("turn_started")
    d.send("turn_ended")
    assert d.state == "running", "one turn is still unfinished"
    d.send("turn_ended")
    assert d.state == "idle"
    assert d.machine.context.active_turns == 0


def test_the_exit_the_wrapper_asked_for_during_a_restart_is_not_a_second_crash() -> None:
    d = started()
    d.send("agent_ready")
    d.send("agent_exited")
    d.send("agent_exited")  # the StopAgent we sent, reported back
    assert d.state == "restarting"
    assert d.machine.budget_remaining("agent_restarts") == 2
