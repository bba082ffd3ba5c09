"""The client's routes are the server's: each row of ``fsm.client.ROUTES`` must name an operation
of ``fsm.control.api.operations`` with the same body type and the same answer type for its
success status, so a changed route or shape fails here, not in a user's call. And the SSE parser
hands out only whole events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fsm.client import ROUTES
from fsm.client.events import Event, parse_sse
from fsm.control.api import operations
from fsm.settings.limits import defaults


def _declared() -> dict[tuple[str, str], Any]:
    return {(op.method, op.path): op for op in operations(None, defaults())}  # type: ignore[arg-type]


def test_every_client_route_is_a_server_operation_with_the_same_types() -> None:
    declared = _declared()
    for name, route in ROUTES.items():
        op = declared.get((route.method, route.path))
        assert op is not None, f"{name}: {route.method} {route.path} is not a server operation"
        assert op.body is route.body, f"{name}: the server decodes {op.body}, not {route.body}"
        answers = {a.status: a.body for a in op.answers}
        assert answers.get(route.status) == route.answer, (
            f"{name}: the server answers {route.status} with {answers.get(route.status)}"
        )


def test_every_session_and_message_operation_has_a_client_call() -> None:
    covered = {(r.method, r.path) for r in ROUTES.values()}
    covered.add(("GET", "/sessions/{session_id}/events"))  # fsm.client.events
    missing = [
        f"{op.method} {op.path}"
        for op in _declared().values()
        if set(op.tags) & {"sessions", "messages", "events"} and (op.method, op.path) not in covered
    ]
    assert missing == []


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_parser_yields_whole_events_only(anyio_backend: str) -> None:
    stream = _lines(
        ": keep-alive",
        "",
        "id: 1",
        "event: message",
        'data: {"id": "m", "at": 5.0}',
        "",
        "id: 2",
        "event: transition",
        'data: {"to": "rea',  # cut here: no blank line ever comes
    )
    events = [e async for e in parse_sse(stream)]
    assert events == [Event(1, "message", {"id": "m"}, 5.0)]


def test_the_client_does_not_load_the_control_plane() -> None:
    """A program that only calls the API imports the client's types, not the server: no control
    host, no store, no runtimes (``ListedSession`` once lived in ``fsm.control.api`` and pulled
    all of it in)."""
    import subprocess
    import sys

    probe = (
        "import sys, fsm.client; "
        "print(sorted(m for m in sys.modules if m.startswith(('fsm.control.host', "
        "'fsm.control.api', 'adapters.store', 'adapters.runtime'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout
