"""Kilo events handled in batches (as ``fsm-agent serve`` does, one batch per socket read) end in
exactly what one-at-a-time handling ends in: the same frames in the same order, the same states,
the same armed timers and deadlines, the same outcomes — on real captured streams cut at random,
with prompts, questions and stale events mixed in."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from fsm.engine.clock import VirtualClock
from fsm.engine.effects import Effect
from fsm.machines.timers import WRAPPER_TIMERS
from fsm.serve.core import Identity, WrapperCore
from fsm.wire.protocol import Frame, PromptCommand, Welcome
from fsm.wire.transmit import Transmit
from tests.paths import KILO_CAPTURES

CAPTURES = KILO_CAPTURES


def captured(name: str) -> list[dict[str, Any]]:
    events = []
    for line in (CAPTURES / name).read_text().splitlines():
        data = json.loads(line).get("data")
        if isinstance(data, dict) and "type" in data:
            events.append(data)
    return events


def session_of_capture(events: list[dict[str, Any]]) -> str | None:
    for event in events:
        sid = (event.get("properties") or {}).get("sessionID")
        if isinstance(sid, str):
            return sid
    return None


class Wrapper:
    def __init__(self) -> None:
        self.clock = VirtualClock(100.0)
        self.frames: list[Frame] = []
        self.actions: list[str] = []
        self.core = WrapperCore(
            self.clock,
            WRAPPER_TIMERS.defaults(),
            Identity("w1", "agent", "u", "s1"),
            self._action,
        )

    def _action(self, effect: Effect) -> None:
        if isinstance(effect, Transmit):
            self.frames.extend(effect.frames)
        else:
            self.actions.append(type(effect).__name__)

    def boot(self, agent_session_id: str | None) -> None:
        self.core.start()
        self.core.socket_open()
        self.core.control_frame(Welcome(acked=0))
        self.core.agent_ready(agent_session_id)

    def view(self) -> dict[str, Any]:
        machines = self.core.group.machines
        return {
            "frames": self.frames,
            "actions": self.actions,
            "states": {mid: m.state for mid, m in machines.items()},
            "deadlines": {mid: m.deadlines() for mid, m in machines.items()},
            "contexts": {mid: m.context for mid, m in machines.items()},
            "outcomes": self.core.outcomes,
            "pending": self.core.pending_requests,
            "clock": self.clock.pending(),
        }


@pytest.mark.parametrize(
    "capture",
    sorted(p.name for p in CAPTURES.glob("*.event.jsonl")),
)
@pytest.mark.parametrize("seed", range(4))
def test_batches_end_where_single_events_end(capture: str, seed: int) -> None:
    rng = random.Random(seed)
    events = captured(capture)
    agent_session_id = session_of_capture(events)
    steps: list[tuple[str, Any]] = []
    prompted = 0
    for event in events:
        if event.get("type") == "session.turn.open" or (prompted == 0 and rng.random() < 0.05):
            prompted += 1
            steps.append(("prompt", f"m{prompted}"))
        if rng.random() < 0.03:
            steps.append(("advance", rng.choice([0.5, 2.0, 20.0])))
        steps.append(("event", event))
        if rng.random() < 0.02:
            steps.append(("stale", event))
    delta = {"sessionID": agent_session_id, "messageID": "msg_x", "delta": "x"}
    for _ in range(60):  # a run of pure deltas, the stream's hot path
        steps.append(("event", {"type": "message.part.delta", "properties": delta}))

    one, many = Wrapper(), Wrapper()
    for w in (one, many):
        w.boot(agent_session_id)
        w.core.agent_event(w.core.generation, {"type": "server.connected", "properties": {}})

    in_batch = False
    for kind, arg in steps:
        boundary = rng.random() < 0.3
        if kind == "event":
            one.core.agent_event(one.core.generation, arg)
            if not in_batch:
                many.core.begin_batch()
                in_batch = True
            many.core.agent_event(many.core.generation, arg)
        elif kind == "stale":
            one.core.agent_event(one.core.generation - 1, arg)
            many.core.agent_event(many.core.generation - 1, arg)
        else:
            if in_batch:  # the clock and the job API never run inside a batch's read
                many.core.end_batch()
                in_batch = False
            for w in (one, many):
                if kind == "prompt":
                    w.core.prompt(PromptCommand(message_id=arg, prompt="p"))
                else:
                    w.clock.advance_by(arg)
        if in_batch and boundary:
            many.core.end_batch()
            in_batch = False
    if in_batch:
        many.core.end_batch()
    for w in (one, many):
        w.clock.advance_by(5.0)

    assert many.view() == one.view()
    assert one.frames, "the capture produced frames"
