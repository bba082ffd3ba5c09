"""An agent's event stream that outlives its connection: reconnects with bounded, jittered backoff.

The agents' own SDKs resubscribe to ``GET /event`` when it drops; a client of ours used outside the
wrapper (the demo, a tool, a test) needs the same, and it belongs in the adapter, beside the
stream it reopens (issue 17). ``reconnecting_events`` yields the agent's events across
connections: a dropped stream (a broken chunk, a refused or reset connection, a clean end, a 5xx)
is reopened after ``Backoff.delay`` — exponential from ``initial``, capped at ``maximum``, each
delay drawn down by up to ``jitter`` of itself so a fleet of wrappers whose agent restarted do not
reconnect in step. A connection that delivered an event resets the count; a failure past
``attempts`` consecutive retries gives up with ``StreamGaveUp``. A 4xx is not retried (a wrong
password stays wrong): its ``AgentError`` is raised at once.

Every connection starts with the agent's ``server.connected``: after the first, that event is the
caller's cue that events may have been missed and the session's state must be re-read (the
wrapper's host does this through its agent_link machine, which owns its own resubscription and
reconcile; this module is the adapter's, for every other caller). The wait is ``sleep``, injected
so a test can run the backoff on small delays and record them (no sleeping for production timers).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from adapters.kilo.client import AgentClient, AgentError
from adapters.kilo.event_stream import StreamBroken


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnects: ``initial * factor**(n-1)``, at most ``maximum``, jittered."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5
    """The fraction of each delay that is random: drawn from ``[delay * (1 - jitter), delay]``."""
    attempts: int | None = None
    """Reconnects tried after consecutive failures before giving up; None: forever."""

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(
                f"backoff: need 0 < initial <= maximum, factor >= 1, jitter in [0, 1]: {self}"
            )
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"backoff: attempts must be >= 1 or None, got {self.attempts}")

    def bound(self, failures: int) -> float:
        """The delay before the reconnect after ``failures`` consecutive failures (>= 1)."""
        return float(min(self.maximum, self.initial * self.factor ** (failures - 1)))

    def delay(self, failures: int, rng: random.Random) -> float:
        top = self.bound(failures)
        return top * (1 - self.jitter * rng.random())


class StreamGaveUp(Exception):
    """``Backoff.attempts`` consecutive reconnects failed; ``__cause__`` is the last failure."""


DROPS: tuple[type[BaseException], ...] = (StreamBroken, httpx.TransportError, OSError, TimeoutError)
"""What ends a connection without ending the agent: retried."""


def _retried(exc: BaseException) -> bool:
    if isinstance(exc, AgentError):
        return exc.status >= 500
    return isinstance(exc, DROPS)


async def reconnecting_events(
    client: AgentClient,
    backoff: Backoff,
    *,
    rng: random.Random | None = None,
    sleep: Callable[[float], Awaitable[Any]] = anyio.sleep,
) -> AsyncIterator[dict[str, Any]]:
    """The agent's events, across as many connections as it takes (module docstring)."""
    draw = rng or random.SystemRandom()
    failures = 0
    while True:
        try:
            async with client.subscribe_events() as events:
                async for event in events:
                    failures = 0
                    yield event
            error: BaseException = StreamBroken("the event stream ended")
        except Exception as exc:
            if not _retried(exc):
                raise
            error = exc
        failures += 1
        if backoff.attempts is not None and failures > backoff.attempts:
            raise StreamGaveUp(
                f"event stream: {backoff.attempts} reconnects failed, last: "
                f"{type(error).__name__}: {error}"
            ) from error
        await sleep(backoff.delay(failures, draw))
