"""The ingest protocol between a wrapper and the control plane: one module, both sides.

Frames are msgspec structs in a tagged union (``{"type": "hello", ...}``) sent as JSON text
WebSocket messages. Wrapper → control frames that must survive a reconnect carry a sequence
number (``seq``); the control plane acknowledges cumulatively (``ack``), drops duplicates by seq,
and the wrapper resends whatever was not acknowledged after the next ``welcome``.

Commands (control → wrapper) have the same shapes as the wrapper's job API bodies, so a prompt
sent by a client over HTTP and one relayed by the control plane are one type.
"""

from __future__ import annotations

from typing import Any

import msgspec

PROTOCOL_VERSION = 1
WRAPPER_VERSION = "0.1.0"


class Frame(msgspec.Struct, frozen=True, tag_field="type", tag=str.lower):
    pass


# -- wrapper → control ----------------------------------------------------------------------


class Hello(Frame, frozen=True, tag="hello"):
    wrapper_id: str
    version: str
    protocol: int
    agent_session: str
    user_id: str
    session_id: str


class Heartbeat(Frame, frozen=True, tag="heartbeat"):
    state: str
    active: bool
    degraded: bool


class SeqFrame(Frame, frozen=True):
    seq: int


class EventFrame(SeqFrame, frozen=True, tag="event"):
    generation: int
    event: dict[str, Any]


class OutcomeFrame(SeqFrame, frozen=True, tag="outcome"):
    message_id: str
    status: str
    reason: str = ""
    error: str = ""


class LifecycleFrame(SeqFrame, frozen=True, tag="lifecycle"):
    """A transition of one of the wrapper's machines (the control plane's timelines show them)."""

    machine: str
    state: str
    reason: str = ""
    source: str = ""
    trigger: str = ""
    at: float = 0.0


class EventsDropped(SeqFrame, frozen=True, tag="events_dropped"):
    """Stands in the stream where ``count`` events (from ``seq`` to ``last_seq``) were dropped."""

    count: int
    last_seq: int


# -- control → wrapper ----------------------------------------------------------------------


class Welcome(Frame, frozen=True, tag="welcome"):
    acked: int = 0
    """Highest seq the control plane already holds (a reconnect resumes after it)."""


class Shutdown(Frame, frozen=True, tag="shutdown"):
    reason: str


class Ack(Frame, frozen=True, tag="ack"):
    seq: int


class PromptCommand(Frame, frozen=True, tag="prompt"):
    message_id: str
    prompt: str
    model: str | None = None
    variant: str | None = None
    agent: str | None = None
    auto_commit: bool = False


class AbortCommand(Frame, frozen=True, tag="abort"):
    message_id: str | None = None


class PermissionCommand(Frame, frozen=True, tag="permission"):
    request_id: str
    reply: str
    """once | always | reject"""
    message: str | None = None


class QuestionCommand(Frame, frozen=True, tag="question"):
    request_id: str
    answers: list[list[str]] | None = None
    """``None`` rejects (dismisses) the question."""


class ReleaseCommand(Frame, frozen=True, tag="release"):
    reason: str = ""


WrapperFrame = Hello | Heartbeat | EventFrame | OutcomeFrame | LifecycleFrame | EventsDropped
ControlFrame = (
    Welcome
    | Shutdown
    | Ack
    | PromptCommand
    | AbortCommand
    | PermissionCommand
    | QuestionCommand
    | ReleaseCommand
)
Command = PromptCommand | AbortCommand | PermissionCommand | QuestionCommand | ReleaseCommand

_encoder = msgspec.json.Encoder()
_wrapper_decoder: msgspec.json.Decoder[WrapperFrame] = msgspec.json.Decoder(WrapperFrame)
_control_decoder: msgspec.json.Decoder[ControlFrame] = msgspec.json.Decoder(ControlFrame)


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode_from_wrapper(data: bytes | str) -> WrapperFrame:
    """Raises ``msgspec.ValidationError``/``DecodeError`` naming the bad field."""
    return _wrapper_decoder.decode(data)


def decode_from_control(data: bytes | str) -> ControlFrame:
    return _control_decoder.decode(data)
