"""Where the control host's store calls run: off the event loop for a server, inline for a file.

Why
---
The store adapters are synchronous (``base.py``). Called on the event loop, a PostgreSQL server
that is slow, stopped or out of reach freezes the whole replica: no ``/healthz``, no ingest
heartbeats, and no lease renewals, so its sessions are claimed elsewhere while it still holds
wrapper sockets (a liveness bug that is also a split-brain risk). ``StoreThread`` runs every
call on **one dedicated thread, in the order they were submitted**: the loop awaits the answer
and keeps serving meanwhile. One thread, not a pool: PostgresStore holds one connection whose
transactions (``batch``, ``savepoint``) must not interleave, and FIFO order keeps a session's
writes in the order the host made them (the flush, the lease keeper and readers all queue here).

psycopg's async API was the other choice (the issue allowed it). It was not taken because the
adapter and its contract suite are synchronous and shared with SQLite: an async port would have
doubled every adapter or wrapped SQLite in a thread anyway, for no gain at this call rate (a few
calls per flush period per replica, not per frame).

``Inline`` runs the call on the loop: SQLite is a local file whose calls take microseconds to a
millisecond, so it keeps the behaviour it always had (and its connection stays on the thread
that opened it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Protocol, TypeVar

__all__ = ["Inline", "StoreRunner", "StoreThread"]

T = TypeVar("T")


class StoreRunner(Protocol):
    """Runs store calls for the host: ``await runner.run(fn, *args)``."""

    async def run(self, fn: Callable[..., T], /, *args: object) -> T: ...

    def now(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run it and wait here: only where the loop has nothing else to serve (start, stop)."""
        ...

    def close(self) -> None: ...


class Inline:
    """Every call on the caller's thread (SQLite)."""

    async def run(self, fn: Callable[..., T], /, *args: object) -> T:
        return fn(*args)

    def now(self, fn: Callable[..., T], /, *args: object) -> T:
        return fn(*args)

    def close(self) -> None:
        pass


class StoreThread:
    """One thread that runs every store call in submission order (PostgreSQL)."""

    def __init__(self, name: str = "store") -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], /, *args: object) -> T:
        # A cancelled caller does not cancel a call that has begun: it completes on the thread
        # (a write is never cut in half); one not begun yet is skipped.
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def now(self, fn: Callable[..., T], /, *args: object) -> T:
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
