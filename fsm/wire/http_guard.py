"""Bounds on HTTP connections that uvicorn does not enforce itself.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) and, with
``limit_concurrency``, how many connections there are; it does not bound how long a new
connection may take to send its first request. Measured on the control plane: 50 TCP connections
that sent nothing stayed open for as long as they liked (a slowloris holds every slot that way).
``reap_silent_connections`` closes a connection that has not completed its first request's
headers within the timer's window.

It reads uvicorn's own connection set and protocol objects (``server_state.connections``, the
h11 protocol's ``cycle``, set once a request's headers are in); a uvicorn that changes them makes
this a no-op, never an error, and ``tests/control/test_hostile_input.py`` would notice.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import anyio
import uvicorn

REAP_PERIOD = 1.0


def silent_connections(
    server: uvicorn.Server, first_seen: weakref.WeakKeyDictionary[Any, float], timeout: float
) -> list[Any]:
    """The connections that have been open ``timeout`` seconds without a request."""
    now = time.monotonic()
    late = []
    for connection in list(server.server_state.connections):
        if getattr(connection, "cycle", True) is not None:  # a request began (or not HTTP/1)
            first_seen.pop(connection, None)
            continue
        since = first_seen.setdefault(connection, now)
        if now - since >= timeout:
            late.append(connection)
    return late


async def reap_silent_connections(server: uvicorn.Server, timeout: float) -> None:
    """Close, every second, each connection silent for ``timeout`` since it was first seen."""
    first_seen: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
    while True:
        await anyio.sleep(REAP_PERIOD)
        for connection in silent_connections(server, first_seen, timeout):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
            first_seen.pop(connection, None)
