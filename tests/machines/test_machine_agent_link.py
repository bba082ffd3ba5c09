"""The ``agent_link`` machine's stories: telling a dead stream from a hung Kilo.

Defaults: silence 15 s (armed when ``server.connected`` arrives), health probe 5 s, first-event
grace 12 s after a (re)subscription, reconnect budget 6 in 2 min. Events of an old subscription
carry an old generation and must change nothing — not even the silence deadline.
"""

from __future__ import annotations

from fsm.engine.effects import ProbeHealth, Reconcile, Signal, Subscribe, Unsubscribe
from fsm.machines import agent_link
from tests.engine.harness import Driver


def streaming() -> Driver:
    d = Driver(agent_link.SPEC)
    d.start()
    d.send("connected")
    d.take_effects()
    return d


def test_the_first_subscription_streams_without_reconciling() -> None:
    d = Driver(agent_link.SPEC)
    d.start()
    assert d.take_effects() == [Subscribe(1)]
    assert d.send("connected", generation=1) == []
    assert d.state == "streaming"


def test_the_silence_window_starts_at_server_connected_and_is_pushed_back_by_events() -> None:
    d = Driver(agent_link.SPEC)
    d.start()
    d.advance(3.0)
    d.send("connected")
    d.take_effects()
    assert d.machine.deadlines() == {"silence": 18.0}
    d.advance(10.0)
    d.send("event")
    d.advance(24.999)
    assert d.state == "streaming"
    d.advance(25.0)
    assert d.moves()[-1] == (25.0, "silence_elapsed", "streaming", "silent")
    assert d.take_effects() == [ProbeHealth(1), Signal("wrapper", "agent_silent")]


def test_events_of_an_old_subscription_are_ignored_and_do_not_push_the_silence_back() -> None:
    d = streaming()
    d.advance(5.0)
    d.send("event", generation=0)
    assert d.history[-1].kind == "ignored"
    assert d.history[-1].reason == "blocked in 'streaming' by current_generation"
    assert d.machine.deadlines() == {"silence": 15.0}
    d.advance(15.0)
    assert d.state == "silent"


def test_a_silent_stream_on_a_healthy_kilo_is_resubscribed_and_reconciled() -> None:
    d = streaming()
    d.advance(15.0)
    d.advance(16.0)
    assert d.send("probe_ok") == [Signal("wrapper", "agent_alive"), Unsubscribe(1)]
    assert d.state == "reconnecting"
    d.advance(16.5)
    assert d.state == "subscribing"
    assert d.take_effects()[-1] == Subscribe(2)
    d.send("event", generation=1)  # the old stream, late
    assert d.state == "subscribing"
    assert d.send("connected", generation=2) == [Reconcile(2)]
    assert d.state == "streaming"


def test_no_probe_answer_within_5_s_means_kilo_is_hung() -> None:
    d = streaming()
    d.advance(15.0)
    d.advance(19.999)
    assert d.state == "silent"
    d.advance(20.0)
    assert d.moves()[-1] == (20.0, "probe_timeout", "silent", "closed")
    assert d.take_effects()[-2:] == [
        Signal("wrapper", "agent_hung", {"reason": "health probe"}),
        Unsubscribe(1),
    ]


def test_a_new_stream_gets_12_s_for_its_first_event_then_kilo_is_probed() -> None:
    d = Driver(agent_link.SPEC)
    d.start()
    d.advance(12.0)
    assert d.moves() == [(12.0, "first_event_timeout", "subscribing", "probing")]
    d.send("connected")
    assert d.state == "streaming"


def test_six_reconnects_in_two_minutes_ask_the_wrapper_to_restart_kilo() -> None:
    d = streaming()
    for generation in range(1, 7):
        d.send("stream_ended", generation=generation)
        assert d.state == "reconnecting", generation
        d.advance_by(0.5)
        d.send("connected")
    d.take_effects()
    d.send("stream_ended")
    assert d.state == "closed"
    assert d.take_effects() == [
        Signal("wrapper", "agent_hung", {"reason": "event stream keeps failing"}),
        Unsubscribe(7),
    ]


def test_reconnects_older_than_two_minutes_no_longer_count() -> None:
    d = streaming()
    for _ in range(6):
        d.send("stream_ended")
        d.advance_by(0.5)
        d.send("connected")
        d.advance_by(5.0)  # 5.5 s per reconnect, well inside the 15 s silence
        d.send("event")
    while d.clock.now() < 120.0:
        d.advance_by(min(10.0, 120.0 - d.clock.now()))
        d.send("event")
    d.send("stream_ended")  # the first reconnect (t=0) has left the window
    assert d.state == "reconnecting"
