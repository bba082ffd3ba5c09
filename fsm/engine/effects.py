"""Effects: what a machine asks the world to do, as typed values.

Machines never act; they return these. A host (``fsm-agent serve``/``control``) or the simulator
executes them through adapters. Being msgspec structs, they can be logged, compared in tests and
carried in timelines without any adapter present.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Effect(msgspec.Struct, frozen=True, tag=True):
    """Base of every effect; ``tag`` makes a list of mixed effects encode unambiguously."""


# -- engine effects: every host executes these the same way (see fsm.engine.runner)


class ArmTimer(Effect, frozen=True):
    machine_id: str
    timer: str
    token: int
    deadline: float
    delay: float


class CancelTimer(Effect, frozen=True):
    machine_id: str
    timer: str
    token: int


class Signal(Effect, frozen=True):
    """Deliver ``trigger`` to a sibling machine of the same host (e.g. agent_link → wrapper)."""

    target: str
    trigger: str
    data: dict[str, Any] = {}


# -- wrapper side: the Kilo agent ---------------------------------------------------------------


class SpawnAgent(Effect, frozen=True):
    attempt: int = 0


class StopAgent(Effect, frozen=True):
    keep_session: bool = True
    """Idle cleanup must keep Kilo's own session so a later prompt resumes it."""


class Subscribe(Effect, frozen=True):
    generation: int


class Unsubscribe(Effect, frozen=True):
    generation: int


class ProbeHealth(Effect, frozen=True):
    generation: int


class Reconcile(Effect, frozen=True):
    """After a resubscription: re-read session status and messages (Kilo's SSE has no replay)."""

    generation: int


# -- wrapper side: turns ------------------------------------------------------------------------


class SubmitPrompt(Effect, frozen=True):
    message_id: str
    resubmission: bool = False


class AbortAgentTurn(Effect, frozen=True):
    message_id: str


class AgentStuck(Effect, frozen=True):
    """Kilo took a prompt and did nothing with it for the whole no-progress window: Kilo itself is
    wedged (seen after a burst of prompts and aborts: every later prompt is taken and never
    run), so the wrapper restarts it instead of failing prompt after prompt."""

    message_id: str


class EmitOutcome(Effect, frozen=True):
    message_id: str
    status: str
    """completed | failed | cancelled"""
    reason: str = ""
    error: str = ""


# -- wrapper side: the ingest link --------------------------------------------------------------


class OpenSocket(Effect, frozen=True):
    attempt: int = 0


class CloseSocket(Effect, frozen=True):
    reason: str = ""


class SendHello(Effect, frozen=True):
    pass


class SendHeartbeat(Effect, frozen=True):
    pass


class ResendUnacked(Effect, frozen=True):
    pass


class ExitProcess(Effect, frozen=True):
    code: int
    reason: str = ""


class ReportState(Effect, frozen=True):
    """Tell the other side about a lifecycle change (a lifecycle frame, never dropped)."""

    state: str
    reason: str = ""


# -- control side ---------------------------------------------------------------------------


class StartWrapper(Effect, frozen=True):
    attempt: int = 0


class StopWrapper(Effect, frozen=True):
    reason: str = ""


class SendShutdown(Effect, frozen=True):
    reason: str


class SendCommand(Effect, frozen=True):
    """A command down the ingest socket, of the same types as the wrapper's job API."""

    command: str
    args: dict[str, Any] = {}


class FailMessages(Effect, frozen=True):
    """Every accepted message of the session gets this failed outcome."""

    reason: str


class NotifyTurns(Effect, frozen=True):
    """Deliver ``trigger`` to every unfinished turn (e.g. the agent was lost or is gone)."""

    trigger: str
    reason: str = ""


class OpenAgentLink(Effect, frozen=True):
    """Start a fresh ``agent_link`` machine for the Kilo instance that just became healthy."""
