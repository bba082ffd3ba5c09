"""Background work a host starts and must survive: an exception in one piece of work (a failed
wrapper start, a store error) is logged and the host goes on, instead of tearing down the task
group and with it every session. Cancellation still propagates (the host is stopping)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from fsm.hosting.logs import JsonLog


async def guarded(log: JsonLog, what: str, work: Callable[[], Awaitable[Any]]) -> None:
    """Run ``work``; log any exception as ``"<what> failed"`` instead of raising it."""
    try:
        await work()
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        log.error(f"{what} failed", error=f"{type(exc).__name__}: {exc}")


def start_guarded(
    tg: TaskGroup | None, log: JsonLog, what: str, work: Callable[[], Awaitable[Any]]
) -> None:
    """Start ``work`` in ``tg`` (which must be running) under ``guarded``."""
    assert tg is not None, "the host's task group is not running"
    tg.start_soon(guarded, log, what, work)
