"""The embedded store: one SQLite file in WAL mode holding sessions, messages and event logs.

Theory of operation
-------------------
The control plane keeps every session's live state in memory (its ``SessionCore``) and writes it
here so that a restarted control plane can rebuild each session machine and re-arm its timers from
the stored deadlines. Three tables, one job each:

* ``sessions`` — identity (the SHA-256 of the wrapper's token, agent session, user, workdir), the
  machine's state name and its msgspec-JSON ``Snapshot`` (which carries the timer deadlines), the
  connected wrapper's id and the last ingest sequence number acknowledged. Deleting is soft: the
  row stays, marked ``deleted``, so its event log can still be read and audited.
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

Hostile values
--------------
What the store writes comes, in the end, from wrappers and API clients. A value SQLite cannot
hold (an integer beyond its signed 64 bits, a string with a lone surrogate that has no UTF-8 form,
bytes that are not UTF-8 JSON, a wrong type) once raised ``OverflowError`` or
``UnicodeEncodeError`` out of a write and stopped the control plane's flush loop, which only
expected ``StoreError``. So every write checks its values first and names the operation, the
session and the field it refuses (``InvalidValueError``), and whatever still escapes a write or a
read — a ``sqlite3`` error or any other exception — comes out as a ``StoreError`` subclass. The
contract: a store call raises a ``StoreError`` or nothing (``ValueError`` for a bad argument of
``events()``, which the API checks first).

Batches and savepoints
----------------------
``batch()`` runs many writes in one transaction (one commit, one WAL sync). ``savepoint(name)``
inside it groups one session's writes: if one of them raises, exactly that group is rolled back and
the error propagates, while the batch stays usable and the others' writes commit at its end. When
SQLite itself rolls the whole transaction back (it does so on "database or disk is full"), nothing
of the batch survives: that write, every later one in the batch and the batch's end raise
``BatchAbortedError``, so that nobody acknowledges data that was lost.

Files at rest
-------------
The file holds prompts, event logs and token hashes: it, its ``-wal`` and ``-shm`` files are mode
0600 and the folders the store creates 0700, whatever the umask. The store creates the file itself
(``os.open`` with 0600, then ``fchmod``, since the umask filters the mode of ``open``); SQLite
creates ``-wal`` and ``-shm`` with the mode of the database file (its unix VFS copies it and
``fchmod``s a new file, also umask-free). A file found with group or other bits is set to 0600 with
a logged warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sqlite3
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from adapters.store.checks import check_blob as _check_blob
from adapters.store.checks import check_int as _check_int
from adapters.store.checks import check_text as _check_text
from adapters.store.checks import check_time as _check_time
from adapters.store.checks import check_token_hash as _check_token_hash
from adapters.store.checks import event_order_error
from adapters.store.checks import invalid as _invalid
from adapters.store.checks import json_text as _json_text
from adapters.store.checks import quote as _quote
from adapters.store.checks import show_int as _show_int
from adapters.store.rows import (
    INT64_MAX,
    INT64_MIN,
    MAX_EVENTS_PAGE,
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    BatchAbortedError,
    DuplicateEventError,
    EventOrderError,
    EventRow,
    InvalidValueError,
    LeaseLostError,
    MessageRow,
    SchemaTooNewError,
    SessionExistsError,
    SessionNotFoundError,
    SessionRow,
    StoreError,
    StoreUnavailableError,
    event_row,
    hash_token,
    message_row,
    session_row,
    token_matches,
)

# The row types and errors live in rows.py (shared with the PostgreSQL store); they are
# re-exported here so that every ``from adapters.store.sqlite import ...`` keeps working.
__all__ = [
    "MAX_EVENTS_PAGE",
    "SCHEMA_VERSION",
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
    "SqliteStore",
    "StoreError",
    "StoreUnavailableError",
    "hash_token",
    "token_matches",
]

log = logging.getLogger("fsm_agent.store")


def _sql_sha256(value: str | bytes | int | float | None) -> str | None:
    # fsm_sha256() for migration 2: the same digest as hash_token() for a TEXT token.
    if value is None:
        return None
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    return hash_token(str(value))


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
    # 2: tokens at rest become their SHA-256 (see hash_token). fsm_sha256() is a Python function
    # the store registers on its connection; SQLite has no SHA-256 of its own. The triggers keep
    # any writer from storing something that is not such a hash — a plain token, most likely.
    (
        "ALTER TABLE sessions RENAME COLUMN token TO token_hash",
        "UPDATE sessions SET token_hash = fsm_sha256(token_hash)",
        """
        CREATE TRIGGER sessions_token_hash_on_insert BEFORE INSERT ON sessions
        WHEN typeof(NEW.token_hash) != 'text' OR length(NEW.token_hash) != 64
            OR NEW.token_hash GLOB '*[^0-9a-f]*'
        BEGIN
            SELECT RAISE(ABORT, 'token_hash must be the hex SHA-256 of the token, never the token');
        END
        """,
        """
        CREATE TRIGGER sessions_token_hash_on_update BEFORE UPDATE OF token_hash ON sessions
        WHEN typeof(NEW.token_hash) != 'text' OR length(NEW.token_hash) != 64
            OR NEW.token_hash GLOB '*[^0-9a-f]*'
        BEGIN
            SELECT RAISE(ABORT, 'token_hash must be the hex SHA-256 of the token, never the token');
        END
        """,
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_SESSION_COLUMNS = SESSION_COLUMNS
_MESSAGE_COLUMNS = ", ".join((*MESSAGE_COLUMNS, "options"))
_SQLITE_HEADER = b"SQLite format 3\x00"


# -- the store ------------------------------------------------------------------------------------


class SqliteStore:
    """Sessions, messages and event logs in one SQLite file (created and migrated on open)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        """Open (creating if needed) the store at ``path``.

        ``busy_timeout`` is how long a write waits for another connection's write to finish before
        failing with "database is locked".

        Missing folders are created 0700 and a new file 0600 (see "Files at rest" above).
        """
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._batch_depth = 0
        self._batch_what = ""
        # Why SQLite rolled back the current batch's transaction; None while it is alive.
        self._aborted: str | None = None
        self._savepoints = 0
        self._make_folders(self.path.parent)
        self._make_file()
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
            # SQLite made -wal and -shm with the file's mode; say so loudly if it ever does not.
            for suffix in ("-wal", "-shm"):
                self._tighten(Path(f"{self.path}{suffix}"))
        except BaseException:
            self._db = None
            db.close()
            raise

    # -- files ------------------------------------------------------------------------------------

    def _make_folders(self, folder: Path) -> None:
        """Create the missing folders of ``folder`` 0700; existing ones are not the store's."""
        missing: list[Path] = []
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        for new in reversed(missing):
            try:
                os.mkdir(new, 0o700)
                os.chmod(new, 0o700)  # mkdir's mode went through the umask
            except FileExistsError:
                continue  # made meanwhile by someone else: theirs, not ours to change
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder for the store {self.path}: {exc}"
                ) from exc

    def _make_file(self) -> None:
        """Create the database file 0600 before SQLite opens it, or tighten the existing one."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            self._tighten(self.path)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store {self.path}: {exc}; check the path and its permissions"
            ) from exc
        else:
            try:
                os.fchmod(fd, 0o600)  # open's mode went through the umask too
            finally:
                os.close(fd)
        # Left by a control plane that stopped without closing (a clean close deletes them).
        for suffix in ("-wal", "-shm"):
            self._tighten(Path(f"{self.path}{suffix}"))

    def _tighten(self, path: Path) -> None:
        """Set an existing store file that others may read to 0600, with a warning."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot check the mode of the store file {path}: {exc}") from exc
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode) or not mode & 0o077:
            return
        if path == self.path and info.st_size and not self._is_sqlite(path):
            return  # not a database at all: SQLite refuses it below, and it is not ours to chmod
        log.warning(
            "the store file %s had mode %04o, readable by other users; setting it to 0600",
            path,
            mode,
        )
        try:
            os.chmod(path, 0o600)
        except OSError as exc:
            raise StoreError(
                f"the store file {path} has mode {mode:04o} (others may read it) and cannot be "
                f"made 0600: {exc}; chmod 600 it, or run the control plane as its owner"
            ) from exc

    @staticmethod
    def _is_sqlite(path: Path) -> bool:
        try:
            with open(path, "rb") as file:
                return file.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
        except OSError:
            return False

    # -- schema -----------------------------------------------------------------------------------

    def _configure(self, db: sqlite3.Connection) -> None:
        try:
            db.create_function("fsm_sha256", 1, _sql_sha256, deterministic=True)
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
        """Bring the file to ``SCHEMA_VERSION``, all in one transaction.

        Migration 2 overwrites plain tokens with their hashes. So that no copy of a token stays
        in the file, ``secure_delete`` zeroes the bytes SQLite frees while migrating, and a
        ``TRUNCATE`` checkpoint right after moves the new pages into the database file (which
        still holds the old ones until then) and empties the WAL.
        """
        what = "migrate the schema"
        db = self._connection()
        try:
            secure = int(db.execute("PRAGMA secure_delete").fetchone()[0])
            db.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc
        try:
            with self._write(what) as db:
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                found = db.execute("SELECT version FROM schema_version").fetchone()
                current = 0 if found is None else int(found[0])
                if current > SCHEMA_VERSION:
                    raise SchemaTooNewError(
                        f"the store {self.path} has schema version {current}, newer than the "
                        f"{SCHEMA_VERSION} this fsm-agent knows; upgrade fsm-agent or use "
                        "another file"
                    )
                for statements in MIGRATIONS[current:]:
                    for statement in statements:
                        db.execute(statement)
                if found is None:
                    db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif current != SCHEMA_VERSION:
                    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            if 1 <= current < 2:
                busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if busy:
                    log.warning(
                        "the store %s hashed its stored tokens, but another connection kept the "
                        "checkpoint from completing: the plain tokens stay in the file until the "
                        "next checkpoint",
                        self.path,
                    )
            db.execute(f"PRAGMA secure_delete={secure}")
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc

    # -- plumbing ---------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store {self.path} is closed")
        return self._db

    def _error(self, exc: BaseException, what: str) -> StoreError:
        """The ``StoreError`` to raise for ``exc``, which a read or write of ``what`` raised."""
        if isinstance(exc, StoreError):
            return exc
        where = f"could not {what} in {self.path}"
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailableError(f"{where}: {exc}")
        if isinstance(
            exc,
            sqlite3.IntegrityError
            | sqlite3.DataError
            | sqlite3.InterfaceError
            | sqlite3.ProgrammingError
            | OverflowError
            | ValueError
            | TypeError,
        ):
            # Reached only by what the checks above did not foresee; they name the field.
            return InvalidValueError(f"{where}: SQLite cannot take a value it was given ({exc})")
        return StoreError(f"{where}: {type(exc).__name__}: {exc}")

    def _rollback(self, db: sqlite3.Connection) -> None:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                # The error being raised matters more; SQLite ends the transaction regardless.
                log.exception("rolling back a store transaction failed in %s", self.path)

    @contextmanager
    def _begin(self, db: sqlite3.Connection, what: str) -> Iterator[None]:
        """One transaction: commits when the block ends, rolls back when it raises."""
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc
        try:
            yield
        except BaseException:
            self._rollback(db)
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(db)
            raise self._error(exc, what) from exc

    @contextmanager
    def _nested(self, db: sqlite3.Connection, what: str) -> Iterator[None]:
        """A savepoint inside the batch: a failure inside undoes only what was written inside."""
        self._check_alive(what)
        self._savepoints += 1
        name = f"fsm_sp{self._savepoints}"  # ours, never the caller's text: no SQL injection
        try:
            db.execute(f"SAVEPOINT {name}")
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, BatchAbortedError):
                raise  # said already, by the write inside that found the batch gone
            if not db.in_transaction:
                # SQLite rolled back the whole transaction (e.g. SQLITE_FULL): the writes of
                # the others in this batch are gone too, and the caller must hear it.
                self._aborted = f"SQLite rolled back the whole batch while it tried to {what}"
                if isinstance(exc, Exception):
                    raise BatchAbortedError(
                        f"could not {what} in {self.path}: {exc}; SQLite rolled back the "
                        f"whole batch ({self._batch_what}), so nothing of it was written"
                    ) from exc
                raise
            try:
                db.execute(f"ROLLBACK TO {name}")
                db.execute(f"RELEASE {name}")
            except sqlite3.Error as rollback:
                self._aborted = f"undoing a failed write to {what} failed ({rollback})"
                self._rollback(db)
                raise BatchAbortedError(
                    f"could not {what} in {self.path}: {exc}; undoing it failed ({rollback}), "
                    f"so the whole batch ({self._batch_what}) was rolled back"
                ) from exc
            raise
        self._check_alive(what)
        try:
            db.execute(f"RELEASE {name}")
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc

    def _check_alive(self, what: str) -> None:
        if self._aborted is not None:
            raise BatchAbortedError(
                f"could not {what} in {self.path}: {self._aborted}; this batch "
                f"({self._batch_what}) is void, nothing of it is written"
            )

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write: its own transaction, or a savepoint of the batch it is in.

        Anything the block raises comes out as a ``StoreError`` naming ``what``; a write that
        fails inside a batch is undone alone (see ``savepoint``).
        """
        db = self._connection()
        scope = self._nested(db, what) if self._batch_depth else self._begin(db, what)
        with scope:
            try:
                yield db
            except StoreError:
                raise
            except Exception as exc:
                raise self._error(exc, what) from exc

    @contextmanager
    def batch(self, what: str = "write a batch") -> Iterator[None]:
        """Run several writes in one transaction (one commit, one WAL sync).

        Each write inside keeps its own atomicity (a savepoint): one that fails is rolled back
        alone and raises, the others still commit when the batch ends. A host that flushes many
        sessions at once pays for one commit instead of one per session; it groups each session's
        writes in a ``savepoint`` so that a session whose second write fails keeps none.

        An exception escaping the block rolls all of it back and propagates unchanged. The end of
        the batch can raise too: ``StoreUnavailableError`` when the commit fails (a full disk),
        ``BatchAbortedError`` when SQLite rolled the transaction back during the batch. Either way
        nothing of the batch is stored, so nothing of it may be acknowledged.
        """
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            return
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc
        self._batch_depth, self._batch_what, self._aborted = 1, what, None
        try:
            try:
                yield
            except BaseException:
                self._rollback(db)
                raise
            if self._aborted is not None:
                self._rollback(db)
                raise BatchAbortedError(
                    f"could not {what} in {self.path}: {self._aborted}; nothing of the batch "
                    "was written"
                )
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(db)
                raise self._error(exc, what) from exc
        finally:
            self._batch_depth, self._batch_what, self._aborted = 0, "", None

    @contextmanager
    def savepoint(self, name: str = "write a session") -> Iterator[None]:
        """Group writes so that they are stored all together or not at all.

        Inside a ``batch``: when anything in the block raises, exactly the writes made in it are
        rolled back (``ROLLBACK TO SAVEPOINT``) and the exception propagates — a store write's as
        the ``StoreError`` it raised, anything else unchanged — while the batch stays usable and
        the writes made outside the block still commit at its end. This is how a host that
        flushes every dirty session in one batch keeps one session's bad frame from costing the
        others theirs::

            with store.batch("flush"):
                for sid in dirty:
                    try:
                        with store.savepoint(f"store session {sid}"):
                            store.append_events(sid, rows)
                            store.save_session(sid, ...)
                    except StoreError as exc:
                        log.error(...)  # sid's writes are gone, the others' are not

        Outside a batch it is a transaction of its own, committed when the block ends. ``name``
        only goes into error messages (the SQL savepoint's name is the store's own).
        Raises ``BatchAbortedError`` if SQLite rolled back the whole batch (see ``batch``).
        """
        if not self._batch_depth:
            with self.batch(name):
                yield
            return
        with self._nested(self._connection(), name):
            yield

    def _query(self, what: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        db = self._connection()
        try:
            return db.execute(sql, params).fetchall()
        except Exception as exc:
            raise self._error(exc, what) from exc

    def _require_session(self, db: sqlite3.Connection, session_id: str, what: str) -> None:
        if db.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
            raise SessionNotFoundError(
                f"could not {what}: no session {_quote(session_id)} in {self.path} "
                "(create_session first)"
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
        what = f"create session {_quote(row.id)}"
        _check_text(what, "id", row.id)
        _check_token_hash(what, row.token_hash)
        for field in ("agent_session", "user_id", "workdir", "state"):
            _check_text(what, field, getattr(row, field))
        _check_blob(what, "snapshot", row.snapshot)
        _check_text(what, "wrapper_id", row.wrapper_id, optional=True)
        _check_int(what, "last_seq", row.last_seq, 0, INT64_MAX)
        _check_time(what, "created_at", row.created_at)
        _check_time(what, "updated_at", row.updated_at)
        if not isinstance(row.deleted, bool):
            raise _invalid(what, "deleted", f"must be a bool, not {type(row.deleted).__name__}")
        with self._write(what) as db:
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
                    row.token_hash,
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
        what = f"save session {_quote(id)}"
        _check_text(what, "id", id)
        _check_text(what, "state", state)
        _check_blob(what, "snapshot", snapshot)
        _check_text(what, "wrapper_id", wrapper_id, optional=True)
        _check_int(what, "last_seq", last_seq, 0, INT64_MAX)
        _check_time(what, "updated_at", updated_at)
        with self._write(what) as db:
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

    def set_token_hash(self, session_id: str, token_hash: str) -> None:
        """Store ``hash_token(token)`` of a token just minted for the session's next wrapper.

        The old token stops matching at once. Refuses anything that is not 64 hex digits, so a
        caller that passes the token itself by mistake gets an error, not a plain token on disk.
        """
        what = f"set the token hash of session {_quote(session_id)}"
        _check_text(what, "session_id", session_id)
        _check_token_hash(what, token_hash)
        with self._write(what) as db:
            cursor = db.execute(
                "UPDATE sessions SET token_hash = ? WHERE id = ?", (token_hash, session_id)
            )
            if cursor.rowcount == 0:
                raise SessionNotFoundError(
                    f"could not {what}: no session with that id in {self.path} "
                    "(create_session first)"
                )

    def get_session(self, id: str, *, include_deleted: bool = False) -> SessionRow | None:
        """The session, or None if unknown (or deleted, unless ``include_deleted``)."""
        rows = self._query(
            f"read session {_quote(id)}",
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ? AND (deleted = 0 OR ?)",
            (id, include_deleted),
        )
        return session_row(rows[0]) if rows else None

    def list_sessions(self, include_deleted: bool = False) -> list[SessionRow]:
        """All sessions, oldest first."""
        rows = self._query(
            "list sessions",
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE deleted = 0 OR ? "
            "ORDER BY created_at, id",
            (include_deleted,),
        )
        return [session_row(row) for row in rows]

    def delete_session(self, id: str) -> None:
        """Mark the session deleted; its messages and events stay readable (idempotent)."""
        what = f"delete session {_quote(id)}"
        _check_text(what, "id", id)
        with self._write(what) as db:
            cursor = db.execute("UPDATE sessions SET deleted = 1 WHERE id = ?", (id,))
            if cursor.rowcount == 0:
                raise SessionNotFoundError(
                    f"could not {what}: no session with that id in {self.path}"
                )

    # -- messages ---------------------------------------------------------------------------------

    def save_message(self, session_id: str, row: MessageRow) -> None:
        """Insert the message or replace every field of the stored one (same session and id)."""
        what = f"save message {_quote(row.id)} of session {_quote(session_id)}"
        _check_text(what, "session_id", session_id)
        for field in ("id", "prompt", "state", "reason", "error"):
            _check_text(what, field, getattr(row, field))
        _check_time(what, "created_at", row.created_at)
        _check_time(what, "finished_at", row.finished_at, optional=True)
        options = _json_text(what, "options", row.options)
        with self._write(what) as db:
            self._require_session(db, session_id, what)
            try:
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
            except sqlite3.IntegrityError as exc:
                if not db.execute("SELECT json_valid(?)", (options,)).fetchone()[0]:
                    raise _invalid(what, "options", f"is not valid JSON ({exc})") from exc
                raise

    def messages(self, session_id: str) -> list[MessageRow]:
        """The session's messages in the order they were first saved (empty if none/unknown)."""
        rows = self._query(
            f"read the messages of session {_quote(session_id)}",
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = ? "
            "ORDER BY created_at, rowid",
            (session_id,),
        )
        return [message_row(r) for r in rows]

    # -- events -----------------------------------------------------------------------------------

    def append_events(self, session_id: str, rows: Sequence[EventRow]) -> None:
        """Append a batch to the session's log: all of it, or (on any error) none of it.

        Ids must be strictly increasing within the batch and after the last stored id. A
        ``DuplicateEventError`` (a subclass of ``EventOrderError``) means an id is already stored
        or repeated in the batch — e.g. a batch appended twice.
        """
        if not rows:
            return
        count = f"{len(rows)} event{'s' * (len(rows) != 1)}"
        what = f"append {count} to session {_quote(session_id)}"
        _check_text(what, "session_id", session_id)
        params = []
        for index, r in enumerate(rows):
            if not (  # the usual row, checked inline: this loop runs for every event stored
                type(r.id) is int
                and INT64_MIN <= r.id <= INT64_MAX
                and type(r.at) is float
                and math.isfinite(r.at)
                and type(r.kind) is str
                and r.kind.isascii()
                and type(r.data) is bytes
            ):
                # Which event: its index, since its id may be the bad value.
                event = f"event #{index + 1} of the batch:"
                _check_int(what, f"{event} id", r.id, INT64_MIN, INT64_MAX)
                _check_time(what, f"{event} at", r.at)
                _check_text(what, f"{event} kind", r.kind)
            params.append(
                (session_id, r.id, r.at, r.kind, _json_text(what, f"event {r.id} data", r.data))
            )
        with self._write(what) as db:
            self._require_session(db, session_id, what)
            last = self._last_event_id(db, session_id)
            previous = last
            for index, row in enumerate(rows):
                if row.id <= previous:
                    raise event_order_error(
                        what,
                        [r.id for r in rows],
                        index,
                        last,
                        lambda event_id: (
                            db.execute(
                                "SELECT 1 FROM events WHERE session_id = ? AND id = ?",
                                (session_id, event_id),
                            ).fetchone()
                            is not None
                        ),
                    )
                previous = row.id
            try:
                db.executemany(
                    "INSERT INTO events (session_id, id, at, kind, data) VALUES (?, ?, ?, ?, ?)",
                    params,
                )
            except sqlite3.IntegrityError as exc:
                for row, param in zip(rows, params, strict=True):
                    if not db.execute("SELECT json_valid(?)", (param[4],)).fetchone()[0]:
                        raise InvalidValueError(
                            f"could not {what}: data of event {row.id} is not valid JSON; "
                            "nothing of the batch was written"
                        ) from exc
                raise

    @staticmethod
    def _last_event_id(db: sqlite3.Connection, session_id: str) -> int:
        row = db.execute(
            "SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = ?", (session_id,)
        ).fetchone()
        return int(row[0])

    def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        """Up to ``limit`` events with id > ``after``, by id — the ``Last-Event-ID`` resume.

        ``after`` must be 0..2**63-1 (an id SQLite can compare with) and ``limit``
        1..``MAX_EVENTS_PAGE``; anything else is a ``ValueError`` naming the argument. The API
        checks first; the store checks again because a value it cannot bind would raise
        ``OverflowError`` from inside sqlite3.
        """
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= INT64_MAX:
            shown = _show_int(after) if isinstance(after, int) else repr(after)
            raise ValueError(f"after must be an event id from 0 to 2**63 - 1, got {shown}")
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_EVENTS_PAGE
        ):
            shown = _show_int(limit) if isinstance(limit, int) else repr(limit)
            raise ValueError(f"limit must be from 1 to {MAX_EVENTS_PAGE}, got {shown}")
        rows = self._query(
            f"read the events of session {_quote(session_id)} after {after}",
            "SELECT id, at, kind, data FROM events WHERE session_id = ? AND id > ? "
            "ORDER BY id LIMIT ?",
            (session_id, after, limit),
        )
        return [event_row(r) for r in rows]

    def last_event_id(self, session_id: str) -> int:
        """The highest stored event id of the session; 0 when it has none."""
        rows = self._query(
            f"read the last event id of session {_quote(session_id)}",
            "SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = ?",
            (session_id,),
        )
        return int(rows[0][0])
