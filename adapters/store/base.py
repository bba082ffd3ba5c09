"""The store port: what the control host asks of its durable store, whichever database holds it.

``SqliteStore`` (one file, the embedded default) and ``PostgresStore`` (a server several
replicas share) both satisfy ``Store``; ``tests/adapters/store/test_store_contract.py`` runs one
suite against both so that they cannot drift. The rows and errors are ``rows.py``'s.

The contract, for every method: it raises a ``StoreError`` subclass or nothing (``ValueError``
for a bad ``after``/``limit`` of ``events()``, which the API checks first). ``InvalidValueError``
means the value can never be stored (retrying is pointless); ``StoreUnavailableError`` means the
database could not do it now (nothing of that write is stored; the same write may succeed
later); ``BatchAbortedError`` means the whole ``batch`` is gone, so nothing of it may be
acknowledged.

Synchronous on purpose: the host calls the store from its event loop in one ``batch`` per flush
period; see each adapter's docstring for why that is cheap enough there.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from adapters.store.rows import EventRow, MessageRow, SessionRow

__all__ = ["Store"]


class Store(Protocol):
    """Sessions with their machine snapshots, messages and per-session event logs."""

    # -- sessions ---------------------------------------------------------------------------------

    def create_session(self, row: SessionRow) -> None:
        """Insert a new session; its id must never have been used (``SessionExistsError``)."""
        ...

    def save_session(
        self,
        id: str,
        *,
        state: str,
        snapshot: bytes,
        wrapper_id: str | None,
        last_seq: int,
        updated_at: float,
    ) -> None:
        """Write the machine's state, snapshot (which carries the timer deadlines) and link."""
        ...

    def set_token_hash(self, session_id: str, token_hash: str) -> None:
        """Store ``hash_token(token)`` of the session's next wrapper; refuses a plain token."""
        ...

    def get_session(self, id: str, *, include_deleted: bool = False) -> SessionRow | None:
        """The session, or None if unknown (or deleted, unless ``include_deleted``)."""
        ...

    def list_sessions(self, include_deleted: bool = False) -> list[SessionRow]:
        """All sessions, oldest first."""
        ...

    def delete_session(self, id: str) -> None:
        """Mark the session deleted (idempotent); its messages and events stay readable."""
        ...

    # -- messages ---------------------------------------------------------------------------------

    def save_message(self, session_id: str, row: MessageRow) -> None:
        """Insert the message or replace every field of the stored one."""
        ...

    def messages(self, session_id: str) -> list[MessageRow]:
        """The session's messages in the order they were first saved."""
        ...

    # -- events -----------------------------------------------------------------------------------

    def append_events(self, session_id: str, rows: Sequence[EventRow]) -> None:
        """Append all of the batch or none of it; ids strictly increase within the session."""
        ...

    def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        """Up to ``limit`` events with id > ``after``, by id (the ``Last-Event-ID`` resume)."""
        ...

    def last_event_id(self, session_id: str) -> int:
        """The highest stored event id of the session; 0 when it has none."""
        ...

    # -- transactions -----------------------------------------------------------------------------

    def batch(self, what: str = "write a batch") -> AbstractContextManager[None]:
        """Many writes in one transaction; each write inside still atomic on its own."""
        ...

    def savepoint(self, name: str = "write a session") -> AbstractContextManager[None]:
        """Writes stored all together or not at all (inside a batch: undone alone)."""
        ...

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connection (idempotent); later calls raise ``StoreError``."""
        ...
