"""``IdleDialect`` on real OpenCode 1.18.33 event streams (no process: the captures are replayed).

The captures (``tests/fixtures/opencode/*.event.jsonl``, written by ``capture_opencode.py`` from
the real OpenCode against the fake model) are a completed turn, an aborted turn and two queued
prompts. On each the dialect must give exactly one synthesised open and one close per turn, with
the close reason Kilo would have sent: ``completed``; ``interrupted`` (and nothing for the idle
OpenCode sends again after an abort, nor for the finished reply it re-sends after it: before the
fix that was a phantom second turn); ``superseded`` then ``completed`` for the queued pair, which
OpenCode ends with a single ``session.idle``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fsm.agents.dialect import IdleDialect

FIXTURES = Path(__file__).parents[1] / "fixtures" / "opencode"


def _capture(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = [
        json.loads(line) for line in (FIXTURES / f"{name}.event.jsonl").read_text().splitlines()
    ]
    meta = lines[0]["meta"]
    return meta, [line["data"] for line in lines[1:] if "data" in line]


def _brackets(dialect: IdleDialect, events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for event in events:
        for made in dialect.expand(event):
            props = made.get("properties") or {}
            if props.get("synthetic"):
                assert made is not event and props["sessionID"] == dialect.session_id
                out.append((made["type"], props.get("reason")))
    return out


OPEN = ("session.turn.open", None)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("completed", [OPEN, ("session.turn.close", "completed")]),
        ("aborted", [OPEN, ("session.turn.close", "interrupted")]),
        (
            "queued",
            [
                OPEN,
                ("session.turn.close", "superseded"),
                OPEN,
                ("session.turn.close", "completed"),
            ],
        ),
    ],
)
def test_one_open_and_one_close_per_turn_on_a_real_capture(
    name: str, expected: list[tuple[str, str | None]]
) -> None:
    meta, events = _capture(name)
    assert meta["agent"] == "opencode" and len(meta["users"]) == (2 if name == "queued" else 1)
    dialect = IdleDialect()
    dialect.session_id = meta["session"]
    assert _brackets(dialect, events) == expected
    assert dialect.open is False


def test_the_captures_hold_what_the_dialect_is_written_against() -> None:
    """If a new OpenCode changed these facts, the captures (and the dialect) need a new look."""
    _, aborted = _capture("aborted")
    _, queued = _capture("queued")
    types = [e["type"] for e in aborted]
    assert "session.turn.open" not in types and "session.turn.close" not in types
    assert types.count("session.idle") == 2  # again after an abort
    assert [e["type"] for e in queued].count("session.idle") == 1  # one for two prompts


def test_another_sessions_events_open_nothing() -> None:
    _, events = _capture("completed")
    dialect = IdleDialect()
    dialect.session_id = "ses_someone_else"
    assert _brackets(dialect, events) == []
    unbound = IdleDialect()  # no session yet: everything passes through untouched
    assert _brackets(unbound, events) == []


def _status(session: str, kind: str) -> dict[str, Any]:
    return {
        "type": "session.status",
        "properties": {"sessionID": session, "status": {"type": kind}},
    }


def _message(session: str, role: str, mid: str, **info: Any) -> dict[str, Any]:
    body = {"id": mid, "role": role, "sessionID": session, **info}
    return {"type": "message.updated", "properties": {"sessionID": session, "info": body}}


def test_an_abort_before_the_model_streamed_closes_interrupted() -> None:
    """OpenCode sends no ``session.error`` then: only the reply's ``info.error`` (measured in the
    contract tour, where the abort follows the open at once)."""
    dialect = IdleDialect()
    dialect.session_id = "ses_1"
    aborted = {"name": "MessageAbortedError", "data": {"message": "Aborted"}}
    events = [
        _message("ses_1", "user", "msg_1"),
        _status("ses_1", "busy"),
        _message("ses_1", "assistant", "msg_2"),
        _message("ses_1", "assistant", "msg_2", error=aborted),
        _status("ses_1", "idle"),
    ]
    assert _brackets(dialect, events) == [OPEN, ("session.turn.close", "interrupted")]
