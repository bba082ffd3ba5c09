"""The shared store: sessions, messages and event logs on a PostgreSQL server, for replicas.

Theory of operation
-------------------
The same store port as ``SqliteStore`` (``base.Store``): the same methods, rows, errors and
refusals, proved by one contract suite run against both (tests/adapters/store/). The tables are
SQLite's — ``sessions`` (identity, token hash, the machine's state and msgspec-JSON ``Snapshot``,
which carries the timer deadlines, soft delete), ``messages`` (upserted as a prompt moves) and
``events`` (the append-only log, ids per session strictly increasing: the store checks in the
transaction, after locking the session row so that two writers of one session serialize, and a
trigger repeats the rule for any other writer) — plus ``leases`` (see ``leases.py``), which only
several replicas need. Times are ``double precision`` seconds, as the rows carry them. JSON
columns are ``json``, not ``jsonb``: PostgreSQL checks that they are JSON and keeps the bytes as
given, so an event reads back exactly as it was appended (``Last-Event-ID`` clients compare).

Why synchronous psycopg 3: the control host calls its store synchronously from its event loop,
one ``batch`` per flush period (every dirty session's writes in one transaction), and the SQLite
store has the same shape. A synchronous connection keeps one code path for both stores and one
contract; on a database on the same host or LAN a flush is a few round trips (each write of a
batch is a savepoint, its statements prepared after first use, an event batch one ``INSERT …
unnest``). Round trips are most of a replica's store CPU (psycopg's per-statement cost), so a
session write of the host's flush — a ``savepoint`` block of append_events + save_session — is
5 statements: the block's SAVEPOINT, the fence and the session row in one statement, the
INSERT, the UPDATE, RELEASE. Writes inside the caller's ``savepoint`` run bare, without
savepoints of their own: the block's undoes them, and a write that fails rolls back to it at
once, voiding the block (``_bare``). The async API would buy overlap of those round trips
with other work of the loop; a replica host that needs it can run the store's calls in one
worker thread (``anyio.to_thread.run_sync`` with a limiter of 1): a psycopg connection is
thread-safe and the store keeps its state on one connection, so that wrapping needs no change
here.

Connection loss: any call that finds the server gone (restarted, shut down, the network cut)
raises ``StoreUnavailableError`` and drops the connection; the next call connects again. Nothing
of a failed write is stored (its transaction dies with the connection), so the host's "retry
what was not acknowledged" loses nothing. Inside a ``batch`` the loss voids the whole batch
(``BatchAbortedError`` from then on and at its end), as SQLite's full-disk rollback does.

Schema versions: ``schema_version`` holds one row; ``MIGRATIONS[n]`` takes version n to n+1.
A newer fsm-agent upgrades on open, in one transaction under an advisory lock (two replicas
starting together migrate once); an older one refuses a newer schema (``SchemaTooNewError``).

Fencing: given ``replica``, every write for a session first checks that this replica holds the
session's unexpired lease (``LeaseLostError`` otherwise) and holds the lease row until it
commits; ``create_session`` takes the new session's lease. Inside the caller's ``savepoint``
block the check is made once per session, by its first write (``_fence_due``): the row it locks
keeps every other replica from claiming the lease until the block commits. Without
``replica`` (one control plane on PostgreSQL) writes are not fenced and leases are not used.

Hostile values: the checks SQLite's store runs (``checks.py``), plus a NUL character in text,
which PostgreSQL text cannot hold (SQLite can: the one refusal that differs, and the contract
suite says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, LiteralString, NoReturn

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from adapters.store import leases as lease_sql
from adapters.store.checks import (
    check_blob,
    check_int,
    check_text,
    check_time,
    check_token_hash,
    event_order_error,
    invalid,
    json_text,
    quote,
    show_int,
)
from adapters.store.leases import Lease, lease_of
from adapters.store.rows import (
    INT64_MAX,
    INT64_MIN,
    MAX_EVENTS_PAGE,
    MESSAGE_COLUMNS,
    SESSION_COLUMNS,
    BatchAbortedError,
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
    message_row,
    session_row,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger("fsm_agent.store")

# -- schema ---------------------------------------------------------------------------------------

# Each entry migrates from version N to N+1; never edit an entry once released, append a new one.
MIGRATIONS: tuple[tuple[LiteralString, ...], ...] = (
    (
        r"""
        CREATE TABLE sessions (
            id text PRIMARY KEY,
            token_hash text NOT NULL CONSTRAINT token_hash_is_a_hash_never_the_token
                CHECK (token_hash ~ '^[0-9a-f]{64}$'),
            agent_session text NOT NULL,
            user_id text NOT NULL,
            workdir text NOT NULL,
            state text NOT NULL,
            snapshot bytea NOT NULL DEFAULT '\x',
            wrapper_id text,
            last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            deleted boolean NOT NULL DEFAULT false
        )
        """,
        # seq: the order messages were first saved (an upsert keeps it), as SQLite's rowid.
        """
        CREATE TABLE messages (
            session_id text NOT NULL REFERENCES sessions (id),
            id text NOT NULL,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            prompt text NOT NULL,
            state text NOT NULL,
            reason text NOT NULL DEFAULT '',
            error text NOT NULL DEFAULT '',
            created_at double precision NOT NULL,
            finished_at double precision,
            options json NOT NULL DEFAULT '{}',
            PRIMARY KEY (session_id, id)
        )
        """,
        """
        CREATE TABLE events (
            session_id text NOT NULL REFERENCES sessions (id),
            id bigint NOT NULL CHECK (id > 0),
            at double precision NOT NULL,
            kind text NOT NULL,
            data json NOT NULL,
            PRIMARY KEY (session_id, id)
        )
        """,
        """
        CREATE FUNCTION fsm_events_ids_increase() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id <= (SELECT COALESCE(MAX(id), 0) FROM events
                          WHERE session_id = NEW.session_id) THEN
                RAISE EXCEPTION 'event ids must strictly increase within a session'
                    USING ERRCODE = 'integrity_constraint_violation';
            END IF;
            RETURN NEW;
        END $$
        """,
        """
        CREATE TRIGGER events_ids_increase BEFORE INSERT ON events
        FOR EACH ROW EXECUTE FUNCTION fsm_events_ids_increase()
        """,
        """
        CREATE FUNCTION fsm_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the event log is append-only: rows cannot be %', lower(TG_OP)
                USING ERRCODE = 'integrity_constraint_violation';
        END $$
        """,
        """
        CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION fsm_events_append_only()
        """,
        """
        CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
        FOR EACH STATEMENT EXECUTE FUNCTION fsm_events_append_only()
        """,
    ),
    # 2: leases, for several replicas (leases.py); every existing session gets an unowned one.
    (
        """
        CREATE TABLE leases (
            session_id text PRIMARY KEY REFERENCES sessions (id),
            owner text,
            expires_at double precision NOT NULL DEFAULT 0,
            epoch bigint NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX leases_by_expiry ON leases (expires_at)",
        "INSERT INTO leases (session_id) SELECT id FROM sessions",
    ),
    # 3: a deleted session has no lease (delete_session drops it); drop those left by earlier
    # versions, which a replica renewed forever for a session it could not restore.
    (
        "DELETE FROM leases USING sessions "
        "WHERE sessions.id = leases.session_id AND sessions.deleted",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

_MIGRATION_LOCK = 0x46534D_5343  # pg_advisory_xact_lock key: "FSM" "SC"(hema)
_SESSION_COLUMNS = SESSION_COLUMNS
_MESSAGE_COLUMNS = ", ".join((*MESSAGE_COLUMNS, "options::text"))


def _text(what: str, field: str, value: object, *, optional: bool = False) -> None:
    check_text(what, field, value, optional=optional, nul=False)


def _json(what: str, field: str, data: object) -> str:
    text = json_text(what, field, data)
    if "\x00" in text:
        raise invalid(what, field, "is not valid JSON (a raw NUL character)")
    return text


class _Frame:
    """One open savepoint of the batch: its SQL name, what it is for, whether it is the
    caller's ``savepoint`` block (whose writes run bare in it), the sessions whose lease rows
    were fenced inside it (locked until the batch ends unless it is rolled back), and why it
    is void (a bare write in it failed and it was rolled back)."""

    __slots__ = ("caller", "fenced", "name", "void", "what")

    def __init__(self, name: sql.Identifier, what: str, caller: bool) -> None:
        self.name = name
        self.what = what
        self.caller = caller
        self.fenced: set[str] = set()
        self.void: str | None = None


def describe(dsn: str) -> str:
    """The database as messages name it: ``postgresql://user@host:port/db``, never a password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "the PostgreSQL database (an unreadable DSN)"
    user = parts.get("user")
    host = parts.get("host") or "localhost"
    port = parts.get("port") or "5432"
    db = parts.get("dbname") or user or ""
    return f"postgresql://{f'{user}@' if user else ''}{host}:{port}/{db}"


# -- the store ------------------------------------------------------------------------------------


class PostgresStore:
    """Sessions, messages, event logs and leases in one PostgreSQL database."""

    def __init__(
        self,
        dsn: str,
        *,
        replica: str | None = None,
        lease_ttl: float = 15.0,
        clock: Callable[[], float] | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        """Connect to ``dsn`` (a libpq conninfo or ``postgresql://`` URL) and migrate.

        ``replica``: this control plane's id among several; its writes are fenced by leases and
        ``create_session`` takes the new session's lease for ``lease_ttl`` seconds. ``clock``:
        the wall clock leases compare with (seconds since the epoch); None is the database's.
        Raises ``StoreUnavailableError`` if the server cannot be reached (retry later).
        """
        self.dsn = dsn
        self.where = describe(dsn)
        if replica is not None:
            _text("open the store", "replica", replica)
        self.replica = replica
        self.lease_ttl = float(lease_ttl)
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._db: psycopg.Connection[tuple[Any, ...]] | None = None
        self._closed = False
        self._batch_depth = 0
        self._batch_what = ""
        self._aborted: str | None = None
        self._savepoints = 0
        self._frames: list[_Frame] = []
        self._migrate()

    # -- connection -------------------------------------------------------------------------------

    def _connect(self, what: str) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            db = psycopg.connect(
                self.dsn,
                autocommit=True,  # every transaction is an explicit BEGIN, as in SQLite's store
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name=f"fsm-agent{f' {self.replica}' if self.replica else ''}",
            )
            if self.replica is not None:
                # A replica stopped (SIGSTOP, a VM paused) inside a transaction would keep its
                # lease rows locked FOR SHARE, and every other replica's claim skips locked rows:
                # its sessions could not be claimed until it resumed. The server ends such a
                # transaction once it has been idle a third of the lease, so the rows are free
                # by the time the lease has expired (its writes were fenced: nothing of it
                # commits). Set here, not in the DSN's options, which stay the operator's.
                idle_ms = max(500, round(self.lease_ttl * 1000 / 3))
                db.execute(
                    sql.SQL("SET idle_in_transaction_session_timeout = {}").format(
                        sql.Literal(idle_ms)
                    )
                )
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"could not {what}: cannot connect to {self.where}: {_first_line(exc)}"
            ) from exc
        return db

    def _connection(self, what: str) -> psycopg.Connection[tuple[Any, ...]]:
        """The live connection; a new one if the last was lost (never inside a batch)."""
        if self._closed:
            raise StoreError(f"the store {self.where} is closed")
        db = self._db
        if db is not None and not db.closed and not db.broken:
            return db
        if self._batch_depth:
            self._aborted = self._aborted or "the connection to the database was lost"
            self._check_alive(what)
        if db is not None:
            log.warning("the connection to %s was lost; connecting again", self.where)
            self._db = None
            db.close()
        self._db = self._connect(what)
        return self._db

    def _lost(self, db: psycopg.Connection[tuple[Any, ...]]) -> bool:
        return db.closed or db.broken

    # -- schema -----------------------------------------------------------------------------------

    def _migrate(self) -> None:
        what = "migrate the schema"
        with self._write(what) as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            found = db.execute("SELECT version FROM schema_version").fetchone()
            current = 0 if found is None else int(found[0])
            if current > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"the store {self.where} has schema version {current}, newer than the "
                    f"{SCHEMA_VERSION} this fsm-agent knows; upgrade fsm-agent (every replica) "
                    "or use another database"
                )
            for statements in MIGRATIONS[current:]:
                for statement in statements:
                    db.execute(statement)
            if found is None:
                db.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
                log.info(
                    "migrated the store %s from schema %d to %d",
                    self.where,
                    current,
                    SCHEMA_VERSION,
                )

    def schema_version(self) -> int:
        """The version the database is at (this store's ``SCHEMA_VERSION`` once open)."""
        rows = self._query("read the schema version", "SELECT version FROM schema_version", ())
        return int(rows[0][0])

    # -- plumbing ---------------------------------------------------------------------------------

    def _error(self, exc: BaseException, what: str) -> StoreError:
        """The ``StoreError`` to raise for ``exc``, which a read or write of ``what`` raised."""
        if isinstance(exc, StoreError):
            return exc
        where = f"could not {what} in {self.where}"
        db = self._db
        if isinstance(exc, psycopg.OperationalError) or (
            isinstance(exc, psycopg.InterfaceError) and (db is None or self._lost(db))
        ):
            return StoreUnavailableError(f"{where}: {_first_line(exc)}")
        if isinstance(
            exc,
            psycopg.IntegrityError
            | psycopg.DataError
            | psycopg.ProgrammingError
            | psycopg.InterfaceError
            | OverflowError
            | ValueError
            | TypeError,
        ):
            # Reached only by what the checks did not foresee; they name the field.
            return InvalidValueError(
                f"{where}: PostgreSQL cannot take a value it was given ({_first_line(exc)})"
            )
        return StoreError(f"{where}: {type(exc).__name__}: {_first_line(exc)}")

    def _rollback(self, db: psycopg.Connection[tuple[Any, ...]]) -> None:
        if self._lost(db) or db.info.transaction_status == TransactionStatus.IDLE:
            return
        try:
            db.execute("ROLLBACK")
        except psycopg.Error:
            # The error being raised matters more; a broken connection ends the transaction.
            log.exception("rolling back a store transaction failed in %s", self.where)

    @contextmanager
    def _begin(self, db: psycopg.Connection[tuple[Any, ...]], what: str) -> Iterator[None]:
        try:
            db.execute("BEGIN")
        except Exception as exc:
            raise self._error(exc, what) from exc
        try:
            yield
        except BaseException:
            self._rollback(db)
            raise
        try:
            db.execute("COMMIT")
        except Exception as exc:
            self._rollback(db)
            raise self._error(exc, what) from exc

    @contextmanager
    def _nested(
        self, db: psycopg.Connection[tuple[Any, ...]], what: str, *, caller: bool = False
    ) -> Iterator[None]:
        """A savepoint inside the batch: a failure inside undoes only what was written inside.

        ``caller``: the caller's ``savepoint`` block, whose writes run bare inside it (see
        ``_bare``); else a write's or read's own savepoint."""
        self._check_alive(what)
        if caller and self._frames and self._frames[-1].void is not None:
            outer = self._frames[-1]
            raise StoreError(
                f"could not {what} in {self.where}: an earlier write of {outer.what!r} failed "
                f"({outer.void}), so that block was rolled back and takes no more writes"
            )
        self._savepoints += 1
        name = sql.Identifier(f"fsm_sp{self._savepoints}")  # ours, never the caller's text
        try:
            db.execute(sql.SQL("SAVEPOINT {}").format(name))
        except Exception as exc:
            raise self._void_if_lost(db, what, exc) from exc
        frame = _Frame(name, what, caller)
        self._frames.append(frame)
        try:
            yield
        except BaseException as exc:
            self._frames.pop()
            if isinstance(exc, BatchAbortedError):
                raise
            if self._lost(db):
                self._aborted = f"the connection was lost while the batch tried to {what}"
                if isinstance(exc, Exception):
                    raise BatchAbortedError(
                        f"could not {what} in {self.where}: {exc}; the connection was lost, so "
                        f"the whole batch ({self._batch_what}) is gone and nothing of it was "
                        "written"
                    ) from exc
                raise
            try:
                db.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(name))
                db.execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))
            except psycopg.Error as rollback:
                self._aborted = f"undoing a failed write to {what} failed ({rollback})"
                self._rollback(db)
                raise BatchAbortedError(
                    f"could not {what} in {self.where}: {exc}; undoing it failed ({rollback}), "
                    f"so the whole batch ({self._batch_what}) was rolled back"
                ) from exc
            raise
        self._frames.pop()
        self._check_alive(what)
        try:
            if frame.void is not None:  # again: a savepoint opened in it since may have written
                db.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(name))
            db.execute(sql.SQL("RELEASE SAVEPOINT {}").format(name))
        except Exception as exc:
            raise self._void_if_lost(db, what, exc) from exc
        if frame.void is not None:
            # The caller caught a bare write's error and ended the block normally: what it
            # wrote before was undone with it, so the block is not stored, and must say so.
            raise StoreError(
                f"could not {what} in {self.where}: {frame.void}; the block was rolled back "
                "and nothing of it is stored"
            )

    @contextmanager
    def _bare(
        self, db: psycopg.Connection[tuple[Any, ...]], what: str, frame: _Frame
    ) -> Iterator[None]:
        """A write run bare inside the caller's ``savepoint`` block ``frame``, without a
        savepoint of its own: SAVEPOINT and RELEASE are two of a session write's round trips
        each, and the block's own savepoint already undoes what the write did. On a failure the
        store rolls back to the block's savepoint at once (so nothing the block wrote can
        commit, even if the caller catches the error) and the block is void: any later write in
        it raises, and so does its end."""
        self._check_alive(what)
        if frame.void is not None:
            raise StoreError(
                f"could not {what} in {self.where}: an earlier write of {frame.what!r} failed "
                f"({frame.void}), so that block was rolled back and takes no more writes"
            )
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, BatchAbortedError):
                raise
            if self._lost(db):
                self._aborted = f"the connection was lost while the batch tried to {what}"
                if isinstance(exc, Exception):
                    raise BatchAbortedError(
                        f"could not {what} in {self.where}: {exc}; the connection was lost, so "
                        f"the whole batch ({self._batch_what}) is gone and nothing of it was "
                        "written"
                    ) from exc
                raise
            frame.void = _first_line(exc) or type(exc).__name__
            frame.fenced.clear()  # rolling back to the savepoint frees the rows locked since
            try:
                db.execute(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(frame.name))
            except psycopg.Error as rollback:
                self._aborted = f"undoing a failed write to {what} failed ({rollback})"
                self._rollback(db)
                raise BatchAbortedError(
                    f"could not {what} in {self.where}: {exc}; undoing it failed ({rollback}), "
                    f"so the whole batch ({self._batch_what}) was rolled back"
                ) from exc
            raise

    def _void_if_lost(
        self, db: psycopg.Connection[tuple[Any, ...]], what: str, exc: Exception
    ) -> StoreError:
        """The error for a savepoint statement that failed: the batch is void if the
        connection went with it."""
        if not self._lost(db):
            return self._error(exc, what)
        self._aborted = f"the connection was lost while the batch tried to {what}"
        return BatchAbortedError(
            f"could not {what} in {self.where}: {_first_line(exc)}; the connection was lost, so "
            f"the whole batch ({self._batch_what}) is gone and nothing of it was written"
        )

    def _check_alive(self, what: str) -> None:
        if self._aborted is not None:
            raise BatchAbortedError(
                f"could not {what} in {self.where}: {self._aborted}; this batch "
                f"({self._batch_what}) is void, nothing of it is written"
            )

    @contextmanager
    def _write(
        self, what: str, fence: str | None = None, *, inline: bool = False
    ) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        """One write: its own transaction, or a savepoint of the batch it is in, or bare in the
        caller's ``savepoint`` block (``_bare``). ``fence``: the session whose lease this
        replica must hold for the write to go in; ``inline``: the write checks it in its own
        first statement (``_fence_due``, ``_judge_lease``) rather than in a SELECT of its own."""
        db = self._connection(what)
        frame = self._frames[-1] if self._frames else None
        scope: AbstractContextManager[None]
        if frame is not None and frame.caller:
            scope = self._bare(db, what, frame)
        elif self._batch_depth:
            scope = self._nested(db, what)
        else:
            scope = self._begin(db, what)
        if fence is None:
            self._forget_fences()  # a write that may move leases: fence every session again
        with scope:
            try:
                if fence is not None and not inline and self._fence_due(fence):
                    self._fence(db, fence, what)
                    self._fenced(fence)
                yield db
            except StoreError:
                raise
            except Exception as exc:
                raise self._error(exc, what) from exc

    def _fence_due(self, session_id: str) -> bool:
        """Whether a write for the session must check its lease: always for a replica, except
        once per session per caller's ``savepoint`` block (one session write of the host's
        flush). The first fenced write in the block checks the lease and takes its row ``FOR
        SHARE``, held until the batch ends, so no other replica can claim the lease before the
        block commits (a claim takes the row ``FOR UPDATE``, skipping locked ones) and the
        block's later writes for the session are covered by that check, as a write's later
        statements are by its own. A write that is not fenced (it may release, claim or delete
        a lease) makes the block check again (``_forget_fences``); a failed write voids the
        block, and its rollback frees the row (``_bare``)."""
        if self.replica is None:
            return False
        frame = self._frames[-1] if self._frames else None
        return frame is None or not frame.caller or session_id not in frame.fenced

    def _fenced(self, session_id: str) -> None:
        """The session's lease was checked and its row locked: ``_fence_due`` says so until the
        caller's block ends (nothing to record outside one)."""
        frame = self._frames[-1] if self._frames else None
        if frame is not None and frame.caller:
            frame.fenced.add(session_id)

    def _forget_fences(self) -> None:
        for frame in self._frames:
            frame.fenced.clear()

    def _fence(self, db: psycopg.Connection[tuple[Any, ...]], session_id: str, what: str) -> None:
        row = db.execute(lease_sql.FENCE, {"id": session_id, "now": self._now()}).fetchone()
        if row is None:
            self._require_session(db, session_id, what)
            self._no_lease(what)
        owner, expires_at, now = row
        self._judge_lease(owner, expires_at, now, what)

    def _no_lease(self, what: str) -> NoReturn:
        raise LeaseLostError(
            f"could not {what}: replica {self.replica!r} holds no lease on it in {self.where}"
        )

    def _judge_lease(self, owner: object, expires_at: float, now: float, what: str) -> None:
        """Refuse the write unless the lease row read says this replica holds it unexpired."""
        if owner != self.replica:
            holder = f"replica {owner!r}" if owner else "nobody (released)"
            raise LeaseLostError(
                f"could not {what}: its lease is held by {holder}, not by replica "
                f"{self.replica!r}; this replica must stop acting for the session"
            )
        if expires_at <= now:
            raise LeaseLostError(
                f"could not {what}: the lease of replica {self.replica!r} expired "
                f"{now - expires_at:.3f} s ago; this replica must stop acting for the session"
            )

    def _now(self) -> float | None:
        return None if self._clock is None else float(self._clock())

    @contextmanager
    def batch(self, what: str = "write a batch") -> Iterator[None]:
        """Run several writes in one transaction (one commit).

        As ``SqliteStore.batch``: each write inside keeps its own atomicity (a savepoint), an
        exception escaping the block rolls all of it back, and the end raises
        ``StoreUnavailableError`` (the commit failed) or ``BatchAbortedError`` (the connection
        was lost during the batch): either way nothing of the batch is stored.
        """
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1
            return
        db = self._connection(what)
        try:
            db.execute("BEGIN")
        except Exception as exc:
            raise self._error(exc, what) from exc
        self._batch_depth, self._batch_what, self._aborted = 1, what, None
        self._frames = []
        try:
            try:
                yield
            except BaseException:
                self._rollback(db)
                raise
            if self._aborted is not None:
                self._rollback(db)
                raise BatchAbortedError(
                    f"could not {what} in {self.where}: {self._aborted}; nothing of the batch "
                    "was written"
                )
            try:
                db.execute("COMMIT")
            except Exception as exc:
                self._rollback(db)
                raise self._error(exc, what) from exc
        finally:
            self._batch_depth, self._batch_what, self._aborted = 0, "", None
            self._frames = []

    @contextmanager
    def savepoint(self, name: str = "write a session") -> Iterator[None]:
        """Group writes so that they are stored all together or not at all (see
        ``SqliteStore.savepoint``: inside a batch, a failure undoes exactly this block)."""
        if not self._batch_depth:
            with self.batch(name):
                yield
            return
        with self._nested(self._connection(name), name, caller=True):
            yield

    def _query(self, what: str, query: LiteralString, params: Any) -> list[tuple[Any, ...]]:
        db = self._connection(what)
        try:
            if self._batch_depth:  # a failed read must not abort the batch's transaction
                with self._nested(db, what):
                    return db.execute(query, params).fetchall()
            return db.execute(query, params).fetchall()
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(exc, what) from exc

    def _require_session(
        self, db: psycopg.Connection[tuple[Any, ...]], session_id: str, what: str
    ) -> None:
        query: LiteralString = "SELECT 1 FROM sessions WHERE id = %s"
        if db.execute(query, (session_id,)).fetchone() is None:
            raise SessionNotFoundError(
                f"could not {what}: no session {quote(session_id)} in {self.where} "
                "(create_session first)"
            )

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise ``StoreError``."""
        self._closed = True
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def __enter__(self) -> PostgresStore:
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
        """Insert a new session; its id must never have been used (deleted ones included).
        A replica takes the new session's lease in the same transaction."""
        what = f"create session {quote(row.id)}"
        _text(what, "id", row.id)
        check_token_hash(what, row.token_hash)
        for field in ("agent_session", "user_id", "workdir", "state"):
            _text(what, field, getattr(row, field))
        check_blob(what, "snapshot", row.snapshot)
        _text(what, "wrapper_id", row.wrapper_id, optional=True)
        check_int(what, "last_seq", row.last_seq, 0, INT64_MAX)
        check_time(what, "created_at", row.created_at)
        check_time(what, "updated_at", row.updated_at)
        if not isinstance(row.deleted, bool):
            raise invalid(what, "deleted", f"must be a bool, not {type(row.deleted).__name__}")
        with self._write(what) as db:
            inserted = db.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING RETURNING 1",
                (
                    row.id,
                    row.token_hash,
                    row.agent_session,
                    row.user_id,
                    row.workdir,
                    row.state,
                    bytes(row.snapshot),
                    row.wrapper_id,
                    row.last_seq,
                    float(row.created_at),
                    float(row.updated_at),
                    row.deleted,
                ),
            ).fetchone()
            if inserted is None:
                raise SessionExistsError(
                    f"could not {what}: the id is already taken in {self.where} "
                    "(ids of deleted sessions are kept with their events)"
                )
            if row.deleted:
                pass  # a deleted session has no lease (delete_session)
            elif self.replica is None:
                db.execute("INSERT INTO leases (session_id) VALUES (%s)", (row.id,))
            else:
                db.execute(
                    "INSERT INTO leases (session_id, owner, expires_at, epoch) "
                    f"VALUES (%(id)s, %(owner)s, {lease_sql.NOW} + %(ttl)s, 1)",
                    {
                        "id": row.id,
                        "owner": self.replica,
                        "now": self._now(),
                        "ttl": self.lease_ttl,
                    },
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
        what = f"save session {quote(id)}"
        _text(what, "id", id)
        _text(what, "state", state)
        check_blob(what, "snapshot", snapshot)
        _text(what, "wrapper_id", wrapper_id, optional=True)
        check_int(what, "last_seq", last_seq, 0, INT64_MAX)
        check_time(what, "updated_at", updated_at)
        with self._write(what, fence=id) as db:
            cursor = db.execute(
                "UPDATE sessions SET state = %s, snapshot = %s, wrapper_id = %s, last_seq = %s, "
                "updated_at = %s WHERE id = %s",
                (state, bytes(snapshot), wrapper_id, last_seq, float(updated_at), id),
            )
            if cursor.rowcount == 0:
                raise SessionNotFoundError(
                    f"could not {what}: no session with that id in {self.where} "
                    "(create_session first)"
                )

    def set_token_hash(self, session_id: str, token_hash: str) -> None:
        """Store ``hash_token(token)`` of a token just minted for the session's next wrapper."""
        what = f"set the token hash of session {quote(session_id)}"
        _text(what, "session_id", session_id)
        check_token_hash(what, token_hash)
        with self._write(what, fence=session_id) as db:
            cursor = db.execute(
                "UPDATE sessions SET token_hash = %s WHERE id = %s", (token_hash, session_id)
            )
            if cursor.rowcount == 0:
                raise SessionNotFoundError(
                    f"could not {what}: no session with that id in {self.where} "
                    "(create_session first)"
                )

    def get_session(self, id: str, *, include_deleted: bool = False) -> SessionRow | None:
        """The session, or None if unknown (or deleted, unless ``include_deleted``)."""
        what = f"read session {quote(id)}"
        _text(what, "id", id)
        rows = self._query(
            what,
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = %s AND (NOT deleted OR %s)",
            (id, bool(include_deleted)),
        )
        return session_row(rows[0]) if rows else None

    def list_sessions(self, include_deleted: bool = False) -> list[SessionRow]:
        """All sessions, oldest first."""
        rows = self._query(
            "list sessions",
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE NOT deleted OR %s "
            "ORDER BY created_at, id",
            (bool(include_deleted),),
        )
        return [session_row(row) for row in rows]

    def delete_session(self, id: str) -> None:
        """Mark the session deleted and drop its lease, in one transaction; its messages and
        events stay readable (idempotent). Without the drop, the replica holding the lease
        would renew it forever for a session nobody can restore, and ``GET /sessions`` would
        show an owner for it. Deleting again is a no-op, not a fenced write: the lease it
        would check is gone."""
        what = f"delete session {quote(id)}"
        _text(what, "id", id)
        with self._write(what) as db:
            found = db.execute("SELECT deleted FROM sessions WHERE id = %s", (id,)).fetchone()
            if found is None:
                raise SessionNotFoundError(
                    f"could not {what}: no session with that id in {self.where}"
                )
            if found[0]:
                return
            if self.replica is not None:
                self._fence(db, id, what)  # lease row FOR SHARE first, as every fenced write
            db.execute("UPDATE sessions SET deleted = true WHERE id = %s", (id,))
            db.execute("DELETE FROM leases WHERE session_id = %s", (id,))

    # -- messages ---------------------------------------------------------------------------------

    def save_message(self, session_id: str, row: MessageRow) -> None:
        """Insert the message or replace every field of the stored one (same session and id)."""
        what = f"save message {quote(row.id)} of session {quote(session_id)}"
        _text(what, "session_id", session_id)
        for field in ("id", "prompt", "state", "reason", "error"):
            _text(what, field, getattr(row, field))
        check_time(what, "created_at", row.created_at)
        check_time(what, "finished_at", row.finished_at, optional=True)
        options = _json(what, "options", row.options)
        with self._write(what, fence=session_id) as db:
            self._require_session(db, session_id, what)
            try:  # a failure voids this write's transaction or savepoint: _write undoes it
                db.execute(
                    "INSERT INTO messages (session_id, id, prompt, state, reason, error, "
                    "created_at, finished_at, options) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::json) "
                    "ON CONFLICT (session_id, id) DO UPDATE SET prompt = excluded.prompt, "
                    "state = excluded.state, reason = excluded.reason, "
                    "error = excluded.error, created_at = excluded.created_at, "
                    "finished_at = excluded.finished_at, options = excluded.options",
                    (
                        session_id,
                        row.id,
                        row.prompt,
                        row.state,
                        row.reason,
                        row.error,
                        float(row.created_at),
                        None if row.finished_at is None else float(row.finished_at),
                        options,
                    ),
                )
            except psycopg.DataError as exc:
                raise invalid(what, "options", f"is not valid JSON ({_first_line(exc)})") from exc

    def messages(self, session_id: str) -> list[MessageRow]:
        """The session's messages in the order they were first saved (empty if none/unknown)."""
        what = f"read the messages of session {quote(session_id)}"
        _text(what, "session_id", session_id)
        rows = self._query(
            what,
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session_id = %s "
            "ORDER BY created_at, seq",
            (session_id,),
        )
        return [message_row(r) for r in rows]

    # -- events -----------------------------------------------------------------------------------

    def append_events(self, session_id: str, rows: Sequence[EventRow]) -> None:
        """Append a batch to the session's log: all of it, or (on any error) none of it.

        Ids must be strictly increasing within the batch and after the last stored id
        (``EventOrderError``; ``DuplicateEventError`` for an id stored or repeated). The session
        row is locked first, so that two writers of one session append one after the other.
        """
        if not rows:
            return
        count = f"{len(rows)} event{'s' * (len(rows) != 1)}"
        what = f"append {count} to session {quote(session_id)}"
        _text(what, "session_id", session_id)
        ids: list[int] = []
        ats: list[float] = []
        kinds: list[str] = []
        datas: list[str] = []
        for index, r in enumerate(rows):
            if not (  # the usual row, checked inline: this loop runs for every event stored
                type(r.id) is int
                and INT64_MIN <= r.id <= INT64_MAX
                and type(r.at) is float
                and r.at - r.at == 0.0  # finite
                and type(r.kind) is str
                and r.kind.isascii()
                and "\x00" not in r.kind
                and type(r.data) is bytes
            ):
                event = f"event #{index + 1} of the batch:"
                check_int(what, f"{event} id", r.id, INT64_MIN, INT64_MAX)
                check_time(what, f"{event} at", r.at)
                _text(what, f"{event} kind", r.kind)
            ids.append(r.id)
            ats.append(float(r.at))
            kinds.append(r.kind)
            datas.append(_json(what, f"event {r.id} data", r.data))
        with self._write(what, fence=session_id, inline=True) as db:
            # One round trip: the session row locked (appends to one session serialize), its
            # last event id and, when due, the fence (the lease row FOR SHARE, locked first).
            if self._fence_due(session_id):
                found = db.execute(
                    lease_sql.FENCE_AND_LAST_EVENT, {"id": session_id, "now": self._now()}
                ).fetchone()
                if found is None:  # no session: the fence says so, or that the lease is lost
                    self._fence(db, session_id, what)
                elif found[1] is None:  # the session is there, its lease row is not
                    self._no_lease(what)
                else:
                    self._judge_lease(found[2], found[3], found[4], what)
                    self._fenced(session_id)
            else:
                found = db.execute(
                    "SELECT (SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = s.id) "
                    "FROM sessions AS s WHERE s.id = %s FOR UPDATE",
                    (session_id,),
                ).fetchone()
            if found is None:
                raise SessionNotFoundError(
                    f"could not {what}: no session {quote(session_id)} in {self.where} "
                    "(create_session first)"
                )
            last = int(found[0])
            previous = last
            for index, event_id in enumerate(ids):
                if event_id <= previous:
                    raise event_order_error(
                        what,
                        ids,
                        index,
                        last,
                        lambda event_id: (
                            db.execute(
                                "SELECT 1 FROM events WHERE session_id = %s AND id = %s",
                                (session_id, event_id),
                            ).fetchone()
                            is not None
                        ),
                    )
                previous = event_id
            try:  # a failure voids this write's transaction or savepoint: _write undoes it
                db.execute(
                    "INSERT INTO events (session_id, id, at, kind, data) "
                    "SELECT %s, * FROM unnest(%s::bigint[], %s::float8[], %s::text[], "
                    "%s::text[]::json[])",
                    (session_id, ids, ats, kinds, datas),
                )
            except psycopg.DataError as exc:
                for event_id, data in zip(ids, datas, strict=True):
                    try:
                        msgspec.json.decode(data)
                    except msgspec.DecodeError:
                        raise InvalidValueError(
                            f"could not {what}: data of event {event_id} is not valid JSON; "
                            "nothing of the batch was written"
                        ) from exc
                raise

    def events(self, session_id: str, after: int = 0, limit: int = 1000) -> list[EventRow]:
        """Up to ``limit`` events with id > ``after``, by id — the ``Last-Event-ID`` resume
        (``after`` 0..2**63-1, ``limit`` 1..``MAX_EVENTS_PAGE``, else ``ValueError``)."""
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= INT64_MAX:
            shown = show_int(after) if isinstance(after, int) else repr(after)
            raise ValueError(f"after must be an event id from 0 to 2**63 - 1, got {shown}")
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_EVENTS_PAGE
        ):
            shown = show_int(limit) if isinstance(limit, int) else repr(limit)
            raise ValueError(f"limit must be from 1 to {MAX_EVENTS_PAGE}, got {shown}")
        what = f"read the events of session {quote(session_id)} after {after}"
        _text(what, "session_id", session_id)
        rows = self._query(
            what,
            "SELECT id, at, kind, data::text FROM events WHERE session_id = %s AND id > %s "
            "ORDER BY id LIMIT %s",
            (session_id, after, limit),
        )
        return [event_row(r) for r in rows]

    def last_event_id(self, session_id: str) -> int:
        """The highest stored event id of the session; 0 when it has none."""
        what = f"read the last event id of session {quote(session_id)}"
        _text(what, "session_id", session_id)
        rows = self._query(
            what,
            "SELECT COALESCE(MAX(id), 0) FROM events WHERE session_id = %s",
            (session_id,),
        )
        return int(rows[0][0])

    # -- leases -----------------------------------------------------------------------------------

    def _replica(self, what: str) -> str:
        if self.replica is None:
            raise StoreError(f"could not {what}: this store was opened without a replica id")
        return self.replica

    def claim_sessions(self, limit: int = 100, *, now: float | None = None) -> list[Lease]:
        """Take up to ``limit`` sessions whose lease is unowned or expired (oldest expiry
        first), ``FOR UPDATE SKIP LOCKED``: a session another replica is claiming right now is
        skipped, never waited for and never given to both. Each claimed lease's epoch grows."""
        what = "claim sessions"
        owner = self._replica(what)
        check_int(what, "limit", limit, 1, MAX_EVENTS_PAGE)
        with self._write(what) as db:
            rows = db.execute(lease_sql.CLAIM, self._lease_params(owner, now, limit=limit))
            return sorted((lease_of(r) for r in rows.fetchall()), key=lambda x: x.session_id)

    def claim_session(self, session_id: str, *, now: float | None = None) -> Lease | None:
        """Take ``session_id``'s lease if it is unowned or expired (its epoch grows); None when
        another replica holds it unexpired, or the session is unknown or deleted."""
        what = f"claim session {quote(session_id)}"
        owner = self._replica(what)
        _text(what, "session_id", session_id)
        with self._write(what) as db:
            params = self._lease_params(owner, now, id=session_id)
            row = db.execute(lease_sql.CLAIM_ONE, params).fetchone()
            return None if row is None else lease_of(row)

    def notify(self, channel: str, payload: str) -> None:
        """``pg_notify(channel, payload)``: delivered to every listener once this commits (at
        once outside a batch). The replicas' directory (``fsm.control.replicas``) uses it."""
        what = f"notify {quote(channel)}"
        _text(what, "channel", channel)
        _text(what, "payload", payload)
        with self._write(what) as db:
            db.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def renew_leases(
        self, session_ids: Sequence[str] | None = None, *, now: float | None = None
    ) -> list[Lease]:
        """Extend this replica's unexpired leases (all of them, or those of ``session_ids``)
        by ``lease_ttl``; what is missing from the answer is lost: stop acting for it."""
        what = "renew leases"
        owner = self._replica(what)
        params = self._lease_params(owner, now)
        query = lease_sql.RENEW_ALL
        if session_ids is not None:
            for sid in session_ids:
                _text(what, "session_id", sid)
            params["ids"], query = list(session_ids), lease_sql.RENEW
        with self._write(what) as db:
            rows = db.execute(query, params).fetchall()
            return sorted((lease_of(r) for r in rows), key=lambda x: x.session_id)

    def release_leases(self, session_ids: Sequence[str]) -> list[str]:
        """Give up this replica's leases of ``session_ids`` (a clean stop): another replica may
        claim them at once. Returns the ids that were released."""
        what = "release leases"
        owner = self._replica(what)
        for sid in session_ids:
            _text(what, "session_id", sid)
        with self._write(what) as db:
            rows = db.execute(lease_sql.RELEASE, {"owner": owner, "ids": list(session_ids)})
            return sorted(str(r[0]) for r in rows.fetchall())

    def lease(self, session_id: str) -> Lease | None:
        """The session's lease as stored (None for an unknown session)."""
        what = f"read the lease of session {quote(session_id)}"
        _text(what, "session_id", session_id)
        rows = self._query(what, lease_sql.LEASE, {"id": session_id})
        return lease_of(rows[0]) if rows else None

    def held_leases(self, *, now: float | None = None) -> list[Lease]:
        """Every lease some replica holds and has not expired at ``now``, by session id (what
        ``GET /sessions`` shows as each session's owner, on any replica)."""
        what = "read the held leases"
        if now is not None:
            check_time(what, "now", now)
        rows = self._query(what, lease_sql.HELD, {"now": self._now() if now is None else now})
        return [lease_of(r) for r in rows]

    def owns(self, session_id: str, *, now: float | None = None) -> bool:
        """Whether this replica holds the session's lease and it has not expired at ``now``."""
        what = f"check the lease of session {quote(session_id)}"
        owner = self._replica(what)
        _text(what, "session_id", session_id)
        rows = self._query(
            what,
            f"SELECT owner = %(owner)s AND expires_at > {lease_sql.NOW} FROM leases "
            "WHERE session_id = %(id)s",
            {"owner": owner, "id": session_id, "now": self._now() if now is None else now},
        )
        return bool(rows and rows[0][0])

    def _lease_params(self, owner: str, now: float | None, **extra: object) -> dict[str, object]:
        if now is not None:
            check_time("use leases", "now", now)
        return {
            "owner": owner,
            "now": self._now() if now is None else float(now),
            "ttl": self.lease_ttl,
            **extra,
        }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
