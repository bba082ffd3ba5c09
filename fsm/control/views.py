"""What the client API answers with, as msgspec types: the handlers encode these and the OpenAPI
document describes these, so a response cannot drift from its documented schema."""

from __future__ import annotations

from typing import Annotated

import msgspec

from fsm.control.core import Message
from fsm.wire.protocol import Short


class CreateSessionBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_session: (
        Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$(?!\n)")] | None
    ) = None
    """The agent's (Kilo's) session to resume, or a name for a new one."""
    user_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$(?!\n)")] = (
        "user"
    )
    workdir: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=1024, pattern=r"^[^\x00]*$")] | None
    ) = None
    """Inside the control plane's workspace root; a relative path is taken from that root. No
    NUL (no path holds one): said by the type, so the document says it too."""
    wrapper_version: Short | None = None
    """Version the first wrapper announces (for exercising version pinning)."""


class WrapperAccess(msgspec.Struct):
    """For ``--runtime external`` only, and only in the creation answer: what the wrapper's
    starter needs. The token is shown once; the control plane keeps only its hash."""

    ingest_url: str
    token: str


class SessionSummary(msgspec.Struct, kw_only=True):
    id: str
    state: str
    agent_session: str
    user_id: str
    workdir: str
    wrapper_id: str | None
    connected: bool
    created_at: float


class ListedSession(SessionSummary, kw_only=True):
    """A session in ``GET /sessions``."""

    owner: str | None
    """The replica holding the session's lease (several replicas on PostgreSQL); None on
    SQLite, or while no replica holds it. A session another replica holds is shown as last
    stored (``state`` as of its last write; ``connected`` is false: its wrapper is connected
    to its owner, not to the replica answering)."""


class SessionDetail(SessionSummary, kw_only=True, omit_defaults=True):
    messages: list[Message]
    timers: dict[str, float]
    restart_budget_left: int | None
    now: float
    wrapper: WrapperAccess | None = None


class MessageAccepted(msgspec.Struct):
    id: str
    state: str


class SessionStopping(msgspec.Struct):
    id: str
    state: str


class Accepted(msgspec.Struct):
    ok: bool


class Health(msgspec.Struct):
    ok: bool
    sessions: int
