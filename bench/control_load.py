"""Simulated wrappers for the control-plane benchmark: N real WebSockets from one process.

Run by ``bench/control.py`` as a separate process (so its CPU is not the control plane's). Each
wrapper sends ``hello``, waits for ``welcome``, then a heartbeat every 5 s (random phase) and an
event frame every ``event_period`` seconds; it times hello→welcome and event→ack round trips.
Prints one JSON object with the samples when the measured window ends.

``start_control_plane`` starts the control plane the load is aimed at, on SQLite or PostgreSQL
(``bench/store.py`` measures both in one run).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import websockets

from fsm.wire.protocol import EventFrame, Heartbeat, Hello, encode

HEARTBEAT = 5.0
API_KEY = "bench-key"


async def wrapper(
    session: dict[str, str],
    window: tuple[float, float],
    event_period: float,
    out: dict[str, list[float]],
    rng: random.Random,
) -> None:
    headers = {"Authorization": f"Bearer {session['token']}"}
    async with websockets.connect(
        session["url"], additional_headers=headers, open_timeout=60, max_queue=None
    ) as ws:
        sent_hello = time.perf_counter()
        hello = Hello(
            wrapper_id=f"wrp_bench_{session['id']}",
            version=session["version"],
            protocol=1,
            agent_session=f"agent_{session['id']}",
            user_id="bench",
            session_id=session["id"],
        )
        await ws.send(encode(hello).decode())
        welcome = json.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        out["welcome"].append(time.perf_counter() - sent_hello)
        seq = int(welcome.get("acked", 0))
        pending: dict[int, float] = {}

        async def reader() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                if frame.get("type") == "ack":
                    now = time.perf_counter()
                    for s in [s for s in pending if s <= frame["seq"]]:
                        started = pending.pop(s)
                        if window[0] <= now <= window[1]:
                            out["ack"].append(now - started)

        read_task = asyncio.create_task(reader())
        next_beat = time.monotonic() + rng.uniform(0, HEARTBEAT)
        next_event = time.monotonic() + rng.uniform(0, event_period)
        beat = encode(Heartbeat(state="idle", active=False, degraded=False)).decode()
        try:
            while time.monotonic() < window[1]:
                wake = min(next_beat, next_event)
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
                now = time.monotonic()
                if now >= next_beat:
                    await ws.send(beat)
                    out["beats"].append(1)
                    next_beat += HEARTBEAT
                if now >= next_event:
                    seq += 1
                    pending[seq] = time.perf_counter()
                    event = {"type": "message.part.delta", "properties": {"delta": "x" * 40}}
                    await ws.send(encode(EventFrame(seq=seq, generation=1, event=event)).decode())
                    next_event += event_period
        finally:
            read_task.cancel()


async def main(spec: dict[str, Any]) -> None:
    sessions: list[dict[str, str]] = spec["sessions"]
    rng = random.Random(spec.get("seed", 1))
    out: dict[str, list[float]] = {"welcome": [], "ack": [], "beats": []}
    connect_by = time.perf_counter()
    start = time.time()
    window = (
        time.perf_counter() + spec["warmup"],
        time.perf_counter() + spec["warmup"] + spec["measure"],
    )
    rate = float(spec.get("connect_rate", 500))  # connections per second: not a SYN flood

    async def one(index: int, session: dict[str, str]) -> None:
        await asyncio.sleep(index / rate)
        await wrapper(session, window, spec["event_period"], out, rng)

    results = await asyncio.gather(
        *(one(i, s) for i, s in enumerate(sessions)), return_exceptions=True
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    print(
        json.dumps(
            {
                "connected": len(out["welcome"]),
                "connect_seconds": time.perf_counter() - connect_by,
                "welcome": out["welcome"],
                "ack": out["ack"],
                "beats": len(out["beats"]),
                "errors": errors[:5],
                "error_count": len(errors),
                "started": start,
            }
        )
    )


def start_control_plane(
    root: Path, db: str, *, replica: str | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """An ``fsm-agent control --runtime external`` for the load above, on the store ``db`` (a
    SQLite path, or a PostgreSQL DSN with ``replica`` its replica id and the password in
    ``env``'s ``PGPASSWORD``): the same load, measured against either store."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = root / "control.log"
    command = [
        sys.executable, "-m", "fsm", "control", "--runtime", "external",
        "--listen", f"127.0.0.1:{port}", "--db", db,
        "--workspaces", str(root / "spaces"), "--state-dir", str(root / "state"),
    ]  # fmt: skip
    if replica is not None:
        command += ["--replica-id", replica]
    with log.open("wb") as err:
        process = subprocess.Popen(
            command,
            env={**os.environ, "FSM_AGENT_API_KEY": API_KEY, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "control plane listening" in log.read_text():
            return process, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"control plane did not start:\n{log.read_text()[-2000:]}")


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.stdin.read())))
