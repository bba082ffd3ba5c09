"""A PostgreSQL that stops answering does not freeze the replica (issue 16, point 4).

The whole server is SIGSTOPped (postmaster and backends: queries in flight and new connections
hang, no connection is closed, as with a paused host) while a session's turn streams into the
replica. The store's calls wait on the replica's store thread (``adapters/store/worker.py``),
so its event loop serves on: ``/healthz`` answers within a short bound all through the stall,
nothing is acknowledged that is not stored, and once the server is back the turn is stored
exactly. With the store called on the event loop (as before), the first flush of the stall
froze the whole replica: ``/healthz`` timed out.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.fakes.control_process import parse_sse, wait_for
from tests.fakes.protocol_wrappers import FakeWrapper, Loop
from tests.fakes.replica_process import Replica, split_password
from tests.fakes.wrapper_process import write_config
from tests.postgres_support import Cluster, postgres_cluster, postgres_dsn  # noqa: F401

STALL = 4.0
"""Seconds the server is stopped: past the lease (3 s), so the keeper's renewals hang too."""
ANSWER_WITHIN = 1.0


def test_a_stopped_postgresql_does_not_stop_the_replica_answering(
    tmp_path: Path,
    postgres_dsn: str,  # noqa: F811
    postgres_cluster: Cluster,  # noqa: F811
) -> None:
    config = write_config(tmp_path / "fsm-agent.toml", {"replica_lease": "3s"}, {})
    dsn, password = split_password(postgres_dsn)
    replica = Replica(tmp_path, "r0", dsn, password, config)
    loop = Loop()
    try:
        body = replica.http.post("/sessions", json={}).json()
        sid = body["id"]
        wrapper = FakeWrapper(
            sid, body["wrapper"]["token"], f"ws://127.0.0.1:{replica.port}", events=60
        )
        loop.spawn(wrapper.run())
        wait_for("the wrapper to be welcomed", lambda: wrapper.connections, timeout=10)
        sent = replica.http.post(f"/sessions/{sid}/messages", json={"prompt": "x"})
        assert sent.status_code == 202, sent.text
        wait_for("the turn to stream", lambda: len(wrapper.sent_events) >= 5, timeout=10)
        slowest = 0.0
        answers = 0
        with postgres_cluster.frozen(), httpx.Client(timeout=ANSWER_WITHIN) as probe:
            stalled = time.monotonic()
            acked_at_stall = wrapper.seq - len(wrapper.unacked)
            while time.monotonic() - stalled < STALL:
                asked = time.monotonic()
                try:
                    health = probe.get(f"http://127.0.0.1:{replica.port}/healthz")
                except httpx.TimeoutException:
                    raise AssertionError(
                        f"/healthz gave no answer within {ANSWER_WITHIN} s, "
                        f"{asked - stalled:.1f} s into the stall\n{replica.tail()}"
                    ) from None
                assert health.status_code == 200, health.text
                slowest = max(slowest, time.monotonic() - asked)
                answers += 1
                time.sleep(0.2)
            # The wrapper went on streaming into the replica; none of it could be stored, so
            # none of it was acknowledged (a frame or two may have been acked in flight).
            assert len(wrapper.sent_events) > 5
            assert wrapper.seq - len(wrapper.unacked) <= acked_at_stall + 2
        assert answers >= STALL / 0.4, answers
        wait_for("the turn to be stored", wrapper.settled, timeout=30, tail=replica.tail)
        events = parse_sse(replica.http.get(f"/sessions/{sid}/events", params={"follow": "0"}).text)
        ids = [e.id for e in events]
        assert ids == list(range(1, len(ids) + 1)), ids
        streamed = [
            (e.data["event"]["message"], e.data["event"]["index"])
            for e in events
            if e.kind == "event"
        ]
        assert streamed == wrapper.sent_events
        assert not replica.dead()
    finally:
        replica.stop()
        loop.stop()
