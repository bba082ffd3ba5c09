"""An in-memory store with the SQLite store's interface and its refusals.

The control plane's durable state is written through the same calls as ``SqliteStore`` (the same
row types, the same errors), so a simulated control plane that would write its event log out of
order, or a message to a session that does not exist, fails here exactly as it would on disk —
the simulator's "events of one session are delivered in order" invariant rests on this check.
Nothing is persisted: the simulator's runs are many and short.
"""

from __future__ import annotations

from collections.abc import Sequence

from adapters.store.sqlite import (
    DuplicateEventError,
    EventOrderError,
    EventRow,
    MessageRow,
    SessionExistsError,
    SessionNotFoundError,
    SessionRow,
)


class MemoryStore:
    def __init__(self) -> None:
        self._sessions: dict[str, SessionRow] = {}
        self._messages: dict[str, dict[str, MessageRow]] = {}
        self._events: dict[str, list[EventRow]] = {}

    # -- sessions ---------------------------------------------------------------------------

    def create_session(self, row: SessionRow) -> None:
        if row.id in self._sessions:
            raise SessionExistsError(f"could not create session {row.id!r}: the id is taken")
        self._sessions[row.id] = row
        self._messages[row.id] = {}
        self._events[row.id] = []

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
        row = self._require(id, f"save session {id!r}")
        row.state = state
        row.snapshot = snapshot
        row.wrapper_id = wrapper_id
        row.last_seq = last_seq
        row.updated_at = updated_at

    def get_session(self, id: str, *, include_deleted: bool = False) -> SessionRow | None:
        row = self._sessions.get(id)
        if row is None or (row.deleted and not include_deleted):
            return None
        return row

    def list_sessions(self, include_deleted: bool = False) -> list[SessionRow]:
        rows = [r for r in self._sessions.values() if include_deleted or not r.deleted]
        return sorted(rows, key=lambda r: (r.created_at, r.id))

    def delete_session(self, id: str) -> None:
        self._require(id, f"delete session {id!r}").deleted = True

    # -- messages ---------------------------------------------------------------------------

    def save_message(self, session_id: str, row: MessageRow) -> None:
        self._require(session_id, f"save message {row.id!r} of session {session_id!r}")
        self._messages[session_id][row.id] = row

    def messages(self, session_id: str) -> list[MessageRow]:
        return list(self._messages.get(session_id, {}).values())

    # -- events -----------------------------------------------------------------------------

    def append_events(self, session_id: str, rows: Sequence[EventRow]) -> None:
        what = f"append {len(rows)} events to session {session_id!r}"
        self._require(session_id, what)
        log = self._events[session_id]
        previous = log[-1].id if log else 0
        for row in rows:
            if row.id <= previous:
                kind = DuplicateEventError if row.id == previous else EventOrderError
                raise kind(
                    f"could not {what}: event id {row.id} is not after {previous}; "
                    "nothing of the batch was written"
                )
            previous = row.id
        log.extend(rows)

    def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        return [r for r in self._events.get(session_id, []) if r.id > after][:limit]

    def last_event_id(self, session_id: str) -> int:
        log = self._events.get(session_id, [])
        return log[-1].id if log else 0

    def _require(self, session_id: str, what: str) -> SessionRow:
        row = self._sessions.get(session_id)
        if row is None:
            raise SessionNotFoundError(f"could not {what}: no session with that id")
        return row
