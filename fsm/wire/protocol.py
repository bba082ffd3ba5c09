"""The ingest protocol between a wrapper and the control plane: one module, both sides.

Frames are msgspec structs in a tagged union (``{"type": "hello", ...}``) sent as JSON text
WebSocket messages. Wrapper → control frames that must survive a reconnect carry a sequence
number (``seq``); the control plane acknowledges cumulatively (``ack``), drops duplicates by seq,
and the wrapper resends whatever was not acknowledged after the next ``welcome``.

Commands (control → wrapper) have the same shapes as the wrapper's job API bodies, so a prompt
sent by a client over HTTP and one relayed by the control plane are one type.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Annotated, Any, Literal

import msgspec

PROTOCOL_VERSION = 1
WRAPPER_VERSION = "0.1.0"

# -- bounds of the wire shapes ------------------------------------------------------------------
# Declared once, here, on the types that decode the frames: a frame outside them never reaches a
# machine or the store (an unbounded ``seq`` once overflowed SQLite's INTEGER and stopped the
# control plane). The whole frame's size and nesting depth are ``fsm.settings.limits`` rows,
# checked by
# the ingest endpoint before decoding.

INT63 = 2**63
Seq = Annotated[int, msgspec.Meta(ge=0, le=INT63 - 1, description="0 <= seq < 2^63")]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT63 - 1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
"""An identifier or a name chosen by a peer (wrapper id, session ids, user id, version)."""
SHORT_MAX = 256
TEXT_MAX = 64 * 1024
Short = Annotated[str, msgspec.Meta(max_length=SHORT_MAX)]
Text = Annotated[str, msgspec.Meta(max_length=TEXT_MAX)]
"""Human text a peer reports (a reason, an agent's error message)."""
Stamp = Annotated[float, msgspec.Meta(ge=0.0, le=1e12)]
IDENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$(?!\n)"
"""``(?!\n)``: Python's ``$`` also matches before a final newline; ECMA's (OpenAPI) never does."""
Ident = Annotated[
    str, msgspec.Meta(pattern=IDENT_PATTERN, description="letters, digits, '_.:-'; 1-128 chars")
]
"""An id that may end up in a URL path or a file name (message, permission and question ids):
a pattern, not only a length, so ``../`` can never be one."""


class Frame(msgspec.Struct, frozen=True, tag_field="type", tag=str.lower):
    pass


# -- wrapper → control ----------------------------------------------------------------------


class Hello(Frame, frozen=True, tag="hello"):
    wrapper_id: Name
    version: Name
    protocol: Count
    agent_session: Name
    user_id: Name
    session_id: Name


class Heartbeat(Frame, frozen=True, tag="heartbeat"):
    state: Short
    active: bool
    degraded: bool


class SeqFrame(Frame, frozen=True):
    seq: Seq


class EventFrame(SeqFrame, frozen=True, tag="event"):
    generation: Count
    event: dict[str, Any]


OutcomeStatus = Literal["completed", "failed", "cancelled"]
PermissionReply = Literal["once", "always", "reject"]


class OutcomeFrame(SeqFrame, frozen=True, tag="outcome"):
    message_id: Name
    status: OutcomeStatus
    """Only a terminal state: a wrapper cannot move a message anywhere else."""
    reason: Short = ""
    error: Text = ""


class LifecycleFrame(SeqFrame, frozen=True, tag="lifecycle"):
    """A transition of one of the wrapper's machines (the control plane's timelines show them)."""

    machine: Short
    state: Short
    reason: Text = ""
    source: Short = ""
    trigger: Short = ""
    at: Stamp = 0.0


class EventsDropped(SeqFrame, frozen=True, tag="events_dropped"):
    """Stands in the stream where ``count`` events (from ``seq`` to ``last_seq``) were dropped."""

    count: Count
    last_seq: Seq


# -- control → wrapper ----------------------------------------------------------------------


class Welcome(Frame, frozen=True, tag="welcome"):
    acked: Seq = 0
    """Highest seq the control plane already holds (a reconnect resumes after it)."""


class Shutdown(Frame, frozen=True, tag="shutdown"):
    reason: Text


class Ack(Frame, frozen=True, tag="ack"):
    seq: Seq


MimeType = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z0-9][a-z0-9.+-]{0,62}/[a-z0-9][a-z0-9.+-]{0,62}$(?!\n)",
        description="type/subtype, lower case, e.g. text/plain",
    ),
]
DataUrl = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^data:",
        max_length=1024 * 1024,
        description="data:<mime>;base64,<content>; all of a message's together within "
        "limits.attachment_chars",
    ),
]


class FilePart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A file sent with a prompt (acceptance 6): handed to Kilo as a ``file`` part, so the
    model reads it. Only ``data:`` URLs: a path or URL would make the wrapper, or Kilo, read
    whatever a client names."""

    mime: MimeType
    url: DataUrl
    filename: Name | None = None


class PromptCommand(Frame, frozen=True, tag="prompt"):
    message_id: Ident
    prompt: str
    """Bounded by the sender (``limits.prompt_chars``) and by the frame size. A prompt that is a
    slash command (``/compact``, ``/init …``) is run as one (``fsm.wire.slash``)."""
    model: Short | None = None
    variant: Short | None = None
    agent: Short | None = None
    auto_commit: bool = False
    files: Annotated[tuple[FilePart, ...], msgspec.Meta(max_length=64)] = ()


class AbortCommand(Frame, frozen=True, tag="abort"):
    message_id: Ident | None = None


class PermissionCommand(Frame, frozen=True, tag="permission"):
    request_id: Ident
    reply: PermissionReply
    message: Text | None = None


Answer = Annotated[list[Annotated[str, msgspec.Meta(max_length=4096)]], msgspec.Meta(max_length=64)]
Answers = Annotated[list[Answer], msgspec.Meta(max_length=64)]


class QuestionCommand(Frame, frozen=True, tag="question"):
    request_id: Ident
    answers: Answers | None = None
    """``None`` rejects (dismisses) the question."""


class ReleaseCommand(Frame, frozen=True, tag="release"):
    reason: Text = ""


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

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = str.maketrans({"{": "(", "[": "(", "}": ")", "]": ")"})


def nesting_depth(text: str) -> int:
    """The JSON nesting depth of ``text`` (brackets inside strings do not count): both sides
    measure a frame with this, the control plane to refuse it and the wrapper not to send it."""
    shape = "".join(c for c in _STRINGS.sub("", text).translate(_BRACKETS) if c in "()")
    return max(accumulate(1 if c == "(" else -1 for c in shape), default=0)


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
