"""The event log over SSE: how a client says where to resume, and how one entry is written.

Shared by the API (a session this replica holds) and the replica router (a session tailed from
the database for a client that reached another replica), so both parse ``Last-Event-ID`` with
the same bounds and write the same bytes.
"""

from __future__ import annotations

import re

import msgspec
from starlette.requests import Request

from fsm.control.core import LogEntry
from fsm.wire.httpjson import HTTPProblem

LAST_EVENT_ID = re.compile(r"[0-9]{1,19}")
MAX_EVENT_ID = 2**63 - 1
"""The store's INTEGER."""


def event_cursor(request: Request) -> int:
    """``Last-Event-ID`` (or ``?after``): ASCII digits only (``str.isdigit`` takes '²'), at most
    2^63 - 1 (the store's INTEGER), else 400 naming the one that was wrong."""
    header = request.headers.get("last-event-id")
    name, raw = (
        ("Last-Event-ID", header) if header else ("after", request.query_params.get("after"))
    )
    if not raw:
        return 0
    if not LAST_EVENT_ID.fullmatch(raw) or int(raw) > MAX_EVENT_ID:
        raise HTTPProblem(400, f"{name} must be an event id (0 to 2^63-1), got {raw[:40]!r}", name)
    return int(raw)


def sse_line(entry: LogEntry) -> bytes:
    data = msgspec.json.encode({**entry.data, "at": entry.at})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (entry.id, entry.kind.encode(), data)
