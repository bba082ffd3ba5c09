"""Kilo's real captured event streams translate into the turn triggers the machines expect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fsm.clock import VirtualClock
from fsm.engine import StateMachine
from fsm.events import Event
from fsm.kilo_events import TurnTranslator, session_of
from fsm.machines import turn

# Copies of captures from a real Kilo 7.7.9 (shared/kilo/captures), kept with the tests.
CAPTURES = Path(__file__).resolve().parent / "fixtures" / "kilo"


def stream(name: str) -> list[dict[str, Any]]:
    events = []
    for line in (CAPTURES / name).read_text().splitlines():
        data = json.loads(line).get("data")
        if isinstance(data, dict) and "type" in data:
            events.append(data)
    return events


def drive(name: str) -> StateMachine[turn.TurnContext]:
    """Feed a captured stream to one turn machine, as the wrapper does (first session only)."""
    events = stream(name)
    first_session = next(s for e in events if (s := session_of(e)))
    translator = TurnTranslator(first_session)
    clock = VirtualClock()
    machine = StateMachine(turn.SPEC, context=turn.TurnContext(message_id="m"))
    machine.start(0)
    machine.handle(Event("dispatch"), 0)
    for i, payload in enumerate(events):
        if payload["type"] == "session.turn.close" and machine.state == "finalizing":
            break  # the capture's next turns belong to other prompts
        for trigger, data in translator.triggers(payload):
            machine.handle(Event(trigger, data), clock.now() + i * 0.01)
    machine.handle(Event("finalize"), 100)
    return machine


@pytest.mark.parametrize(
    ("capture", "state", "error_part"),
    [
        ("t2-perm-once.event.jsonl", "completed", ""),
        ("t9-busy.event.jsonl", "completed", ""),
        ("t4-500.event.jsonl", "failed", "APIError"),
        ("t5-abort-midstream.event.jsonl", "cancelled", "MessageAbortedError"),
        ("t3-question-reply.event.jsonl", "completed", ""),
    ],
)
def test_captured_streams_end_turns_as_kilo_reported(
    capture: str, state: str, error_part: str
) -> None:
    machine = drive(capture)
    assert machine.state == state
    assert error_part in machine.context.error


def test_user_prompt_parts_are_not_progress_but_assistant_deltas_are() -> None:
    t = TurnTranslator("ses_1")
    user = {
        "type": "message.updated",
        "properties": {"sessionID": "ses_1", "info": {"id": "msg_u", "role": "user"}},
    }
    assert t.triggers(user) == []
    part = {
        "type": "message.part.updated",
        "properties": {
            "part": {"sessionID": "ses_1", "messageID": "msg_u", "type": "text", "id": "p1"}
        },
    }
    assert t.triggers(part) == []
    delta = {
        "type": "message.part.delta",
        "properties": {"sessionID": "ses_1", "messageID": "msg_a"},
    }
    assert t.triggers(delta) == [("progress", {})]


def test_tool_lifecycle_holds_the_clock_and_network_waits_are_not_questions() -> None:
    t = TurnTranslator("ses_1")

    def tool(status: str) -> dict[str, Any]:
        return {
            "type": "message.part.updated",
            "properties": {
                "part": {
                    "sessionID": "ses_1",
                    "messageID": "msg_a",
                    "type": "tool",
                    "id": "prt_t",
                    "state": {"status": status},
                }
            },
        }

    assert t.triggers(tool("running")) == [("tool_started", {"part": "prt_t"})]
    assert t.triggers(tool("completed"))[0] == ("tool_finished", {"part": "prt_t"})
    network = {"type": "session.network.asked", "properties": {"sessionID": "ses_1", "id": "q"}}
    assert t.triggers(network) == []
    other = {
        "type": "session.turn.close",
        "properties": {"sessionID": "ses_2", "reason": "completed"},
    }
    assert t.triggers(other) == []
    superseded = {
        "type": "session.turn.close",
        "properties": {"sessionID": "ses_1", "reason": "superseded"},
    }
    assert t.triggers(superseded) == []
