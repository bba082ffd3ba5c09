"""The ``session`` machine's stories: the control plane's four health layers and its budgets.

Every number here is a default of the control-side timer table (DESIGN.md): first connect 5 min,
stale heartbeat 90 s, hung session 16.5 min and max runtime 125 min (backstops above the wrapper's
own 7 min no-progress and 120 min hard cap, which own the turn's clocks), idle stop 10 min. Each
test runs minutes or hours of virtual time in milliseconds and checks the exact instant a timer
fires.
"""

from __future__ import annotations

import time

from fsm.engine.effects import FailMessages, SendCommand, SendShutdown, StartWrapper, StopWrapper
from fsm.machines import session
from tests.engine.harness import Driver

MIN = 60.0


def connected(messages: int = 0) -> Driver:
    d = Driver(session.SPEC)
    d.start()
    d.send("wrapper_connected")
    for _ in range(messages):
        d.send("message_accepted")
    d.take_effects()
    return d


def keep_alive(d: Driver, until: float, *, frames: bool) -> None:
    """Heartbeats every 5 s (and agent frames too, if ``frames``) up to ``until``."""
    while d.clock.now() + 5.0 <= until:
        d.advance_by(5.0)
        d.send("heartbeat")
        if frames:
            d.send("frame")


def test_max_runtime_fires_at_exactly_125_minutes_and_takes_milliseconds() -> None:
    d = connected(messages=1)
    began = time.perf_counter()
    keep_alive(d, 125 * MIN - 5.0, frames=True)
    d.advance(125 * MIN - 0.001)
    assert d.state == "running"
    d.advance(125 * MIN)
    assert time.perf_counter() - began < 0.5
    assert d.moves()[-1] == (125 * MIN, "max_runtime_exceeded", "running", "idle")
    # Deciding alone is the source system's bug: the wrapper is told to abort as well.
    assert d.take_effects() == [SendCommand("abort"), FailMessages("execution_limit")]


def test_a_running_session_with_heartbeats_but_no_agent_frames_is_hung_after_16_5_min() -> None:
    d = connected(messages=1)
    keep_alive(d, 2 * MIN, frames=True)  # the last frame, at 2 min, is the last sign of work
    keep_alive(d, 18.5 * MIN - 5.0, frames=False)
    d.advance(18.5 * MIN - 0.001)
    assert d.state == "running"
    d.advance(18.5 * MIN)
    assert d.moves()[-1] == (18.5 * MIN, "hung", "running", "idle")
    assert d.take_effects() == [SendCommand("abort"), FailMessages("no_progress")]


def test_no_heartbeat_for_90_s_makes_it_stale_and_a_silent_wrapper_is_replaced() -> None:
    d = connected(messages=1)
    d.advance(10.0)
    d.send("heartbeat")
    d.advance(99.999)
    assert d.state == "running"
    d.advance(100.0)
    assert d.state == "stale"
    d.advance(115.0)
    assert d.moves()[-1] == (115.0, "replace", "stale", "restarting")
    # This side lost the connection: that is the reason, whatever the wrapper did meanwhile.
    assert FailMessages("connection_lost") in d.take_effects()
    d.advance(116.0)
    assert d.state == "starting"
    assert d.take_effects() == [StartWrapper(attempt=2)]


def test_a_stale_wrapper_that_comes_back_is_watched_again() -> None:
    """Regression: back from ``stale`` into ``running`` the stale-heartbeat timer was not
    re-armed, so a second loss of heartbeats went unnoticed forever."""
    d = connected(messages=1)
    d.advance(90.0)
    assert d.state == "stale"
    d.advance(100.0)
    d.send("heartbeat")
    assert d.state == "running"
    d.advance(190.0)
    assert d.moves()[-1] == (190.0, "heartbeat_missed", "running", "stale")


def test_max_runtime_spans_a_stale_spell() -> None:
    d = connected(messages=1)
    keep_alive(d, 10 * MIN, frames=True)
    d.advance(10 * MIN + 90.0)
    assert d.state == "stale"
    d.advance(10 * MIN + 100.0)
    d.send("heartbeat")
    keep_alive(d, 125 * MIN - 1.0, frames=True)
    d.advance(125 * MIN)
    assert d.moves()[-1] == (125 * MIN, "max_runtime_exceeded", "running", "idle")


def test_the_wrapper_must_say_hello_within_5_minutes() -> None:
    d = Driver(session.SPEC)
    d.start()
    assert d.take_effects() == [StartWrapper(attempt=1)]
    d.advance(5 * MIN)
    assert d.moves() == [(5 * MIN, "connect_timeout", "starting", "restarting")]


def test_an_idle_session_stops_its_wrapper_after_10_minutes_and_resumes_on_demand() -> None:
    d = connected(messages=1)
    keep_alive(d, 3 * MIN, frames=True)
    d.send("message_finished")
    assert d.state == "idle"
    keep_alive(d, 13 * MIN, frames=False)  # heartbeats do not keep an idle session alive
    assert d.moves()[-1] == (13 * MIN, "idle_timeout", "idle", "stopping")
    assert d.take_effects() == [SendCommand("release"), FailMessages("cancelled")]
    d.send("wrapper_exited")
    assert d.state == "stopped"
    d.send("resume")
    assert d.state == "starting"
    assert d.take_effects()[-1] == StartWrapper(attempt=2)


def test_a_wrapper_of_the_wrong_version_is_shut_down_and_replaced() -> None:
    d = Driver(session.SPEC)
    d.start()
    d.send("version_mismatch")
    assert d.state == "restarting"
    assert d.take_effects()[1:] == [SendShutdown("version mismatch"), StopWrapper("replace")]


def test_the_wrapper_restart_budget_is_five_in_ten_minutes_then_the_session_fails() -> None:
    d = Driver(session.SPEC)
    d.start()
    delays = []
    for _ in range(5):
        d.send("wrapper_exited")
        assert d.state == "restarting"
        delays.append(d.machine.deadlines()["restart_delay"] - d.clock.now())
        d.advance_by(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
    d.take_effects()
    d.send("wrapper_exited")
    assert d.state == "failed"
    assert d.take_effects() == [StopWrapper("replace"), FailMessages("agent_unavailable")]
