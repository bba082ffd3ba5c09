"""OpenCode's idle blip right after a prompt cannot close a turn, on the stream or on a resync.

Measured (``tests/fixtures/opencode/*.event.jsonl``, its ``status_poll`` lines): right after
``prompt_async`` answered, ``GET /session/status`` showed the session absent, i.e. idle, for up to
three polls before ``busy``. A resync reading the status then must not close the turn; once the
agent has been seen on the prompt, or its reply to it is the session's last message (the turn ran
while the stream was down), an idle read does close.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fsm.agents.dialect import BracketDialect, Dialect, IdleDialect, dialect

FIXTURES = Path(__file__).parents[1] / "fixtures" / "opencode"


def _status(session: str, kind: str) -> dict[str, Any]:
    return {
        "type": "session.status",
        "properties": {"sessionID": session, "status": {"type": kind}},
    }


def _synthetic(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events if (e.get("properties") or {}).get("synthetic")]


@pytest.mark.parametrize("name", ["completed", "aborted", "queued"])
def test_a_resync_during_the_measured_blip_closes_nothing(name: str) -> None:
    lines = [
        json.loads(line) for line in (FIXTURES / f"{name}.event.jsonl").read_text().splitlines()
    ]
    meta = lines[0]["meta"]
    session, first = meta["session"], meta["users"][0]
    turns = IdleDialect()
    turns.session_id = session
    turns.prompted(first)  # as the host does once prompt_async answered
    blips = 0
    for line in lines[1:]:
        if "status_poll" in line:
            idle = session not in line["status_poll"]
            if idle:
                blips += 1
                turns.reset()  # the stream was replaced: the resync reads this status
                # the session's last message is our own prompt (or nothing yet)
                assert turns.resync_idle_closes("user", None) is False
                assert turns.resync_idle_closes(None, None) is False
            continue
        turns.expand(line["data"])
    assert blips >= 1, "the capture holds the blip it is about"
    assert turns.resync_idle_closes("assistant", first) is True  # after the turn: idle is idle


@pytest.mark.parametrize("name", ["idle", "brackets"])
def test_an_idle_read_closes_once_the_reply_to_the_prompt_is_the_last_message(name: str) -> None:
    turns: Dialect = dialect(name)
    turns.session_id = "ses_1"
    turns.prompted("msg_1")
    assert turns.resync_idle_closes("user", None) is False
    assert turns.resync_idle_closes("assistant", "msg_0") is False  # a reply to an older prompt
    assert turns.resync_idle_closes("assistant", "msg_1") is True  # it ran while we were away
    assert turns.resync_idle_closes("user", None) is True  # nothing pending any more


@pytest.mark.parametrize("name", ["idle", "brackets"])
def test_the_agent_seen_working_ends_the_guard(name: str) -> None:
    turns: Dialect = dialect(name)
    turns.session_id = "ses_1"
    turns.prompted("msg_1")
    turns.expand(_status("ses_other", "busy"))  # another session's busy is not ours
    assert turns.resync_idle_closes(None, None) is False
    turns.expand(_status("ses_1", "busy"))
    assert turns.resync_idle_closes(None, None) is True


def test_a_status_idle_event_before_any_busy_closes_nothing() -> None:
    turns = IdleDialect()
    turns.session_id = "ses_1"
    turns.prompted("msg_1")
    user = {"id": "msg_1", "role": "user", "sessionID": "ses_1"}
    made = [
        *turns.expand({"type": "message.updated", "properties": {"info": user}}),
        *turns.expand(_status("ses_1", "idle")),
        *turns.expand({"type": "session.idle", "properties": {"sessionID": "ses_1"}}),
    ]
    assert _synthetic(made) == []
    made = turns.expand(_status("ses_1", "busy")) + turns.expand(_status("ses_1", "idle"))
    assert _synthetic(made) == ["session.turn.open", "session.turn.close"]


def test_kilo_passes_every_event_through() -> None:
    turns = BracketDialect()
    turns.session_id = "ses_1"
    event = _status("ses_1", "idle")
    assert turns.expand(event) == [event]
