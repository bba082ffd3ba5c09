"""Control plane: how many simulated wrappers one ``fsm-agent control`` holds under half a core.

Real WebSockets on loopback from a separate load process (``bench/control_load.py``): hello,
heartbeats every 5 s, an event frame every 30 s per wrapper. The control plane runs with
``--runtime external`` (it starts nothing; the load process plays the wrappers). For each step the
control plane's CPU (user+system from /proc) is measured over a steady window after all wrappers
connected; latencies are hello→welcome and event→ack (the ack is sent only after the event is in
SQLite, so it includes the store). Heartbeats get no answer, so event→ack stands for the issue's
"heartbeat-to-state latency": the same path (frame decoded, session machine fed) plus the store.
Steps go to 10,000 wrappers so that "how many under half a core" is measured, not extrapolated.
Also: SQLite event-append throughput through the store adapter.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Figure, cpu_seconds, median, percentile, rss_mib

STEPS = (1000, 2500, 5000, 10000)
MEASURE = 20.0
EVENT_PERIOD = 30.0
API_KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_control(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = root / "control.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fsm",
                "control",
                "--runtime",
                "external",
                "--listen",
                f"127.0.0.1:{port}",
                "--db",
                str(root / "control.db"),
            ],
            env={**os.environ, "FSM_AGENT_API_KEY": API_KEY},
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


async def _create(base: str, count: int) -> tuple[list[dict[str, str]], float]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    sessions: list[dict[str, str]] = []
    sem = asyncio.Semaphore(16)
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits) as client:

        async def one() -> None:
            async with sem:
                body = (await client.post("/sessions", json={}, timeout=60)).json()
            sessions.append(
                {
                    "id": body["id"],
                    "url": body["wrapper"]["ingest_url"],
                    "token": body["wrapper"]["token"],
                    "version": "0.1.0",
                }
            )

        await asyncio.gather(*(one() for _ in range(count)))
    return sessions, time.perf_counter() - started


def _step(pid: int, sessions: list[dict[str, str]]) -> dict[str, Any]:
    warmup = len(sessions) / 500 + 5.0
    spec = {
        "sessions": sessions,
        "warmup": warmup,
        "measure": MEASURE,
        "event_period": EVENT_PERIOD,
        "connect_rate": 500,
    }
    errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed after the load exits
    load = subprocess.Popen(
        [sys.executable, "-m", "bench.control_load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    assert load.stdin is not None
    load.stdin.write(json.dumps(spec))
    load.stdin.close()
    time.sleep(warmup)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    load_cpu0 = cpu_seconds(load.pid)
    time.sleep(MEASURE)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    load_cpu1 = cpu_seconds(load.pid)
    rss = rss_mib(pid)
    assert load.stdout is not None
    out = load.stdout.read()
    load.wait(timeout=120)
    errors.seek(0)
    err = errors.read()
    errors.close()
    result: dict[str, Any] = json.loads(out) if out.strip() else {"error": err[-2000:]}
    result["cpu_fraction"] = (cpu1 - cpu0) / (t1 - t0)
    result["load_cpu_fraction"] = (load_cpu1 - load_cpu0) / (t1 - t0)
    result["rss_mib"] = rss
    return result


def _sqlite_throughput() -> list[float]:
    from adapters.store.sqlite import EventRow, SessionRow, SqliteStore, hash_token

    rates = []
    for run in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            store = SqliteStore(Path(tmp) / "bench.db")
            store.create_session(
                SessionRow(
                    id="s1",
                    token_hash=hash_token("t"),
                    agent_session="a",
                    user_id="u",
                    workdir=tmp,
                    state="running",
                    snapshot=b"",
                    wrapper_id=None,
                    last_seq=0,
                    created_at=0.0,
                    updated_at=0.0,
                )
            )
            data = json.dumps({"generation": 1, "event": {"type": "x", "delta": "y" * 60}})
            batch, total = 50, 50_000
            started = time.perf_counter()
            for first in range(1, total + 1, batch):
                rows = [
                    EventRow(i, 0.0, "event", data.encode()) for i in range(first, first + batch)
                ]
                store.append_events("s1", rows)
            rates.append(total / (time.perf_counter() - started))
            store.close()
            del run
    return rates


def run() -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="fsm-bench-control-") as tmp:
        root = Path(tmp)
        process, base = _start_control(root)
        try:
            idle_rss = rss_mib(process.pid)
            sessions, created_in = asyncio.run(_create(base, max(STEPS)))
            figures.append(
                Figure(
                    "control",
                    "session creation",
                    len(sessions) / created_in,
                    "sessions/s",
                    note=f"{len(sessions)} via POST /sessions, 16 in flight",
                )
            )
            figures.append(Figure("control", "RSS idle (no sessions)", idle_rss, "MiB"))
            held: list[tuple[int, float]] = []
            for n in STEPS:
                result = _step(process.pid, sessions[:n])
                if result.get("connected", 0) >= n and "cpu_fraction" in result:
                    held.append((n, result["cpu_fraction"]))
                if "cpu_fraction" not in result or result.get("connected", 0) < n:
                    note = f"connected {result.get('connected')} of {n}; {result.get('errors')}"
                else:
                    note = (
                        f"load generator used {result['load_cpu_fraction']:.2f} core; "
                        f"{result['beats']} heartbeats in the run"
                    )
                figures.append(
                    Figure(
                        "control",
                        f"CPU with {n} wrappers",
                        result["cpu_fraction"],
                        "cores",
                        target="< 0.5 core at 5,000" if n == 5000 else "",
                        meets_target=(result["cpu_fraction"] < 0.5) if n == 5000 else None,
                        note=note,
                    )
                )
                if result.get("ack"):
                    figures.append(
                        Figure(
                            "control",
                            f"event→ack p99 with {n} wrappers (stored first)",
                            percentile(result["ack"], 99) * 1000,
                            "ms",
                            note=f"p50 {median(result['ack']) * 1000:.1f} ms, "
                            f"{len(result['ack'])} samples",
                        )
                    )
                if result.get("welcome"):
                    figures.append(
                        Figure(
                            "control",
                            f"hello→welcome p99 with {n} wrappers",
                            percentile(result["welcome"], 99) * 1000,
                            "ms",
                            note=f"p50 {median(result['welcome']) * 1000:.1f} ms",
                        )
                    )
                figures.append(
                    Figure("control", f"RSS with {n} sessions", result["rss_mib"], "MiB")
                )
            under = [(n, cpu) for n, cpu in held if cpu < 0.5]
            most, cpu = max(under) if under else (0, float("nan"))
            figures.append(
                Figure(
                    "control",
                    "wrappers held under half a core (largest step measured)",
                    float(most),
                    "wrappers",
                    target=">= 5,000 wrappers under half a core",
                    meets_target=most >= 5000,
                    note=f"{cpu:.2f} core at {most:,}; steps tried: "
                    + ", ".join(f"{n:,}" for n in STEPS),
                )
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    rates = _sqlite_throughput()
    figures.append(
        Figure(
            "control",
            "SQLite event append",
            median(rates),
            "events/s",
            runs=len(rates),
            note="batches of 50, WAL, through the store adapter",
            samples=rates,
        )
    )
    return figures
