"""Issue 16's acceptance with real agents: 3 replicas, 30 sessions, each a real ``fsm-agent
serve`` with a real Kilo, streaming a slow turn from the fake model the tests own; ``kill -9``
the busiest replica mid-turn.

* **Claim time from the database**: the victim's leases are read at the kill (their expiry and
  the database's clock), then polled; each session's claim moment is its new lease's expiry
  minus the lease (a claim sets ``expires_at = now + lease``, by the database's clock). Every
  claim is at or after the old expiry (nobody took a live lease) and within lease + 2 s of the
  kill.
* **Turns complete**: every session's message ends ``completed`` (the wrappers reconnect
  through the one balancer URL, resend what was not acknowledged, and the new owners go on).
* **Streams exact**: a client read each of the victim's sessions from the victim before the
  kill and resumes on a live replica with ``Last-Event-ID``: the two reads together are ids
  1..N once each, equal to the stored log; the log holds every frame the wrapper numbered
  (``last_seq`` of the session row) exactly once; and the model's 40 streamed words come out
  of the text deltas once each, in order.

The wrappers run ``--runtime external`` (the test starts them: a wrapper outlives its replica,
as with docker). 30 Kilos boot at once on this 2-core machine, so the agent's start and health
timers are relaxed beyond ``FAST`` (the point here is the control plane, not a loaded Kilo's
probes); the lease is 3 s through the config.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.fakes.control_process import SseEvent, parse_sse, wait_for
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.protocol_wrappers import Balancer, Loop
from tests.fakes.replica_process import Replica, leases, split_password
from tests.fakes.wrapper_process import FAST, git_workspace, write_config
from tests.postgres_support import postgres_cluster, postgres_dsn  # noqa: F401

pytestmark = pytest.mark.kilo

LEASE = 3.0
SESSIONS = int(os.environ.get("FSM_AGENT_REPLICA_AGENTS", "6"))
"""Real agents in the run. The suite runs 6 (two per replica); the issue's 30 run in the bench
(``bench/failover.py`` runs this test with ``FSM_AGENT_REPLICA_AGENTS=30``): 30 Kilos booting
together take 30 x 4-8 s of CPU on this 2-core machine, minutes of the suite's 15 (measured in
docs/postgresql.md)."""
WORDS = [f"w{i}" for i in range(40)]
"""What the fake model streams for ``MODE:slow`` (tests/fakes/fake_llm.py), 0.25 s apart, or
``MODE:crawl``, 6 s apart."""
MODE = "slow" if SESSIONS <= 6 else "crawl"
"""A 10 s turn is time enough to kill a replica while 6 turns stream; 30 agents on 2 cores start
their turns minutes apart (measured: the first began running about 3 minutes after its prompt),
and the kill must land mid-turn for every one, so they stream for 240 s."""
TURN_WAIT = 90 if SESSIONS <= 6 else 90 + 8 * SESSIONS
"""How long a wait on every turn may take: 30 agents' turns compete for 2 cores."""
TIMERS = {
    **FAST,
    # Many agents booting together on 2 cores: start-up and probes get room.
    "agent_startup": f"{max(60, 12 * SESSIONS)}s",
    "health_probe_timeout": "5s",
    "stream_silence": "20s",
    "first_event_grace": "30s",
    "replica_lease": f"{LEASE:g}s",
    "stale_heartbeat": "60s",
}
SEQ_KINDS = ("event", "lifecycle", "outcome", "ignored", "events_dropped")
"""Log entries made of a numbered wrapper frame (one each); the others are this side's."""


class Wrappers:
    """The test's external runtime: one ``fsm-agent serve`` per session."""

    def __init__(self, root: Path, config: Path, ingest: str) -> None:
        self.root, self.config, self.ingest = root, config, ingest
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.tokens: dict[str, str] = {}
        self._ports: dict[str, int] = {}

    def start(self, sid: str, token: str) -> None:
        self.tokens[sid] = token
        home = self.root / sid
        workdir = git_workspace(home / "workspace")
        with (home / "wrapper.log").open("wb") as log:
            self.processes[sid] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fsm",
                    "serve",
                    f"--agent-session=agent_{sid}",
                    "--user-id=u1",
                    f"--session-id={sid}",
                    f"--ingest-url={self.ingest}/{sid}",
                    "--listen=127.0.0.1:0",
                    f"--workdir={workdir}",
                    f"--config={self.config}",
                    f"--state-dir={home / 'state'}",
                ],
                env={**os.environ, "FSM_AGENT_TOKEN": token},
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    def ready(self, sid: str) -> bool:
        """The wrapper's agent is up (its job API's ``/readyz``): connected is not enough, the
        ingest link comes up before the agent does."""
        if sid not in self._ports:
            for raw in (self.root / sid / "wrapper.log").read_text().splitlines():
                if '"job API listening"' in raw:
                    self._ports[sid] = int(json.loads(raw)["port"])
            if sid not in self._ports:
                return False
        try:
            answer = httpx.get(
                f"http://127.0.0.1:{self._ports[sid]}/readyz",
                headers={"Authorization": f"Bearer {self.tokens[sid]}"},
                timeout=5,
            )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def tail(self, sid: str) -> str:
        path = self.root / sid / "wrapper.log"
        return f"--- wrapper {sid}\n" + "\n".join(path.read_text().splitlines()[-20:])

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def world(
    tmp_path: Path,
    postgres_dsn: str,  # noqa: F811
    fake_llm: FakeLLM,
) -> Iterator[dict[str, Any]]:
    config = write_config(tmp_path / "fsm-agent.toml", TIMERS, fake_llm.provider_config())
    dsn, password = split_password(postgres_dsn)
    replicas = [Replica(tmp_path, f"r{i}", dsn, password, config) for i in range(3)]
    loop = Loop()
    balancer = Balancer([r.port for r in replicas])
    loop.call(balancer.start())
    wrappers = Wrappers(tmp_path / "wrappers", config, f"ws://127.0.0.1:{balancer.port}/ingest")
    try:
        yield {"replicas": replicas, "wrappers": wrappers, "dsn": postgres_dsn}
    finally:
        wrappers.stop()
        for replica in replicas:
            replica.stop()
        loop.stop()


def text_of(events: list[SseEvent]) -> list[str]:
    """The words of the model's reply, from the agent's text deltas in log order."""
    text = "".join(
        str(e.data["event"]["properties"].get("delta", ""))
        for e in events
        if e.kind == "event"
        and e.data["event"].get("type") == "message.part.delta"
        and e.data["event"]["properties"].get("field", "text") == "text"
    )
    return text.split()


def test_kill_9_of_a_replica_mid_turn_with_real_agents(world: dict[str, Any]) -> None:
    replicas: list[Replica] = world["replicas"]
    wrappers: Wrappers = world["wrappers"]
    dsn: str = world["dsn"]
    started = time.monotonic()
    sids: list[str] = []
    for i in range(SESSIONS):
        created = replicas[i % 3].http.post("/sessions", json={})
        assert created.status_code == 201, created.text
        body = created.json()
        wrappers.start(body["id"], body["wrapper"]["token"])
        sids.append(body["id"])

    def connected() -> int:
        return sum(s["connected"] for r in replicas for s in r.http.get("/sessions").json())

    pending = set(sids)

    def up() -> bool:
        pending.difference_update([sid for sid in sorted(pending) if wrappers.ready(sid)])
        return not pending and connected() == SESSIONS

    wait_for(
        "every wrapper's agent to be ready and every wrapper connected",
        up,
        timeout=20 + 12 * SESSIONS,
        tail=lambda: "\n".join(r.tail() for r in replicas) + wrappers.tail(sorted(pending)[0]),
    )
    booted = time.monotonic() - started
    mids = {}
    for i, sid in enumerate(sids):
        sent = replicas[(i + 1) % 3].http.post(
            f"/sessions/{sid}/messages", json={"prompt": f"stream please MODE:{MODE}"}
        )
        assert sent.status_code == 202, sent.text
        mids[sid] = sent.json()["id"]

    def streaming(sid: str) -> bool:
        got = replicas[0].http.get(f"/sessions/{sid}/events", params={"follow": "0"})
        return len(text_of(parse_sse(got.text))) >= 2

    wait_for(
        "every turn to be streaming",
        lambda: all(streaming(sid) for sid in sids),
        timeout=TURN_WAIT,
        tail=lambda: wrappers.tail(sids[0]),
    )
    held = leases(dsn)
    counts = {r.name: sum(held[s][0] == r.name for s in sids) for r in replicas}
    victim = max(replicas, key=lambda r: counts[r.name])
    live = [r for r in replicas if r is not victim]
    theirs = [sid for sid in sids if held[sid][0] == victim.name]
    assert theirs, counts
    # What a client had read from the victim before it died: part of each turn.
    seen = {}
    for sid in theirs:
        got = victim.http.get(f"/sessions/{sid}/events", params={"follow": "0"})
        seen[sid] = parse_sse(got.text)
        assert 0 < len(text_of(seen[sid])) < len(WORDS), "the kill must land mid-turn"
    with psycopg.connect(dsn, autocommit=True) as watch:
        victim.process.kill()
        at_kill = leases(dsn, watch)
        victim.process.wait(10)
        killed_db = at_kill[theirs[0]][2]  # the database's clock just after the kill
        first: dict[str, tuple[str | None, float]] = {}

        def claimed() -> bool:
            now = leases(dsn, watch)
            for sid in theirs:
                owner, expires_at, _, _ = now[sid]
                if sid not in first and owner in {r.name for r in live}:
                    first[sid] = (owner, expires_at)
            return len(first) == len(theirs)

        wait_for("the victim's sessions to be claimed", claimed, timeout=LEASE + 15)
    claims = {sid: expires - LEASE for sid, (_, expires) in first.items()}
    for sid, at in claims.items():
        assert at >= at_kill[sid][1] - 0.001, f"{sid} claimed before its lease expired"
    took = max(claims.values()) - killed_db
    assert took <= LEASE + 2, f"the last claim came {took:.2f} s after the kill (lease {LEASE})"

    for sid in sids:

        def completed(sid: str = sid) -> bool:
            got = live[0].http.get(f"/sessions/{sid}")
            return got.status_code == 200 and any(
                m["id"] == mids[sid] and m["state"] == "completed" for m in got.json()["messages"]
            )

        wait_for(
            f"{sid}'s turn to complete",
            completed,
            timeout=TURN_WAIT,
            tail=lambda sid=sid: "\n".join(r.tail() for r in live) + wrappers.tail(sid),
        )

    def settled() -> bool:
        """The stored ``last_seq`` (written at each flush) has caught up with the log a replica
        serves (the last frames after an outcome may still be in a flush period): a log holding
        a frame twice never settles."""
        with psycopg.connect(dsn, autocommit=True) as db:
            stored_seq = dict(db.execute("SELECT id, last_seq FROM sessions").fetchall())
        for sid in sids:
            got = live[0].http.get(f"/sessions/{sid}/events", params={"follow": "0"})
            last_seq[sid] = stored_seq[sid]
            if sum(e.kind in SEQ_KINDS for e in parse_sse(got.text)) != stored_seq[sid]:
                return False
        return True

    last_seq: dict[str, int] = {}
    wait_for("every session's stored last_seq to match its log", settled, timeout=30)
    for sid in sids:
        before = seen.get(sid, [])
        after = before[-1].id if before else 0
        resumed = live[1].http.get(
            f"/sessions/{sid}/events",
            params={"follow": "0"},
            headers={"Last-Event-ID": str(after)} if after else {},
        )
        assert resumed.status_code == 200, resumed.text
        events = before + parse_sse(resumed.text)
        ids = [e.id for e in events]
        assert ids == list(range(1, len(ids) + 1)), f"{sid}: ids repeat, go back or skip: {ids}"
        stored = parse_sse(live[0].http.get(f"/sessions/{sid}/events", params={"follow": "0"}).text)
        assert [(e.id, e.kind, e.data) for e in events] == [
            (e.id, e.kind, e.data) for e in stored
        ], sid
        assert sum(e.kind in SEQ_KINDS for e in events) == last_seq[sid], (
            f"{sid}: the log does not hold each of the wrapper's {last_seq[sid]} frames once"
        )
        assert text_of(events) == WORDS, f"{sid}: {text_of(events)}"
    print(
        f"\n{SESSIONS} real agents booted in {booted:.1f} s; {len(theirs)} sessions of "
        f"{victim.name} claimed {took:.2f} s after the kill (lease {LEASE:g} s); "
        f"whole test {time.monotonic() - started:.1f} s"
    )
