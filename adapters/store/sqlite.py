"""The embedded store: one SQLite file in WAL mode holding sessions, messages and event logs.

Theory of operation
-------------------
The control plane keeps every session's live state in memory (its ``SessionCore``) and writes it
here so that a restarted control plane can rebuild each session machine and re-arm its timers from
the stored deadlines. Three tables, one job each:

* ``sessions`` — identity (token, agent session, user, workdir), the machine's state name and its
  msgspec-JSON ``Snapshot`` (which carries the timer deadlines), the connected wrapper's id and the
  last ingest sequence number acknowledged. Deleting is soft: the row stays, marked ``deleted``,
  so its event log can still be read and audited.
* ``messages`` — one row per prompt with its state and outcome, rewritten (upserted) as it moves.
* ``events`` — the append-only log a client replays with ``Last-Event-ID``. Ids are per session and
  strictly increasing; the store refuses a batch that would break that, because a client that has
  seen id 7 would never be shown a 5 written later.

Why synchronous ``sqlite3``: each call is a handful of indexed statements on a local file (well
under a millisecond in WAL mode with ``synchronous=NORMAL``), so the control plane calls it straight
from its event loop; a worker thread would cost more than the call. WAL lets a second connection
(another process, or a future read replica of the API) read committed rows while this one writes.
``synchronous=NORMAL`` in WAL mode never corrupts the file; a power cut may lose the last few
commits, which the wrapper's outbox resends because they were not acknowledged yet.

Every write runs in one ``BEGIN IMMEDIATE`` transaction, so its checks (does the session exist, are
the event ids in order) and its writes see the same database, even with another writer present.
The schema's constraints and triggers repeat the important rules so that no other writer (the
``sqlite3`` shell, a future tool) can break them either.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from fsm.session_core import Message

__all__ = [
    "SCHEMA_VERSION",
    "DuplicateEventError",
    "EventOrderError",
    "EventRow",
    "MessageRow",
    "SchemaTooNewError",
    "SessionExistsError",
    "SessionNotFoundError",
    "SessionRow",
    "SqliteStore",
    "StoreError",
]


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


# -- rows -----------------------------------------------------------------------------------------


class SessionRow(msgspec.Struct, kw_only=True):
    """One session as stored. Mutable: the control plane keeps it as its in-memory copy."""

    id: str
    token: str
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
        # The token is a credential: a row that ends up in a log or a traceback must not leak it.
        return (
            f"SessionRow(id={self.id!r}, token='***', agent_session={self.agent_session!r}, "
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


# -- schema ---------------------------------------------------------------------------------------

# Each entry migrates from version N to N+1; never edit an entry once released, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            agent_session TEXT NOT NULL,
            user_id TEXT NOT NULL,
            workdir TEXT NOT NULL,
            state TEXT NOT NULL,
            snapshot BLOB NOT NULL DEFAULT x'',
            wrapper_id TEXT,
            last_seq INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
        )
        """,
        """
        CREATE TABLE messages (
            session_id TEXT NOT NULL REFERENCES sessions (id),
            id TEXT NOT NULL,
            prompt TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            finished_at REAL,
            options TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(options)),
            PRIMARY KEY (session_id, id)
        )
        """,
        # WITHOUT ROWID: rows are stored in (session_id, id) order, so a Last-Event-ID replay is
        # one range scan of the primary key.
        """
        CREATE TABLE events (
            session_id TEXT NOT NULL REFERENCES sessions (id),
            id INTEGER NOT NULL CHECK (id > 0),
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            data TEXT NOT NULL CHECK (json_valid(data)),
            PRIMARY KEY (session_id, id)
        ) WITHOUT ROWID
        """,
        """
        CREATE TRIGGER events_ids_increase BEFORE INSERT ON events
        WHEN NEW.id <= (SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = NEW.session_id)
        BEGIN
            SELECT RAISE(ABORT, 'event ids must strictly increase within a session');
        END
        """,
        """
        CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN
            SELECT RAISE(ABORT, 'the event log is append-only: rows cannot be updated');
        END
        """,
        """
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN
            SELECT RAISE(ABORT, 'the event log is append-only: rows cannot be deleted');
        END
        """,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_SESSION_COLUMNS = (
    "id, token, agent_session, user_id, workdir, state, snapshot, wrapper_id, last_seq, "
    "created_at, updated_at, deleted"
)
_MESSAGE_COLUMNS = "id, prompt, state, reason, error, created_at, finished_at, options"


def _session(row: tuple[Any, ...]) -> SessionRow:
    return SessionRow(
        id=row[0],
        token=row[1],
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


def _json_text(data: bytes, what: str) -> str:
    # JSON columns are TEXT so that the sqlite3 shell and json_extract() read them as they are.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"{what}: JSON must be UTF-8 ({exc})") from exc


def _is_json(data: bytes) -> bool:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return False
    return True


# -- the store ------------------------------------------------------------------------------------


class SqliteStore:
    """Sessions, messages and event logs in one SQLite file (created and migrated on open)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        """Open (creating if needed) the store at ``path``.

        ``busy_timeout`` is how long a write waits for another connection's write to finish before
        failing with "database is locked".
        """
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._batch_depth = 0
        self._savepoints = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for the store {self.path}: {exc}") from exc
        try:
            # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE.
            db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the store {self.path}: {exc}; check the path and its permissions"
            ) from exc
        try:
            self._configure(db)
            self._db = db
            self._migrate()
        except BaseException:
            self._db = None
            db.close()
            raise

    def _configure(self, db: sqlite3.Connection) -> None:
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the store {self.path}: {exc}; is it an fsm-agent SQLite file?"
            ) from exc
        if str(mode).lower() != "wal":
            raise StoreError(
                f"the store {self.path} could not switch to WAL mode (journal mode is {mode!r}); "
                "put it on a local file system"
            )

    def _migrate(self) -> None:
        with self._transaction("migrate the schema") as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            found = db.execute("SELECT version FROM schema_version").fetchone()
            current = 0 if found is None else int(found[0])
            if current > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"the store {self.path} has schema version {current}, newer than the "
                    f"{SCHEMA_VERSION} this fsm-agent knows; upgrade fsm-agent or use another file"
                )
            for statements in MIGRATIONS[current:]:
                for statement in statements:
                    db.execute(statement)
            if found is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # -- plumbing ---------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._db

    @contextmanager
    def batch(self, what: str = "write a batch") -> Iterator[None]:
        """Run several writes in one transaction (one commit, one WAL sync).

        Each write inside keeps its own atomicity (a savepoint): one that fails is rolled back
        alone and raises, the others still commit when the batch ends. A host that flushes many
        sessions at once pays for one commit instead of one per session.
        """
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            return
        with self._transaction(what):
            self._batch_depth = 1
            try:
                yield
            finally:
                self._batch_depth = 0

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; any failure rolls all of it back and names ``what`` failed."""
        db = self._connection()
        if self._batch_depth:
            with self._savepoint(db, what):
                yield db
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"could not {what} in {self.path}: {exc}") from exc

    @contextmanager
    def _savepoint(self, db: sqlite3.Connection, what: str) -> Iterator[None]:
        self._savepoints += 1
        name = f"w{self._savepoints}"
        try:
            db.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                db.execute(f"ROLLBACK TO {name}")
                db.execute(f"RELEASE {name}")
                raise
            db.execute(f"RELEASE {name}")
        except sqlite3.Error as exc:
            raise StoreError(f"could not {what} in {self.path}: {exc}") from exc

    def _query(self, what: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        db = self._connection()
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"could not {what} in {self.path}: {exc}") from exc

    def _require_session(self, db: sqlite3.Connection, session_id: str, what: str) -> None:
        if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
            raise SessionNotFoundError(
                f"could not {what}: no session {session_id!r} in {self.path} (create_session first)"
            )

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise ``StoreError``."""
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sessions ---------------------------------------------------------------------------------

    def create_session(self, row: SessionRow) -> None:
        """Insert a new session; its id must never have been used (deleted ones included)."""
        what = f"create session {row.id!r}"
        with self._transaction(what) as db:
            if db.execute("SELECT 1 FROM sessions WHERE id = ?", (row.id,)).fetchone():
                raise SessionExistsError(
                    f"could not {what}: the id is already taken in {self.path} "
                    "(ids of deleted sessions are kept with their events)"
                )
            db.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.id,
                    row.token,
                    row.agent_session,
                    row.user_id,
                    row.workdir,
                    row.state,
                    row.snapshot,
                    row.wrapper_id,
                    row.last_seq,
                    row.created_at,
                    row.updated_at,
                    int(row.deleted),
                ),
            )

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
        """Write the session machine's current state, snapshot (timer deadlines) and link state."""
        what = f"save session {id!r}"
        with self._transaction(what) as db:
            cursor = db.execute(
                "UPDATE sessions SET state = ?, snapshot = ?, wrapper_id = ?, last_seq = ?, "
                "updated_at = ? WHERE id = ?",
                (state, snapshot, wrapper_id, last_seq, updated_at, id),
            )
            if cursor.rowcount == 0:
                raise SessionNotFoundError(
                    f"could not {what}: no session with that id in {self.path} "
                    "(create_session first)"
                )

    def get_session(self, id: str, *, include_deleted: bool = False) -> SessionRow | None:
        """The session, or None if unknown (or deleted, unless ``include_deleted``)."""
        rows = self._query(
            f"read session {id!r}",
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ? AND (deleted = 0 OR ?)",
            (id, include_deleted),
        )
        return _session(rows[0]) if rows else None

    def list_sessions(self, include_deleted: bool = False) -> list[SessionRow]:
        """All sessions, oldest first."""
        rows = self._query(
            "list sessions",
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE deleted = 0 OR ? "
            "ORDER BY created_at, id",
            (include_deleted,),
        )
        return [_session(row) for row in rows]

    def delete_session(self, id: str) -> None:
        """Mark the session deleted; its messages and events stay readable (idempotent)."""
        what = f"delete session {id!r}"
        with self._transaction(what) as db:
            cursor = db.execute("UPDATE sessions SET deleted = 1 WHERE id = ?", (id,))
            if cursor.rowcount == 0:
                raise SessionNotFoundError(
                    f"could not {what}: no session with that id in {self.path}"
                )

    # -- messages ---------------------------------------------------------------------------------

    def save_message(self, session_id: str, row: MessageRow) -> None:
        """Insert the message or replace every field of the stored one (same session and id)."""
        what = f"save message {row.id!r} of session {session_id!r}"
        options = _json_text(row.options, f"could not {what}: options")
        with self._transaction(what) as db:
            self._require_session(db, session_id, what)
            db.execute(
                f"INSERT INTO messages (session_id, {_MESSAGE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (session_id, id) DO UPDATE SET prompt = excluded.prompt, "
                "state = excluded.state, reason = excluded.reason, error = excluded.error, "
                "created_at = excluded.created_at, finished_at = excluded.finished_at, "
                "options = excluded.options",
                (
                    session_id,
                    row.id,
                    row.prompt,
                    row.state,
                    row.reason,
                    row.error,
                    row.created_at,
                    row.finished_at,
                    options,
                ),
            )

    def messages(self, session_id: str) -> list[MessageRow]:
        """The session's messages in the order they were first saved (empty if none/unknown)."""
        rows = self._query(
            f"read the messages of session {session_id!r}",
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? "
            "ORDER BY created_at, rowid",
            (session_id,),
        )
        return [
            MessageRow(
                id=r[0],
                prompt=r[1],
                state=r[2],
                reason=r[3],
                error=r[4],
                created_at=r[5],
                finished_at=r[6],
                options=r[7].encode("utf-8"),
            )
            for r in rows
        ]

    # -- events -----------------------------------------------------------------------------------

    def append_events(self, session_id: str, rows: Sequence[EventRow]) -> None:
        """Append a batch to the session's log: all of it, or (on any error) none of it.

        Ids must be strictly increasing within the batch and after the last stored id. A
        ``DuplicateEventError`` (a subclass of ``EventOrderError``) means an id is already stored
        or repeated in the batch — e.g. a batch appended twice.
        """
        if not rows:
            return
        what = f"append {len(rows)} event{'s' * (len(rows) != 1)} to session {session_id!r}"
        params = [
            (session_id, r.id, r.at, r.kind, _json_text(r.data, f"could not {what}: event {r.id}"))
            for r in rows
        ]
        with self._transaction(what) as db:
            self._require_session(db, session_id, what)
            last = self._last_event_id(db, session_id)
            previous = last
            for index, row in enumerate(rows):
                if row.id <= previous:
                    raise self._order_error(db, session_id, what, rows, index, last)
                previous = row.id
            try:
                db.executemany(
                    "INSERT INTO events (session_id, id, at, kind, data) VALUES (?, ?, ?, ?, ?)",
                    params,
                )
            except sqlite3.IntegrityError as exc:
                bad = [r.id for r in rows if not _is_json(r.data)]
                if bad:
                    raise StoreError(
                        f"could not {what}: data of event {bad[0]} is not valid JSON; "
                        "nothing of the batch was written"
                    ) from exc
                raise

    def _order_error(
        self,
        db: sqlite3.Connection,
        session_id: str,
        what: str,
        rows: Sequence[EventRow],
        index: int,
        last: int,
    ) -> EventOrderError:
        event_id = rows[index].id
        tail = "; nothing of the batch was written"
        if event_id <= 0:
            return EventOrderError(
                f"could not {what}: event id {event_id} < 1 (ids start at 1){tail}"
            )
        if index > 0 and rows[index - 1].id == event_id:
            return DuplicateEventError(f"could not {what}: event id {event_id} appears twice{tail}")
        if index > 0 and event_id < rows[index - 1].id:
            return EventOrderError(
                f"could not {what}: event id {event_id} comes after {rows[index - 1].id} "
                f"in the batch; ids must strictly increase{tail}"
            )
        stored = db.execute(
            "SELECT 1 FROM events WHERE session_id = ? AND id = ?", (session_id, event_id)
        ).fetchone()
        if stored:
            return DuplicateEventError(
                f"could not {what}: event id {event_id} is already stored "
                f"(last stored id is {last}){tail}"
            )
        return EventOrderError(
            f"could not {what}: event id {event_id} is not after the last stored id {last}; "
            f"the log is append-only{tail}"
        )

    @staticmethod
    def _last_event_id(db: sqlite3.Connection, session_id: str) -> int:
        row = db.execute(
            "SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = ?", (session_id,)
        ).fetchone()
        return int(row[0])

    def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        """Up to ``limit`` events with id > ``after``, by id — the ``Last-Event-ID`` resume."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        rows = self._query(
            f"read the events of session {session_id!r} after {after}",
            "SELECT id, at, kind, data FROM events WHERE session_id = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (session_id, after, limit),
        )
        return [EventRow(r[0], r[1], r[2], r[3].encode("utf-8")) for r in rows]

    def last_event_id(self, session_id: str) -> int:
        """The highest stored event id of the session; 0 when it has none."""
        rows = self._query(
            f"read the last event id of session {session_id!r}",
            "SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = ?",
            (session_id,),
        )
        return int(rows[0][0])
