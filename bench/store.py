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

Needs PostgreSQL's binaries (scripts/setup-postgres.sh); without them the bench reports one
figure saying so instead of failing the table.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from adapters.store.base import Store
from adapters.store.rows import EventRow, SessionRow, hash_token
from bench.common import Figure, interleaved, median

BATCH = 50
TOTAL = 20_000
RUNS = 5
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
    cluster = Cluster(bindir, durable=True)
    try:
        cluster.start()
        dsn = cluster.dsn()
        PostgresStore(dsn).close()  # migrate once, outside the measurement
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
    return figures


if __name__ == "__main__":
    for figure in run():
        print(f"{figure.name}: {figure.value:,.0f} {figure.unit} ({figure.ratio or 1:.2f}x)")
