"""Kilo's real captured event streams translate into the turn triggers the machines expect."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from fsm.agents.events import ERROR_DETAIL_BYTES, TurnTranslator, clip_error, session_of
from fsm.engine.clock import VirtualClock
from fsm.engine.effects import AbortAgentTurn, EmitOutcome
from fsm.engine.events import Event
from fsm.engine.machine import StateMachine
from fsm.machines import turn
from tests.engine.harness import Driver
from tests.paths import KILO_CAPTURES, SHARED_KILO

# Copies of captures from a real Kilo 7.7.9 (shared/kilo/captures), kept with the tests.
CAPTURES = KILO_CAPTURES


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
        "properties": {"sessionID": "ses_1", "messageID": "msg_a", "delta": " fake"},
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
    network = {
        "type": "session.network.asked",
        "properties": {"sessionID": "ses_1", "id": "q", "message": "Request timed out"},
    }
    assert t.triggers(network) == [("agent_gave_up", {"error": "Request timed out"})]
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


# -- what counts as progress (issue 13, items 2 and 6) ------------------------------------------
# Each of these failed on the code before the classification table: the empty text part, the
# spinner and any part update after a question counted as progress, and a network wait was
# nothing at all.

SHARED = SHARED_KILO
MIN = 60.0


def driven(events: list[dict[str, Any]], session: str) -> Driver:
    """A dispatched turn fed ``events`` through one translator, 10 ms apart."""
    d = Driver(turn.SPEC, context=turn.TurnContext(message_id="m"))
    d.start()
    d.send("dispatch")
    t = TurnTranslator(session)
    for payload in events:
        d.advance_by(0.01)
        for trigger, data in t.triggers(payload):
            d.send(trigger, **data)
    return d


def up_to(events: list[dict[str, Any]], last: Callable[[dict[str, Any]], bool]) -> list[Any]:
    end = next(i for i, e in enumerate(events) if last(e))
    return events[: end + 1]


def spinner(session: str, message: str, frame: str) -> dict[str, Any]:
    """Kilo's synthetic "Initializing snapshot…" part (README §7: the shape measured; ~7/s)."""
    return {
        "type": "message.part.updated",
        "properties": {
            "sessionID": session,
            "part": {
                "id": "prt_spinner",
                "sessionID": session,
                "messageID": message,
                "type": "text",
                "text": f"{frame} Initializing snapshot…",
                "synthetic": True,
                "metadata": {"kilocode.lifecycle": "transient"},
            },
            "time": 1,
        },
    }


def test_a_hang_right_after_the_empty_text_part_resubmits_the_turn_once() -> None:
    """Kilo opens the text part empty before the first token (captured in t5-abort-midstream:
    open, busy, step-start, the empty part, then the first delta): a hang there produced
    nothing, so the turn is resubmitted once, not failed ``agent_restarted``."""
    events = stream("t5-abort-midstream.event.jsonl")
    session = next(s for e in events if (s := session_of(e)))
    before_first_token = up_to(
        events,
        lambda e: (
            e["type"] == "message.part.updated"
            and e["properties"]["part"].get("type") == "text"
            and not e["properties"]["part"].get("text")
        ),
    )
    assert before_first_token[-1]["properties"]["part"]["text"] == ""
    d = driven(before_first_token, session)
    assert d.state == "running"
    assert not d.machine.context.progressed
    d.send("agent_lost")
    assert d.state == "queued"


def test_the_snapshot_spinner_is_not_progress_and_the_turn_fails_no_progress() -> None:
    session = "ses_1"
    opened = [
        {"type": "session.turn.open", "properties": {"sessionID": session}},
        {
            "type": "session.status",
            "properties": {"sessionID": session, "status": {"type": "busy"}},
        },
    ]
    d = driven(opened, session)
    t = TurnTranslator(session)
    frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    for i in range(7 * 60 * 8):  # eight minutes of spinner at ~7/s
        d.advance_by(1 / 7)
        for trigger, data in t.triggers(spinner(session, "msg_a", frames[i % len(frames)])):
            d.send(trigger, **data)
        if d.state != "running":
            break
    assert d.state == "failed"
    assert d.machine.context.reason == "no_progress"


def test_a_pending_question_stays_waiting_user_whatever_kilo_sends_until_answered() -> None:
    """After ``question.asked`` Kilo goes on sending the question tool's running state, statuses,
    spinner frames, heartbeats (the captured t3 stream, plus spinner frames as measured after a
    wrapper kill): none of it is the answer, so the turn stays ``waiting_user``."""
    events = stream("t3-question-reply.event.jsonl")
    session = next(s for e in events if (s := session_of(e)))
    asked = up_to(events, lambda e: e["type"] == "question.asked")
    d = driven(asked, session)
    assert d.state == "waiting_user"
    t = TurnTranslator(session)
    after = events[
        len(asked) : events.index(next(e for e in events if e["type"] == "question.replied"))
    ]
    noise = [*after, spinner(session, "msg_a", "⠋"), spinner(session, "msg_a", "⠙")]
    noise.append({"type": "server.heartbeat", "properties": {}})
    for payload in noise:
        d.advance_by(0.033)
        for trigger, data in t.triggers(payload):
            d.send(trigger, **data)
        assert d.state == "waiting_user", payload["type"]
    d.advance_by(30 * MIN)
    assert d.state == "waiting_user"
    for trigger, data in t.triggers(
        {"type": "question.replied", "properties": {"sessionID": session}}
    ):
        d.send(trigger, **data)
    assert d.state == "running"


def test_a_part_repeating_its_text_after_the_deltas_is_not_new_progress() -> None:
    t = TurnTranslator("ses_1")
    part = {"id": "p", "sessionID": "ses_1", "messageID": "msg_a", "type": "text"}

    def updated(text: str) -> dict[str, Any]:
        return {"type": "message.part.updated", "properties": {"part": {**part, "text": text}}}

    delta = {
        "type": "message.part.delta",
        "properties": {"sessionID": "ses_1", "messageID": "msg_a", "partID": "p", "delta": "hi"},
    }
    assert t.triggers(updated("")) == []
    assert t.triggers(delta) == [("progress", {})]
    assert t.triggers(updated("hi")) == []
    assert t.triggers(updated("hi there")) == [("progress", {})]


CONNREFUSED = "Cannot connect to API: Unable to connect. Is the computer able to access the url?"


def network_wait(session: str) -> list[dict[str, Any]]:
    """The connection-refused turn as captured (t8-connrefused), up to Kilo's wait."""
    return [
        {"type": "session.turn.open", "properties": {"sessionID": session}},
        {
            "type": "session.status",
            "properties": {"sessionID": session, "status": {"type": "busy"}},
        },
        {
            "type": "session.network.asked",
            "properties": {
                "id": "que_1",
                "sessionID": session,
                "message": CONNREFUSED,
                "restored": False,
                "time": {"created": 1},
            },
        },
        {
            "type": "session.status",
            "properties": {
                "sessionID": session,
                "status": {"type": "offline", "requestID": "que_1", "message": CONNREFUSED},
            },
        },
    ]


def test_an_unreachable_model_fails_the_turn_at_once_with_kilos_text() -> None:
    d = driven(network_wait("ses_1"), "ses_1")
    assert d.state == "failed"
    assert d.clock.now() < 1.0
    effects = d.take_effects()
    assert AbortAgentTurn("m") in effects
    assert effects[-1] == EmitOutcome("m", "failed", "agent_error", CONNREFUSED)


def test_the_captured_connection_refused_stream_fails_with_kilos_text() -> None:
    capture = SHARED / "captures" / "t8-connrefused.event.jsonl"
    if not capture.exists():
        pytest.skip("shared/kilo captures not present")
    events = []
    for line in capture.read_text().splitlines():
        data = json.loads(line).get("data")
        if isinstance(data, dict) and "type" in data:
            events.append(data)
    session = next(s for e in events if (s := session_of(e)))
    d = driven(events, session)
    assert d.state == "failed"
    assert d.machine.context.error == CONNREFUSED


def test_retries_kilo_recovers_from_do_not_fail_and_unrecovered_ones_are_the_detail() -> None:
    def retry(attempt: int) -> dict[str, Any]:
        status = {"type": "retry", "attempt": attempt, "message": "fake internal error", "next": 1}
        return {"type": "session.status", "properties": {"sessionID": "ses_1", "status": status}}

    opened = [{"type": "session.turn.open", "properties": {"sessionID": "ses_1"}}]
    d = driven([*opened, retry(1), retry(2)], "ses_1")
    assert d.state == "running"
    delta = {
        "type": "message.part.delta",
        "properties": {"sessionID": "ses_1", "messageID": "msg_a", "partID": "p", "delta": "ok"},
    }
    close = {
        "type": "session.turn.close",
        "properties": {"sessionID": "ses_1", "reason": "completed"},
    }
    t = TurnTranslator("ses_1")
    for payload in (delta, close):
        for trigger, data in t.triggers(payload):
            d.send(trigger, **data)
    d.advance_by(5)
    assert d.take_effects()[-1] == EmitOutcome("m", "completed", "completed", "")

    stuck = driven([*opened, retry(1)], "ses_1")
    stuck.advance_by(8 * MIN)
    assert stuck.take_effects()[-1] == EmitOutcome(
        "m", "failed", "no_progress", "fake internal error"
    )


def test_the_error_detail_is_the_first_kib_and_never_cuts_a_character() -> None:
    assert clip_error("short") == "short"
    clipped = clip_error("é" * 2000)
    assert len(clipped.encode()) <= ERROR_DETAIL_BYTES
    assert clipped == "é" * 512


def captured_everywhere() -> list[dict[str, Any]]:
    events = []
    paths = [*CAPTURES.glob("*.event.jsonl"), *(SHARED / "captures").glob("*.event.jsonl")]
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.removeprefix("data: ")
            try:
                row = json.loads(line)
            except ValueError:
                continue
            data = row.get("data", row) if isinstance(row, dict) else None
            if isinstance(data, dict) and "payload" in data:
                data = data["payload"]
            if isinstance(data, dict) and "type" in data:
                events.append(data)
    return events


def test_every_captured_kind_is_declared_in_the_table() -> None:
    """The table is the one place that says what an event means: each kind captured from the
    real Kilo has its own row, or is named in the ``other`` row (so nothing is classified by
    accident)."""
    named_other = set(next(r for r in turn.AGENT_EVENTS if r.shape == "other").seen.split())
    t = TurnTranslator()
    unclassified = set()
    for payload in captured_everywhere():
        shape = t.shape_of(payload)
        if shape == "other" and payload["type"] not in named_other:
            unclassified.add(payload["type"])
        assert shape in turn.AGENT_MEANING
    assert not unclassified
