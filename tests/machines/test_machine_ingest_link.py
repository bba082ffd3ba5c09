"""The ``ingest_link`` machine's stories: handshake, periodic heartbeat, reconnecting forever.

The source system gave up after three reconnects (1, 2, 4 s); ours backs off 1 s → 30 s with
jitter from the injected random source — so two runs with one seed are identical — and never stops.
"""

from __future__ import annotations

import random

from fsm.engine.effects import (
    CloseSocket,
    ExitProcess,
    OpenSocket,
    ResendUnacked,
    SendHeartbeat,
    SendHello,
)
from fsm.machines import ingest_link
from tests.engine.harness import Driver


def connected(seed: int = 0) -> Driver:
    d = Driver(ingest_link.SPEC, rng=random.Random(seed))
    d.start()
    d.send("socket_open")
    d.send("welcome")
    return d


def test_connect_hello_welcome() -> None:
    d = Driver(ingest_link.SPEC)
    d.start()
    assert d.take_effects() == [OpenSocket(attempt=1)]
    assert d.send("socket_open") == [SendHello()]
    assert d.send("welcome") == [ResendUnacked()]
    assert d.state == "connected"


def test_a_heartbeat_every_5_s_while_connected_and_none_after() -> None:
    d = connected()
    d.take_effects()
    d.advance(20.0)
    assert d.take_effects() == [SendHeartbeat()] * 4
    assert [r.at for r in d.timer_records()] == [5.0, 10.0, 15.0, 20.0]
    d.advance(22.0)
    d.send("socket_closed")
    d.advance(22.0 + 0.5)  # before the first retry
    assert SendHeartbeat() not in d.take_effects()


def test_connect_and_handshake_time_out_after_10_s_each() -> None:
    d = Driver(ingest_link.SPEC)
    d.start()
    d.advance(10.0)
    assert d.moves() == [(10.0, "connect_timeout", "connecting", "backoff")]
    assert d.effects[-1] == CloseSocket()
    d.advance(d.machine.deadlines()["retry"])
    d.send("socket_open")
    opened = d.clock.now()
    d.advance(opened + 10.0)
    assert d.moves()[-1] == (opened + 10.0, "handshake_timeout", "handshaking", "backoff")


def retry_delays(d: Driver, failures: int) -> list[float]:
    delays = []
    for _ in range(failures):
        d.send("socket_failed")
        assert d.state == "backoff"
        delays.append(d.machine.deadlines()["retry"] - d.clock.now())
        d.advance_by(delays[-1])
        assert d.state == "connecting"
    return delays


def test_backoff_grows_1_to_30_s_with_bounded_jitter_and_never_gives_up() -> None:
    d = Driver(ingest_link.SPEC, rng=random.Random(3))
    d.start()
    delays = retry_delays(d, 50)
    bases = [min(2.0**n, 30.0) for n in range(50)]
    for delay, base in zip(delays, bases, strict=True):
        assert base <= delay <= base * 1.2
    assert delays != bases, "jitter is applied"
    assert d.state == "connecting"
    assert d.effects[-1] == OpenSocket(attempt=51)


def test_jitter_is_reproducible_from_the_injected_seed() -> None:
    def run(seed: int) -> list[float]:
        d = Driver(ingest_link.SPEC, rng=random.Random(seed))
        d.start()
        return retry_delays(d, 8)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_welcome_resets_the_backoff() -> None:
    d = Driver(ingest_link.SPEC, rng=random.Random(1))
    d.start()
    retry_delays(d, 5)
    d.send("socket_open")
    d.send("welcome")
    d.send("socket_closed")
    assert 1.0 <= d.machine.deadlines()["retry"] - d.clock.now() <= 1.2


def test_shutdown_closes_the_link_and_exits_0_without_reconnecting() -> None:
    d = connected()
    d.take_effects()
    d.send("shutdown", reason="version mismatch")
    assert d.state == "closed"
    assert d.take_effects() == [CloseSocket(), ExitProcess(0, "shutdown: version mismatch")]
    d.advance(3600.0)
    assert d.take_effects() == []
    assert d.machine.timers == {}
