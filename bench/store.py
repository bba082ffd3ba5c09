"""Store bench: events appended per second on PostgreSQL against SQLite, in the same run.

The control host appends each session's new events as one ``append_events`` call per flush, so
the figure is events/s for batches of ``BATCH`` events of a typical size (a text delta), each
batch its own transaction, one session, one connection: the path a wrapper's stream takes. SQLite
runs as the control plane runs it (WAL, ``synchronous=NORMAL``: no fsync per commit); PostgreSQL
on a throwaway cluster on loopback with its production defaults (fsync on,
``synchronous_commit=on``: every commit waits for its WAL flush), and once more with
``synchronous_commit=off``, the setting that promises what SQLite's NORMAL does (a crash may lose
the last commits, never corrupts). Runs are interleaved (SQLite, PostgreSQL, PostgreSQL async,
...) so that the shared machine's noise falls on all three alike.

Then **wrappers held per replica under half a core**, on PostgreSQL against SQLite in the same
run: the control-plane bench's load (``bench/control_load.py``: real WebSockets from a separate
process, hello, a heartbeat every 5 s, an event every 30 s per wrapper; ``bench/control.py``'s
session creation and measured step) aimed at one ``fsm-agent control`` on SQLite, then at one
replica on PostgreSQL (a lease per session, renewed every 5 s; every flush through the store
thread, fenced). The figure is the largest step whose steady window stays under half a core.

Needs PostgreSQL's binaries (scripts/setup-postgres.sh); without them the bench reports one
figure saying so instead of failing the table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from adapters.store.base import Store
from adapters.store.rows import EventRow, SessionRow, hash_token
from bench.common import Figure, interleaved, median

BATCH = 50
TOTAL = 20_000
RUNS = 5
HELD_STEPS = (2500, 5000, 10000)
"""Wrappers per step of the held-under-half-a-core figure (the issue's goal is 5,000)."""
_DATA = msgspec.json.encode({"generation": 1, "event": {"type": "x", "delta": "y" * 60}})


def _append(open_store: Callable[[], Store]) -> float:
    """Events/s for TOTAL events in batches of BATCH, on a fresh session."""
    store = open_store()
    try:
        sid = f"s{time.monotonic_ns()}"
        store.create_session(
            SessionRow(
                id=sid,
                token_hash=hash_token("t"),
                agent_session="a",
                user_id="u",
                workdir="/w",
                state="running",
                created_at=0.0,
                updated_at=0.0,
            )
        )
        started = time.perf_counter()
        for first in range(1, TOTAL + 1, BATCH):
            store.append_events(
                sid, [EventRow(i, 0.0, "event", _DATA) for i in range(first, first + BATCH)]
            )
        elapsed = time.perf_counter() - started
        assert store.last_event_id(sid) == TOTAL
        return TOTAL / elapsed
    finally:
        store.close()


def run() -> list[Figure]:
    from adapters.store.sqlite import SqliteStore

    try:
        from adapters.store.postgres import PostgresStore
        from tests.postgres_support import Cluster, find_bindir
    except ImportError as exc:
        return [Figure("store", "PostgreSQL append", float("nan"), "events/s", note=str(exc))]
    bindir = find_bindir()
    if bindir is None:
        note = "no PostgreSQL binaries (scripts/setup-postgres.sh installs them)"
        return [Figure("store", "PostgreSQL append", float("nan"), "events/s", note=note)]
    load_before = os.getloadavg()[0]
    cluster = Cluster(bindir, durable=True)
    held: list[Figure] = []
    try:
        cluster.start()
        dsn = cluster.dsn()
        PostgresStore(dsn).close()  # migrate once, outside the measurement
        held = _held_figures(cluster)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.sqlite"
            fns: dict[str, Callable[[], float]] = {
                "sqlite": lambda: _append(lambda: SqliteStore(path)),
                "postgres": lambda: _append(lambda: PostgresStore(dsn)),
                "postgres_async": lambda: _append(
                    lambda: PostgresStore(f"{dsn} options='-c synchronous_commit=off'")
                ),
            }
            for fn in fns.values():
                fn()  # warm up: imports, prepared statements, caches
            samples = interleaved(fns, RUNS)
    finally:
        cluster.destroy()
    sqlite = median(samples["sqlite"])
    note = f"median of {RUNS} runs of {TOTAL:,} events in batches of {BATCH}, one session"
    figures = [
        Figure(
            "store",
            "events appended, SQLite (WAL, synchronous=NORMAL)",
            sqlite,
            "events/s",
            runs=RUNS,
            note=note,
            samples=samples["sqlite"],
        )
    ]
    figures += held
    for key, name in (
        ("postgres", "events appended, PostgreSQL (loopback, synchronous_commit=on)"),
        ("postgres_async", "events appended, PostgreSQL (loopback, synchronous_commit=off)"),
    ):
        value = median(samples[key])
        figures.append(
            Figure(
                "store",
                name,
                value,
                "events/s",
                baseline="SQLite",
                baseline_value=sqlite,
                ratio=value / sqlite,
                runs=RUNS,
                note=note,
                samples=samples[key],
            )
        )
    # The machine is shared: what else ran shows in its load, so every figure carries it.
    load = f"load average {load_before:.2f} -> {os.getloadavg()[0]:.2f} (1 min, 2 shared cores)"
    return [dataclasses.replace(f, note=f"{f.note}; {load}") for f in figures]


def _held(
    root: Path, db: str, replica: str | None, env: dict[str, str], short: dict[int, int]
) -> dict[int, float]:
    """Control-plane CPU (cores) per step of HELD_STEPS wrappers on the store ``db``; a step
    whose wrappers did not all connect is left out (and ends the climb), its count of
    connected wrappers put in ``short``."""
    from bench.control import _create, _step
    from bench.control_load import start_control_plane

    process, base = start_control_plane(root, db, replica=replica, env=env)
    cpu: dict[int, float] = {}
    try:
        sessions, _ = asyncio.run(_create(base, max(HELD_STEPS)))
        for n in HELD_STEPS:
            result: dict[str, Any] = _step(process.pid, sessions[:n])
            if result.get("connected", 0) < n or "cpu_fraction" not in result:
                # Left out, but said: a missing step must not read as "not tried".
                short[n] = int(result.get("connected", 0))
                break
            cpu[n] = float(result["cpu_fraction"])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
    return cpu


def _held_figures(cluster: Any) -> list[Figure]:
    """Wrappers held under half a core: one control plane on SQLite, one replica on
    PostgreSQL, the same load, one after the other in this run."""
    import psycopg

    from tests.fakes.replica_process import split_password

    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute('CREATE DATABASE "held"')
    dsn, password = split_password(cluster.dsn("held"))
    with tempfile.TemporaryDirectory(prefix="fsm-bench-held-") as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        (root / "postgres").mkdir()
        sqlite_short: dict[int, int] = {}
        postgres_short: dict[int, int] = {}
        sqlite_db = str(root / "sqlite" / "control.db")
        sqlite = _held(root / "sqlite", sqlite_db, None, {}, sqlite_short)
        env = {"PGPASSWORD": password}
        postgres = _held(root / "postgres", dsn, "bench-r0", env, postgres_short)

    def left_out(short: dict[int, int]) -> str:
        return "".join(f", {n:,}: only {c:,} connected" for n, c in short.items())

    def most(cpu: dict[int, float]) -> int:
        return max((n for n, c in cpu.items() if c < 0.5), default=0)

    figures = []
    for n in HELD_STEPS:
        if n in postgres:
            base = sqlite.get(n)
            figures.append(
                Figure(
                    "store",
                    f"control-plane CPU with {n:,} wrappers, PostgreSQL replica",
                    postgres[n],
                    "cores",
                    baseline="SQLite" if base is not None else "",
                    baseline_value=base,
                    ratio=postgres[n] / base if base else None,
                    note="heartbeat every 5 s, an event every 30 s per wrapper; lease 15 s",
                )
            )
    pg_most, sqlite_most = most(postgres), most(sqlite)
    figures.append(
        Figure(
            "store",
            "wrappers held per replica under half a core, PostgreSQL",
            float(pg_most),
            "wrappers",
            baseline="SQLite",
            baseline_value=float(sqlite_most),
            ratio=pg_most / sqlite_most if sqlite_most else None,
            target=">= 5,000 wrappers under half a core",
            meets_target=pg_most >= 5000,
            note="largest step under 0.5 core; steps "
            + ", ".join(f"{n:,}" for n in HELD_STEPS)
            + "; PostgreSQL "
            + ", ".join(f"{n:,}: {c:.2f}" for n, c in postgres.items())
            + left_out(postgres_short)
            + "; SQLite "
            + ", ".join(f"{n:,}: {c:.2f}" for n, c in sqlite.items())
            + left_out(sqlite_short),
        )
    )
    return figures


if __name__ == "__main__":
    for figure in run():
        print(f"{figure.name}: {figure.value:,.0f} {figure.unit} ({figure.ratio or 1:.2f}x)")
