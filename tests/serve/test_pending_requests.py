"""A question or permission request the event stream missed is caught up from the agent's lists.

The agent's SSE has no ids and no replay: a ``question.asked`` sent while the wrapper's stream was
down is lost, and the job API then answers 404 to a reply the user can see in the agent. After a
resubscription the host reads ``GET /permission`` and ``GET /question`` (both agents serve them)
and hands the session's ids to ``WrapperCore.reconciled``, which synthesises what was missed: an
``asked`` for each new id (the turn goes ``waiting_user``, the reply is accepted), a ``replied``
for each id gone (answered meanwhile). Sans-I/O, on the virtual clock, for both dialects.
"""

from __future__ import annotations

from typing import Any

import pytest

from fsm.engine.clock import VirtualClock
from fsm.engine.effects import Effect, Reconcile
from fsm.machines.timers import WRAPPER_TIMERS
from fsm.serve.core import Identity, WrapperCore
from fsm.wire.protocol import EventFrame, PromptCommand

SESSION = "ses_k"
OPENS = {
    "brackets": {"type": "session.turn.open", "properties": {"sessionID": SESSION}},
    "idle": {
        "type": "session.status",
        "properties": {"sessionID": SESSION, "status": {"type": "busy"}},
    },
}


class Wrapper:
    def __init__(self, dialect: str) -> None:
        self.clock = VirtualClock()
        self.actions: list[Effect] = []
        self.core = WrapperCore(
            self.clock,
            WRAPPER_TIMERS.defaults(),
            Identity("w", "a", "u", "s"),
            self.actions.append,
            dialect=dialect,
        )
        self.core.start()
        self.clock.advance(4)
        self.core.agent_ready(SESSION)
        self.event({"type": "server.connected", "properties": {}})
        self.core.prompt(PromptCommand(message_id="m1", prompt="ask me"))
        self.event(OPENS[dialect])

    def event(self, payload: dict[str, Any]) -> None:
        self.core.agent_event(self.core.generation, payload)

    def resubscribe(self) -> int:
        """The stream drops; the agent_link machine pauses, resubscribes and asks to reconcile."""
        self.core.stream_ended(self.core.generation)
        self.clock.advance_by(1)
        self.event({"type": "server.connected", "properties": {}})
        reconciles = [a for a in self.actions if isinstance(a, Reconcile)]
        assert reconciles, "the new subscription asked for no reconcile"
        return reconciles[-1].generation

    def turn_state(self) -> str:
        return str(self.core.turn("m1").state)

    def synthetic(self) -> list[tuple[str, str]]:
        frames = [f for f in self.core.outbox.pending() if isinstance(f, EventFrame)]
        return [
            (
                f.event["type"],
                str(f.event["properties"].get("id") or f.event["properties"]["requestID"]),
            )
            for f in frames
            if f.event["properties"].get("synthetic") and "turn" not in f.event["type"]
        ]


@pytest.mark.parametrize("dialect", ["brackets", "idle"])
def test_a_question_asked_while_the_stream_was_down_is_caught_up(dialect: str) -> None:
    w = Wrapper(dialect)
    assert w.turn_state() == "running"
    generation = w.resubscribe()
    w.core.reconciled(generation, True, "completed", "", {"que_1": "question"})
    assert w.core.pending_requests == {"que_1": "question"}
    assert w.turn_state() == "waiting_user"
    assert w.synthetic() == [("question.asked", "que_1")]
    # Listed again at the next reconcile: nothing new is synthesised.
    generation = w.resubscribe()
    w.core.reconciled(generation, True, "completed", "", {"que_1": "question"})
    assert w.synthetic() == [("question.asked", "que_1")]


@pytest.mark.parametrize("dialect", ["brackets", "idle"])
def test_a_request_answered_while_the_stream_was_down_is_let_go(dialect: str) -> None:
    w = Wrapper(dialect)
    w.event({"type": "permission.asked", "properties": {"id": "per_1", "sessionID": SESSION}})
    assert w.turn_state() == "waiting_user"
    generation = w.resubscribe()
    w.core.reconciled(generation, True, "completed", "", {})
    assert w.core.pending_requests == {}
    assert w.turn_state() == "running"
    assert w.synthetic() == [("permission.replied", "per_1")]


def test_a_reconcile_of_an_older_subscription_or_without_lists_changes_nothing() -> None:
    w = Wrapper("brackets")
    generation = w.resubscribe()
    w.core.reconciled(generation - 1, True, "completed", "", {"que_1": "question"})
    w.core.reconciled(generation, True, "completed", "", None)
    assert w.core.pending_requests == {} and w.turn_state() == "running"
