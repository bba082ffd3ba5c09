"""What both stores share: the row types, the errors, the token hash and the bounds.

One declaration for the SQLite store (``sqlite.py``), the PostgreSQL store (``postgres.py``), the
simulator's in-memory store and the control host: a row or an error means the same whichever
database holds it, so the host cannot tell them apart (the store port, ``base.py``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from fsm.control.core import Message

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_EVENTS_PAGE",
    "BatchAbortedError",
    "DuplicateEventError",
    "EventOrderError",
    "EventRow",
    "InvalidValueError",
    "LeaseLostError",
    "MessageRow",
    "SchemaTooNewError",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionRow",
    "StoreError",
    "StoreUnavailableError",
    "hash_token",
    "token_matches",
]


INT64_MAX = 2**63 - 1
"""The largest integer either database stores (SQLite INTEGER, PostgreSQL bigint); binding a
larger Python int raises ``OverflowError`` in sqlite3 and a numeric-vs-bigint error in psycopg."""
INT64_MIN = -(2**63)
MAX_EVENTS_PAGE = 10_000
"""The most events one ``events()`` call returns: a page, not the whole log, stays in memory."""


# -- errors ---------------------------------------------------------------------------------------


class StoreError(Exception):
    """The store could not do what it was asked; the message names the operation and the file."""


class SessionNotFoundError(StoreError, LookupError):
    """A write named a session id the store has never seen."""


class SessionExistsError(StoreError):
    """``create_session`` with an id that is already taken (deleted sessions keep their id)."""


class EventOrderError(StoreError):
    """An event batch would break the per-session strictly increasing id order."""


class DuplicateEventError(EventOrderError):
    """An event id is already stored, or appears twice in the batch."""


class SchemaTooNewError(StoreError):
    """The file was written by a newer fsm-agent whose schema this one does not know."""


class InvalidValueError(StoreError, ValueError):
    """A write was given a value the store cannot hold: out of the 64-bit integer range, a
    string without a UTF-8 form (a lone surrogate), bytes that are not UTF-8 JSON, a non-finite
    time, a wrong type, a token hash that is not one. Nothing of that write was stored; the same
    value will fail again, so retrying it is pointless. Also a ``ValueError``, because that is
    what it is to a caller that does not know the store."""


class StoreUnavailableError(StoreError):
    """The database could not do the work for a reason outside the values given. SQLite: the disk
    is full, the file is locked by another writer for longer than ``busy_timeout``, read-only, or
    failing (``sqlite3.OperationalError``). PostgreSQL: the server is unreachable, restarting or
    shutting down, the connection broke, a serialization failure or deadlock. Nothing of the
    failed write is stored; the same write may succeed later (the PostgreSQL store reconnects on
    its next call)."""


class BatchAbortedError(StoreError):
    """The database rolled back the whole batch's transaction (SQLite does so on a full disk; the
    PostgreSQL batch is gone with its connection): nothing written in the batch so far is stored,
    later writes in it are refused and the batch's end raises this too. ``__cause__`` is the
    error that made the database give up."""


class LeaseLostError(StoreError):
    """A replica wrote to a session whose lease it no longer holds (it expired, or another
    replica claimed it): the write is refused whole, so two replicas never both act for one
    session. The replica must stop acting for the session; retrying is pointless until it
    claims the lease again."""


# -- tokens ---------------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """The hex SHA-256 of a wrapper token: what the store keeps instead of the token.

    A fast unsalted hash is right here because the tokens are 256-bit random values
    (``secrets.token_urlsafe(32)``): nobody can guess one from its hash, so a slow password hash
    (bcrypt, scrypt, argon2) would only add latency to every wrapper connection. An HMAC with a
    secret key would not help either: the key would have to be stored somewhere the control plane
    reads, next to this file, so whoever can read the file can read the key. What the hash buys:
    a copy of the database (a backup, a support bundle) does not let anyone act as a wrapper.

    Never raises: a string with lone surrogates (which no minted token has) is hashed through
    ``surrogatepass``, so it simply matches nothing.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    """Whether ``token`` is the one whose hash is stored, in constant time."""
    return hmac.compare_digest(hash_token(token), token_hash)


# -- rows -----------------------------------------------------------------------------------------


class SessionRow(msgspec.Struct, kw_only=True):
    """One session as stored. Mutable: the control plane keeps it as its in-memory copy."""

    id: str
    token_hash: str
    """``hash_token(token)`` of the connected wrapper's token; the token itself is never stored."""
    agent_session: str
    user_id: str
    workdir: str
    state: str
    snapshot: bytes = b""
    """msgspec JSON of the session machine's ``Snapshot``; empty until the first save."""
    wrapper_id: str | None = None
    last_seq: int = 0
    created_at: float
    updated_at: float
    deleted: bool = False

    def __repr__(self) -> str:
        # The hash cannot be used as a token, but it is a credential's fingerprint: a row that
        # ends up in a log or a traceback does not need to carry it.
        return (
            f"SessionRow(id={self.id!r}, token_hash='***', agent_session={self.agent_session!r}, "
            f"user_id={self.user_id!r}, workdir={self.workdir!r}, state={self.state!r}, "
            f"snapshot=<{len(self.snapshot)} bytes>, wrapper_id={self.wrapper_id!r}, "
            f"last_seq={self.last_seq}, created_at={self.created_at}, "
            f"updated_at={self.updated_at}, deleted={self.deleted})"
        )


class MessageRow(msgspec.Struct, frozen=True, kw_only=True):
    """One message (prompt) of a session with its state and, once terminal, its outcome."""

    id: str
    prompt: str
    state: str
    reason: str = ""
    error: str = ""
    created_at: float
    finished_at: float | None = None
    options: bytes = b"{}"
    """JSON object of the per-execution settings (model, variant, …)."""

    @classmethod
    def of(cls, message: Message) -> MessageRow:
        """The row that stores a session machine's message as it is now."""
        return cls(
            id=message.id,
            prompt=message.prompt,
            state=message.state,
            reason=message.reason,
            error=message.error,
            created_at=message.created_at,
            finished_at=message.finished_at,
            options=msgspec.json.encode(message.options),
        )


class EventRow(msgspec.Struct, frozen=True):
    """One entry of a session's event log; ``data`` is a JSON document."""

    id: int
    at: float
    kind: str
    data: bytes


# -- columns: one order, read by both stores --------------------------------------------------

SESSION_COLUMNS = (
    "id, token_hash, agent_session, user_id, workdir, state, snapshot, wrapper_id, last_seq, "
    "created_at, updated_at, deleted"
)
"""The sessions table's columns in the order ``session_row`` reads them."""
MESSAGE_COLUMNS = ("id", "prompt", "state", "reason", "error", "created_at", "finished_at")
"""The messages table's columns before ``options`` (each store selects that as text its way)."""


def session_row(row: Sequence[Any]) -> SessionRow:
    """A ``SESSION_COLUMNS`` row as a ``SessionRow``."""
    return SessionRow(
        id=row[0],
        token_hash=row[1],
        agent_session=row[2],
        user_id=row[3],
        workdir=row[4],
        state=row[5],
        snapshot=bytes(row[6]),
        wrapper_id=row[7],
        last_seq=row[8],
        created_at=row[9],
        updated_at=row[10],
        deleted=bool(row[11]),
    )


def message_row(row: Sequence[Any]) -> MessageRow:
    """A ``MESSAGE_COLUMNS`` + options-as-text row as a ``MessageRow``."""
    return MessageRow(
        id=row[0],
        prompt=row[1],
        state=row[2],
        reason=row[3],
        error=row[4],
        created_at=row[5],
        finished_at=row[6],
        options=row[7].encode("utf-8"),
    )


def event_row(row: Sequence[Any]) -> EventRow:
    return EventRow(row[0], row[1], row[2], row[3].encode("utf-8"))
