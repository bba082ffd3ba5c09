"""A session's event log as an async iterator that survives dropped connections.

``GET /sessions/{id}/events`` is Server-Sent Events whose ids are the log's strictly increasing
ids. The iterator remembers the last id it handed out; when the connection drops (a reset, a
proxy's idle cut, a body cut short, the server closing a subscriber that fell behind) it
reconnects with ``Last-Event-ID`` after a bounded, growing delay, so the caller sees every event
exactly once and in order, whatever happened underneath. An event is only handed out once its
blank line arrived: a block cut in half by the drop is read again, whole, after the resume.

The budget counts consecutive failures: any event received resets it, so a long-lived stream
may be resumed any number of times, but a control plane that stays unreachable ends the
iteration with ``StreamGaveUp`` after ``Retry.attempts`` tries instead of spinning forever.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import msgspec

from fsm.client.errors import ApiError, StreamGaveUp


class Event(msgspec.Struct, frozen=True):
    """One entry of a session's log: ``kind`` is ``transition``, ``lifecycle``, ``message``,
    ``event`` (Kilo's own, in ``data["event"]``), ``outcome``… (``fsm.control.core.LogEntry``);
    ``at`` the control plane's wall-clock time of it."""

    id: int
    kind: str
    data: dict[str, Any]
    at: float


@dataclass(frozen=True)
class Retry:
    """How an event stream resumes: ``attempts`` consecutive failed reconnects at most, waiting
    ``initial`` seconds before the first, doubling up to ``maximum``."""

    attempts: int = 8
    initial: float = 0.2
    maximum: float = 5.0
    stall: float = 45.0
    """Seconds without a byte before the connection counts as dead: the server writes a
    keep-alive every 15 s, so three missed ones mean a half-open connection."""

    def delay(self, failures: int) -> float:
        return float(min(self.maximum, self.initial * 2 ** max(0, failures - 1)))


DEFAULT_RETRY = Retry()

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers worth waiting out: too many streams (a dropped one not yet released), a restarting
control plane or a proxy in front of it."""


class _Retryable(Exception):
    pass


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """Events of a ``text/event-stream``, each dispatched at its blank line (comments, such as
    the keep-alives, and blocks without an id are skipped)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if not line:
            if "id" in fields and "data" in fields:
                data: dict[str, Any] = msgspec.json.decode(fields["data"])
                at = data.pop("at", 0.0)
                yield Event(int(fields["id"]), fields.get("event", "message"), data, float(at))
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = f"{fields[name]}\n{value}" if name == "data" and name in fields else value


class EventStream:
    """``async for event in client.events(session_id): ...``; ``last_id`` is the id of the last
    event handed out (give it as ``after`` to continue elsewhere), ``reconnects`` how often the
    connection was resumed. Close it (``aclose`` or ``async with``) when leaving early."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        session_id: str,
        *,
        after: int = 0,
        follow: bool = True,
        retry: Retry = DEFAULT_RETRY,
    ) -> None:
        self.session_id = session_id
        self.last_id = after
        self.reconnects = 0
        self.follow = follow
        self._http = http
        self._retry = retry
        self._gen = self._run()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[Event]:
        path = f"/sessions/{quote(self.session_id, safe='')}/events"
        timeout = httpx.Timeout(self._http.timeout.connect, read=self._retry.stall)
        failures = 0
        connected = False
        while True:
            headers = {"Last-Event-ID": str(self.last_id)} if self.last_id else {}
            params = {"follow": "1" if self.follow else "0"}
            last: BaseException
            try:
                async with self._http.stream(
                    "GET", path, headers=headers, params=params, timeout=timeout
                ) as response:
                    if response.status_code != 200:
                        error = ApiError.from_response(response.status_code, await response.aread())
                        if response.status_code == 404 and connected:
                            return  # the session was deleted while we followed it: its log ends
                        if response.status_code not in RETRY_STATUSES:
                            raise error
                        raise _Retryable from error
                    connected = True
                    async for event in parse_sse(response.aiter_lines()):
                        if event.id <= self.last_id:
                            continue  # never twice, whatever the server resends
                        self.last_id = event.id
                        failures = 0
                        yield event
                if not self.follow:
                    return
                last = EOFError("the control plane ended the stream")
            except httpx.TransportError as exc:
                last = exc
            except _Retryable as exc:
                last = exc.__cause__ or exc
            failures += 1
            if failures > self._retry.attempts:
                raise StreamGaveUp(failures - 1, last)
            self.reconnects += 1
            await anyio.sleep(self._retry.delay(failures))
