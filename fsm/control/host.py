"""The control-plane host: one ``SessionCore`` per session on the real clock, persisted in SQLite.

Theory of operation
-------------------
Decisions are the session machines'; this host executes them and keeps promises about data:

* **Nothing acknowledged is lost.** Frames from wrappers are applied in memory at once, but the
  acknowledgements (and the ``welcome`` that tells a reconnecting wrapper what is already held)
  are released only after the flush loop has written the log entries, messages and machine
  snapshot to SQLite. A crash in between makes the wrapper resend, and duplicates are dropped by
  sequence number.
* **Restarts resume.** On start every stored session is rebuilt from its snapshot; timers keep
  their stored wall-clock deadlines, so one that expired while the host was down fires at once.
  Heartbeat re-arms are written at most every 30 s (as the source design debounced them).
* **Streams are exact.** Live subscribers get entries only after they are stored, so a client
  resuming with ``Last-Event-ID`` reads the store and then the live tail, each id exactly once.
* **Replicas share sessions** on PostgreSQL (``ControlSettings.db_url``): this host acts only
  for the sessions whose lease it holds (``fsm.control.replicas.LeaseKeeper`` renews, claims,
  and restores what it claims exactly as a restart restores), every write is fenced by the store,
  and a session whose lease is gone (or could not be renewed in time) is not acted for: its
  effects are not executed, and once the database says another replica holds it, it is dropped
  here (``drop_session``: timers removed, wrapper socket and live streams closed). See
  docs/postgresql.md for the deployment.
* **Commands are not dropped** when a wrapper is momentarily disconnected: they wait in the core
  (``SessionCore.hold``) for that wrapper's next ``welcome``, and whatever follows a welcome comes
  from ``SessionCore.commands_after_welcome`` — the simulator's control plane calls the same two.
  A prompt is never held here: the welcome derives one for every message still ``queued`` (the
  wrapper is idempotent by message id), so a message that ended meanwhile is never sent, and a
  replaced wrapper's abort or replies never reach its successor.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec
import uvicorn
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from adapters.runtime.base import ExitReason, RuntimePort, WrapperSpec
from adapters.runtime.docker import DockerRuntime
from adapters.runtime.external import ExternalRuntime
from adapters.runtime.local import LocalRuntime
from adapters.store.base import Store
from adapters.store.postgres import PostgresStore
from adapters.store.rows import LeaseLostError
from adapters.store.sqlite import (
    EventRow,
    MessageRow,
    SessionRow,
    SqliteStore,
    StoreError,
    hash_token,
)
from adapters.store.worker import Inline, StoreRunner, StoreThread
from fsm.control.core import LogEntry, Message, SessionCore
from fsm.control.metrics import Metrics
from fsm.control.views import SessionDetail, SessionSummary, WrapperAccess
from fsm.engine.clock import RealClock
from fsm.engine.effects import Effect, StartWrapper, StopWrapper
from fsm.engine.machine import Record, Snapshot
from fsm.hosting.collector import settle_collector
from fsm.hosting.logs import JsonLog, capture_asyncio, capture_stdlib
from fsm.hosting.tasks import start_guarded
from fsm.machines.timers import TimerValues
from fsm.settings.limits import LimitValues, defaults
from fsm.settings.runtime import RuntimeSettings
from fsm.wire.http_guard import reap_silent_connections
from fsm.wire.httpjson import HTTPProblem
from fsm.wire.protocol import Ack, Frame, ReleaseCommand, Shutdown, Welcome
from fsm.wire.transmit import Transmit

SNAPSHOT_DEBOUNCE = 30.0
FLUSH_PERIOD = 0.05


class SnapshotRow(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Store.save_session`` writes of the machine."""

    state: str
    snapshot: bytes
    wrapper_id: str | None
    last_seq: int
    updated_at: float


@dataclass
class SessionWrite:
    """One session's part of a flush: taken on the loop (``ControlHost._take``), written on the
    store's thread (``write_sessions``), its outcome applied on the loop."""

    session_id: str
    entry: SessionEntry
    events: list[LogEntry]
    rows: list[EventRow]
    check_stored: bool
    """The last write's COMMIT was lost: skip event ids the server may have stored after all."""
    message_ids: list[str]
    messages: list[MessageRow]
    snapshot: SnapshotRow | None
    state: str | None
    held: list[Frame]


def write_sessions(store: Store, writes: list[SessionWrite]) -> list[BaseException | None]:
    """Every write in one transaction, each in a savepoint of its own (run on the store's
    thread; it touches only the rows it was given). Per write, None or what it raised: a
    failure stays with its session. A failure of the batch itself (begin, commit) raises."""
    outcomes: list[BaseException | None] = []
    with store.batch("store pending session data"):
        for write in writes:
            try:
                with store.savepoint("session"):
                    _write_one(store, write)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
    return outcomes


def _write_one(store: Store, write: SessionWrite) -> None:
    sid, rows = write.session_id, write.rows
    if rows and write.check_stored:
        # The last batch's COMMIT was lost with the connection: the server may have stored it.
        # This replica holds the lease (the write is fenced), so stored ids are ours: skip them
        # rather than fail on them forever (DuplicateEventError). They are still released: their
        # acks and live subscribers waited for them.
        stored = store.last_event_id(sid)
        rows = [r for r in rows if r.id > stored]
    if rows:
        store.append_events(sid, rows)
    for message in write.messages:
        store.save_message(sid, message)
    snap = write.snapshot
    if snap is not None:
        store.save_session(
            sid,
            state=snap.state,
            snapshot=snap.snapshot,
            wrapper_id=snap.wrapper_id,
            last_seq=snap.last_seq,
            updated_at=snap.updated_at,
        )


@dataclass
class ControlSettings:
    db: Path
    api_key: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    base_dir: Path = Path(".fsm-agent/sessions")
    config: Path | None = None
    agent_bin: str | None = None
    wrapper_command: list[str] | None = None
    runtime: Literal["local", "external", "docker"] = "local"
    runtime_settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    """``[runtime]`` (image, limits, network, volumes, socket) for ``runtime="docker"``."""
    limits: LimitValues = field(default_factory=defaults)
    db_url: str | None = None
    """A PostgreSQL DSN (libpq conninfo or URL, its password never from argv): the store is then
    shared with other replicas; None is SQLite at ``db``."""
    replica_id: str = ""
    """This replica's name among those sharing ``db_url`` (leases are held under it)."""
    advertise_url: str | None = None
    """The client-API base URL other replicas forward requests to (default from the listen
    address)."""
    state_dir: Path | None = None
    """The control plane's own files (pidfiles, wrapper logs, each wrapper's Kilo state); by
    default ``base_dir``. Kept out of the workspace tree: no client's workdir may lie in it."""


@dataclass
class SessionEntry:
    core: SessionCore
    row: SessionRow
    token: str | None = None
    """The current wrapper's token, in memory only (the store keeps its hash): minted anew for
    every wrapper the local runtime starts, so a replaced wrapper's token opens nothing."""
    outq: MemoryObjectSendStream[Frame] | None = None
    conn: Any = None
    """The admitted ingest connection (``fsm.control.api``); None while disconnected."""
    pending: int = 0
    """Ingest sockets of this session accepted and waiting for their hello."""
    write_failures: int = 0
    retry_at: float = 0.0
    """After a failed store write, the session's data waits in memory until then (backoff)."""
    events_refused: int = 0
    commit_unsure: bool = False
    """The batch that last wrote this session's events failed at or after its COMMIT: some of
    them may be stored; the next write checks the stored last id first."""
    held: list[Frame] = field(default_factory=list)
    """Acks and welcomes, released after the flush that stores what they acknowledge."""
    welcome_writing: bool = False
    """A welcome was taken into a write still in flight: commands wait behind it."""
    events: list[LogEntry] = field(default_factory=list)
    dirty_messages: set[str] = field(default_factory=set)
    snapshot_due: bool = True
    last_snapshot: float = 0.0
    subscribers: set[MemoryObjectSendStream[LogEntry]] = field(default_factory=set)
    first_version: str | None = None
    starts_requested: int = 0
    """Wrappers asked for (StartWrapper effects), and wrapper exits accounted for: the runtime
    runs one wrapper per session at a time and reports each exit once, so an exit is the current
    wrapper's only when every earlier one is accounted for. An old wrapper's exit that lands
    after its replacement was requested must not be taken for the new one dying."""
    exits_seen: int = 0
    deleting: bool = False
    asked_to_exit: bool = False
    """The connected wrapper was sent ``shutdown`` or ``release``: stopping it waits for it to
    leave on its own before signalling it (a SIGTERM must not overtake the frame)."""


class ControlHost:
    def __init__(self, settings: ControlSettings, values: TimerValues, log: JsonLog) -> None:
        self.settings = settings
        self.values = values
        self.log = log
        capture_stdlib(log)
        capture_stdlib(log, "uvicorn", logging.WARNING)
        capture_asyncio(log)  # folded: a lost peer makes asyncio warn on every write
        self.clock = RealClock(timebase="wall")
        self.metrics = Metrics()
        self.sessions: dict[str, SessionEntry] = {}
        self._dirty: set[str] = set()
        self.pending_total = 0
        """Sessions with data waiting to be stored (or frames waiting for that)."""
        self.store: Store | None = None
        self.db: StoreRunner = Inline()
        """Where every store call runs: a thread of its own on PostgreSQL, so that a slow or
        unreachable server never freezes this loop (``adapters/store/worker.py``)."""
        self._flushing = anyio.Lock()
        """One flush at a time: a session's writes reach the store in the order they were made,
        and a failed write's data goes back in front of what came in meanwhile."""
        self.pg: PostgresStore | None = None
        """The same store when it is PostgreSQL shared by replicas (leases, fencing)."""
        self.lease_until: dict[str, float] = {}
        """Per held session, the monotonic time its lease is surely still ours until (measured
        from before the query that took or renewed it)."""
        self.replicas: Any = None
        self.sessions_dropped = 0
        """Sessions this replica stopped acting for because another one holds them now."""
        """``fsm.control.replicas.Replicas`` on PostgreSQL."""
        self.runtime: RuntimePort | None = None
        self.port: int | None = None
        self.ready = anyio.Event()
        self.stop_requested = anyio.Event()
        self._tg: TaskGroup | None = None

    # -- lifetime -------------------------------------------------------------------------------

    @property
    def ingest_base(self) -> str:
        return f"ws://{self.settings.listen_host}:{self.port}/ingest"

    async def run(self, build_app: Callable[[ControlHost], Any]) -> None:
        """Serve until ``request_stop``. ``build_app(host)`` makes the ASGI app of the client API
        and the ingest socket (``fsm.control.api.build_app``): the API depends on the host, never
        the other way round, so the host takes it as an argument."""
        s = self.settings
        s.base_dir.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(
            socket.AF_INET6 if ":" in s.listen_host else socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,  # asyncio sets TCP_NODELAY only on sockets that say TCP
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.listen_host, s.listen_port))
        sock.listen(128)  # connections queue from now on: the port we log is already usable
        self.port = sock.getsockname()[1]
        self.store = self._open_store()
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(self),
                log_level="warning",
                log_config=None,  # uvicorn's own lines go through our JSON log (capture_stdlib)
                lifespan="off",
                access_log=False,
                ws="websockets-sansio",
                ws_max_size=self.limits.frame_bytes,
                limit_concurrency=self.limits.connections,
            )
        )
        try:
            runtime_cm: LocalRuntime | ExternalRuntime | DockerRuntime
            if s.runtime == "external":
                runtime_cm = ExternalRuntime(self._on_wrapper_exit)
            elif s.runtime == "docker":
                runtime_cm = DockerRuntime(
                    s.runtime_settings,
                    self._on_wrapper_exit,
                    state_dir=s.state_dir or s.base_dir,
                    base_dir=s.base_dir,
                    command=s.wrapper_command,
                    on_notice=self._on_runtime_notice,
                )
            else:
                runtime_cm = LocalRuntime(
                    s.base_dir,
                    self._on_wrapper_exit,
                    command=s.wrapper_command,
                    log_dir=(s.state_dir or s.base_dir) / "logs",
                    state_dir=s.state_dir or s.base_dir,
                )
            async with runtime_cm as runtime, anyio.create_task_group() as tg:
                self.runtime = runtime
                self._tg = tg
                tg.start_soon(self.clock.run)
                tg.start_soon(self._flush_loop)
                start_guarded(tg, self.log, "API server", lambda: server.serve(sockets=[sock]))
                start_guarded(
                    tg,
                    self.log,
                    "silent connection reaper",
                    lambda: reap_silent_connections(server, self.values["http_first_request"]),
                )
                if self.replicas is not None:
                    await self.replicas.start(tg)  # claims what nobody holds, restoring each
                else:
                    self._load_sessions()
                settle_collector()  # what was restored lives on; see fsm/hosting/collector.py
                self.log.info(
                    "control plane listening",
                    url=f"http://{s.listen_host}:{self.port}",
                    port=self.port,
                    db=self.pg.where if self.pg else str(s.db),
                    replica=s.replica_id if self.pg else None,
                    sessions=len(self.sessions),
                    timers={k: self.values[k] for k in self.values},
                    overridden=self.values.overridden(),
                )
                self.ready.set()
                await self.stop_requested.wait()
                await self._flush()
                if self.replicas is not None:
                    await self.replicas.release_all()  # another replica may claim them at once
                server.should_exit = True
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._flush()
                if self.replicas is not None:
                    await self.replicas.close()
            self.db.now(self.store.close)
            self.db.close()

    def _open_store(self) -> Store:
        s = self.settings
        if s.db_url is None:
            return SqliteStore(s.db)
        from fsm.control.replicas import Replicas

        dsn = s.db_url
        self.db = StoreThread(f"store-{s.replica_id}")
        self.pg = self.db.now(
            lambda: PostgresStore(dsn, replica=s.replica_id, lease_ttl=self.values["replica_lease"])
        )
        self.replicas = Replicas(self, self.pg)
        return self.pg

    # -- leases (PostgreSQL replicas) -----------------------------------------------------------

    def acting(self, session_id: str) -> bool:
        """Whether this host may act for the session now: always on SQLite; on PostgreSQL only
        while its lease is surely held (a replica stopped past its lease must not act on
        resuming before it has asked the database)."""
        return self.pg is None or self.lease_until.get(session_id, 0.0) > time.monotonic()

    async def adopt_row(self, row: SessionRow, held_since: float) -> SessionEntry | None:
        """A session this replica just claimed (its lease taken at monotonic ``held_since``):
        restored from its snapshot as a restart restores it."""
        self.lease_until[row.id] = held_since + self.values["replica_lease"]
        if row.id in self.sessions:
            return self.sessions[row.id]
        if not row.snapshot:
            return None
        assert self.store is not None
        stored = await self.db.run(self._stored_log, row.id)
        if row.id in self.sessions:  # restored by another task while this one read
            return self.sessions[row.id]
        return self._restore(row, *stored)

    def drop_session(self, session_id: str, why: str) -> None:
        """Stop acting for a session another replica now holds: its machine and timers go, its
        wrapper socket is closed (the wrapper reconnects, through the balancer, to the owner)
        and its live streams end (clients resume with ``Last-Event-ID`` elsewhere). Nothing is
        deleted: the owner has the stored session; what was not stored was not acknowledged."""
        self.lease_until.pop(session_id, None)
        entry = self.sessions.pop(session_id, None)
        if entry is None:
            return
        self._dirty.discard(session_id)
        entry.core.group.remove(entry.core.machine.machine_id)
        conn = entry.conn
        entry.conn = entry.outq = None
        if conn is not None:
            conn.replaced = True  # its writer closes the socket (4000): the wrapper reconnects
            conn.send.close()
        for sub in entry.subscribers:
            sub.close()
        self.sessions_dropped += 1
        self.log.warning("stopped acting for a session", session=session_id, reason=why)

    @property
    def limits(self) -> LimitValues:
        return self.settings.limits

    def request_stop(self) -> None:
        self.stop_requested.set()

    def _start(self, what: str, work: Callable[[], Awaitable[Any]]) -> None:
        start_guarded(self._tg, self.log, what, work)

    # -- sessions -------------------------------------------------------------------------------

    def _new_core(self, session_id: str, log_start: int = 0) -> SessionCore:
        return SessionCore(
            self.clock,
            self.values,
            session_id,
            lambda effect: self._on_action(session_id, effect),
            on_record=self._on_record_for(session_id),
            on_log=lambda entry: self._on_log(session_id, entry),
            log_start=log_start,
        )

    async def add_session(
        self,
        *,
        agent_session: str | None = None,
        user_id: str = "user",
        workdir: str | None = None,
        wrapper_version: str | None = None,
    ) -> tuple[SessionEntry, str]:
        """A new session and its wrapper token (shown once: only its hash is stored); the row is
        inserted on the store's thread (on PostgreSQL with its lease taken) before the session
        exists here."""
        assert self.store is not None
        row, token = self._new_row(agent_session, user_id, workdir)
        held_since = time.monotonic()
        await self.db.run(self.store.create_session, row)
        return self._admit(row, token, wrapper_version, held_since), token

    def create_session(
        self,
        *,
        agent_session: str | None = None,
        user_id: str = "user",
        workdir: str | None = None,
        wrapper_version: str | None = None,
    ) -> tuple[SessionEntry, str]:
        """``add_session`` for in-process callers of an inline store (SQLite: the insert runs
        here, on the loop, as every SQLite call does)."""
        assert self.store is not None and isinstance(self.db, Inline)
        row, token = self._new_row(agent_session, user_id, workdir)
        held_since = time.monotonic()
        self.store.create_session(row)
        return self._admit(row, token, wrapper_version, held_since), token

    def _new_row(
        self, agent_session: str | None, user_id: str, workdir: str | None
    ) -> tuple[SessionRow, str]:
        if len(self.sessions) >= self.limits.sessions:
            raise HTTPProblem(
                429,
                f"{len(self.sessions)} sessions are live; the limit is {self.limits.sessions} "
                "(limits.sessions)",
                "sessions",
            )
        sid = f"s_{uuid.uuid4().hex[:12]}"
        path = self._workdir(workdir) if workdir else self.settings.base_dir / sid / "workspace"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HTTPProblem(
                400, f"workdir {path} cannot be created: {exc.strerror or exc}", "workdir"
            ) from None
        now = self.clock.now()
        token = secrets.token_urlsafe(32)
        row = SessionRow(
            id=sid,
            token_hash=hash_token(token),
            agent_session=agent_session or f"agent_{sid}",
            user_id=user_id,
            workdir=str(path),
            state="starting",
            snapshot=b"",
            wrapper_id=None,
            last_seq=0,
            created_at=now,
            updated_at=now,
        )
        return row, token

    def _admit(
        self, row: SessionRow, token: str, wrapper_version: str | None, held_since: float
    ) -> SessionEntry:
        """The stored new session comes alive here (its lease taken at ``held_since``)."""
        sid = row.id
        if self.pg is not None:
            self.lease_until[sid] = held_since + self.values["replica_lease"]
        entry = SessionEntry(self._new_core(sid), row, token, first_version=wrapper_version)
        self.sessions[sid] = entry
        entry.core.start()
        return entry

    def _workdir(self, given: str) -> Path:
        """A client's workdir, confined to the workspace root: relative paths are taken from the
        root, and the result (symlinks resolved) must lie strictly inside it and must not hold
        the control plane's own files."""
        root = self.settings.base_dir.resolve()
        if "\0" in given:
            raise HTTPProblem(400, "workdir must not contain NUL", "workdir")
        path = (root / given).resolve()
        if path == root or not path.is_relative_to(root):
            raise HTTPProblem(
                400, f"workdir must be a directory inside the workspace root {root}", "workdir"
            )
        own = [self.settings.db.resolve(), (self.settings.state_dir or root).resolve()]
        if self.settings.state_dir is None:
            runtimes = ("logs", "pids", "kilo-state", "wrapper-state", "secrets", "config")
            own += [root / n for n in runtimes]  # the runtimes' own files, in root
        for mine in own:
            if mine != root and (mine.is_relative_to(path) or path.is_relative_to(mine)):
                raise HTTPProblem(
                    400, "workdir must not hold or lie in the control plane's own files", "workdir"
                )
        return path

    def _load_sessions(self) -> None:
        """At start, before anything is served: every stored session, restored."""
        assert self.store is not None
        for row in self.db.now(self.store.list_sessions):
            if row.snapshot:
                self._restore(row, *self.db.now(self._stored_log, row.id))

    def _stored_log(self, session_id: str) -> tuple[int, list[MessageRow]]:
        """What a restore reads besides the row (run on the store's thread)."""
        assert self.store is not None
        return self.store.last_event_id(session_id), self.store.messages(session_id)

    def _restore(self, row: SessionRow, last_event: int, stored: list[MessageRow]) -> SessionEntry:
        """The session machine of a stored row, with its messages and remaining timers."""
        entry = SessionEntry(self._new_core(row.id, last_event), row)
        self.sessions[row.id] = entry
        messages = [
            Message(
                m.id,
                m.prompt,
                m.state,
                m.reason,
                m.error,
                m.created_at,
                m.finished_at,
                msgspec.json.decode(m.options) if m.options else {},
            )
            for m in stored
        ]
        snapshot = msgspec.json.decode(row.snapshot, type=Snapshot)
        entry.core.restore(snapshot, messages, row.wrapper_id, row.last_seq)
        assert self.runtime is not None
        pid = self.runtime.adopt(row.id)
        if pid is not None:
            entry.starts_requested = 1  # its exit is the current wrapper's
            if entry.core.state in ("stopped", "failed"):
                self._start("stopping a wrapper", functools.partial(self._stop_wrapper, row.id))
        self.log.info("session restored", session=row.id, state=entry.core.state, wrapper_pid=pid)
        return entry

    def delete_session(self, session_id: str) -> None:
        entry = self.sessions[session_id]
        entry.deleting = True
        entry.core.stop()
        if entry.core.state in ("stopped", "failed"):
            self._start("forgetting a session", functools.partial(self._forget, session_id))

    async def _forget(self, session_id: str) -> None:
        if session_id not in self.sessions:
            return
        await self.flush_session(session_id)
        entry = self.sessions.pop(session_id, None)
        if entry is None:
            return
        entry.core.group.remove(entry.core.machine.machine_id)
        assert self.store is not None
        await self.db.run(self.store.delete_session, session_id)
        self.lease_until.pop(session_id, None)  # the store dropped the lease with the session
        for sub in entry.subscribers:
            sub.close()

    def check_wrapper_token(self, session_id: str, given: str) -> SessionEntry | None:
        entry = self.sessions.get(session_id)
        expected = entry.row.token_hash if entry is not None else hash_token(secrets.token_hex())
        ok = hmac.compare_digest(hash_token(given[:512]).encode(), expected.encode())
        return entry if ok and entry is not None else None

    # -- effects and records --------------------------------------------------------------------

    def _on_action(self, session_id: str, effect: Effect) -> None:
        entry = self.sessions.get(session_id)
        if entry is None:
            return
        if not self.acting(session_id) and isinstance(effect, Transmit):
            # Acks and welcomes wait for a flush, which the store fences: they may be kept.
            held = [f for f in effect.frames if isinstance(f, Ack | Welcome)]
            if held:
                entry.held.extend(held)
                self._dirty.add(session_id)
            if len(held) == len(effect.frames):
                return
        if not self.acting(session_id):
            # The lease may be another replica's by now (this one was stopped past it, or the
            # database is out of reach): doing nothing is safe, acting twice is not. The lease
            # keeper asks the database next and either takes the lease again or drops this.
            self.log.warning(
                "an effect not executed: the session's lease is not surely held",
                session=session_id,
                effect=type(effect).__name__,
            )
            return
        if isinstance(effect, Transmit):
            for frame in effect.frames:
                if isinstance(frame, Shutdown | ReleaseCommand) and entry.outq is not None:
                    entry.asked_to_exit = True
                if isinstance(frame, Ack | Welcome):
                    entry.held.append(frame)  # released after the flush that stores the data
                    self._dirty.add(session_id)
                elif isinstance(frame, Shutdown) or (
                    entry.outq is not None
                    and not entry.welcome_writing
                    and not any(isinstance(h, Welcome) for h in entry.held)
                ):
                    self._send(entry, frame)
                else:
                    entry.core.hold(frame)  # prompts are not kept: the next welcome derives them
        elif isinstance(effect, StartWrapper):
            version = entry.first_version if effect.attempt == 1 else None
            entry.starts_requested += 1
            self._start("starting a wrapper", lambda: self._start_wrapper(entry, version))
        elif isinstance(effect, StopWrapper):
            self._start("stopping a wrapper", lambda: self._stop_wrapper(session_id))
        else:
            self.log.warning("unhandled action", action=type(effect).__name__)

    def _send(self, entry: SessionEntry, frame: Frame) -> None:
        if entry.outq is None:
            return
        try:
            entry.outq.send_nowait(frame)
            self.metrics.frames_out[type(frame).__name__.lower()] += 1
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.log.warning("wrapper send queue unavailable", session=entry.row.id)

    async def _start_wrapper(self, entry: SessionEntry, version: str | None) -> None:
        assert self.runtime is not None
        row = entry.row
        if self.runtime.running(row.id):
            await self.runtime.stop(
                row.id, self.values["wrapper_stop_grace"], asked=entry.asked_to_exit
            )
        entry.asked_to_exit = False
        if entry.core.state != "starting" or row.id not in self.sessions:
            # The machine moved on (failed, stopping) while the old wrapper was being stopped:
            # this start is void, and accounted for as if its wrapper had come and gone.
            entry.exits_seen += 1
            self.log.info("wrapper start skipped", session=row.id, state=entry.core.state)
            return
        # An external starter was given the session's token once, at creation, and keeps it
        # (after a restart of ours only its hash is left, which is all the socket needs).
        token = entry.token or ""
        if self.settings.runtime != "external":
            # Every wrapper we start gets a token of its own: the one it replaces opens nothing
            # any more.
            token = secrets.token_urlsafe(32)
            assert self.store is not None
            await self.db.run(self.store.set_token_hash, row.id, hash_token(token))
            row.token_hash = hash_token(token)
            entry.token = token
        spec = WrapperSpec(
            session_id=row.id,
            agent_session=row.agent_session,
            user_id=row.user_id,
            ingest_url=f"{self.ingest_base}/{row.id}",
            token=token,
            workdir=Path(row.workdir),
            config=self.settings.config,
            agent_bin=self.settings.agent_bin,
            version=version,
            extra_env={},
        )
        try:
            await self.runtime.start(spec)
        except Exception as exc:
            # No process means no exit will ever be reported: report this one, so the machine
            # spends its restart budget instead of waiting out first_connect.
            self.log.error("wrapper failed to start", session=row.id, error=str(exc))
            self._on_wrapper_exit(row.id, None, "start_failed", str(exc))

    async def _stop_wrapper(self, session_id: str) -> None:
        assert self.runtime is not None
        entry = self.sessions.get(session_id)
        if self.runtime.running(session_id):
            # In ``stopped`` the machine has already waited its stop grace for the release.
            asked = entry is not None and entry.asked_to_exit and entry.core.state != "stopped"
            await self.runtime.stop(session_id, self.values["wrapper_stop_grace"], asked=asked)
            return
        if entry is not None and entry.core.state == "stopping":
            # Nothing of ours runs (e.g. a wrapper left by a previous control plane that is not
            # connected): the stop is complete as far as this host can tell.
            entry.core.wrapper_exited(None)

    def _on_wrapper_exit(
        self,
        session_id: str,
        code: int | None,
        reason: ExitReason | None = None,
        detail: str = "",
    ) -> None:
        entry = self.sessions.get(session_id)
        if entry is None:
            return
        if self.stop_requested.is_set():
            # The control plane is stopping and its runtime is stopping every wrapper: the exit
            # is our doing, not the session's news. Fed to the machine it would record a restart
            # that never happens and start work on a task group that has already ended ("This
            # task group is not active"). The session stays as stored; the next control plane
            # restores it, as after a crash, and its timers decide.
            self.log.info("wrapper stopped with the control plane", session=session_id, code=code)
            return
        entry.exits_seen += 1
        if entry.exits_seen < entry.starts_requested:
            self.log.info("a replaced wrapper exited", session=session_id, code=code, reason=reason)
            return
        entry.exits_seen = entry.starts_requested
        self.log.info("wrapper exited", session=session_id, code=code, reason=reason)
        entry.core.wrapper_exited(code, reason, detail)

    def _on_runtime_notice(self, session_id: str, kind: str, detail: str) -> None:
        entry = self.sessions.get(session_id)
        self.log.warning("runtime notice", session=session_id, notice=kind, detail=detail)
        if entry is not None:
            entry.core.runtime_notice(kind, detail)

    def wrapper_disconnected(self, session_id: str) -> None:
        """With an external runtime the socket is all there is: a released wrapper that hangs
        up has exited as far as this side can know."""
        entry = self.sessions.get(session_id)
        if (
            entry is not None
            and self.settings.runtime == "external"
            and entry.core.state == "stopping"
        ):
            entry.core.wrapper_exited(None)

    def _on_record_for(self, session_id: str) -> Callable[[Record], None]:
        def on_record(record: Record) -> None:
            self.metrics.record(record)
            self.log.record(record)
            entry = self.sessions.get(session_id)
            if entry is None:
                return
            if (
                entry.deleting
                and record.kind == "transition"
                and record.dest in ("stopped", "failed")
            ):
                # However the stop ended (exit seen, grace expired), a deleted session goes now;
                # after this transition has been handled, not in the middle of it.
                self._start("forgetting a session", functools.partial(self._forget, session_id))
            # Heartbeat re-arms are written at most every 30 s, and at least three times per
            # stale window, so a restored stale timer is never much earlier than the real one.
            debounce = min(SNAPSHOT_DEBOUNCE, self.values["stale_heartbeat"] / 3)
            debounced = self.clock.now() - entry.last_snapshot <= debounce
            if record.kind != "internal" or not debounced:
                entry.snapshot_due = True
                self._dirty.add(session_id)

        return on_record

    def _on_log(self, session_id: str, entry_: LogEntry) -> None:
        entry = self.sessions.get(session_id)
        if entry is None:
            return
        if entry_.kind == "event" and entry_.id > self.limits.session_events:
            # The log is full of agent events: the first one past the bound is stored as the
            # marker that says so, the rest are counted (messages, outcomes and transitions are
            # still stored: they are bounded by limits.queued_messages).
            entry.events_refused += 1
            self.metrics.events_dropped += 1
            if entry.events_refused > 1:
                return
            self.log.warning("session event log full", session=session_id)
            entry_ = LogEntry(
                entry_.id,
                entry_.at,
                "events_dropped",
                {"reason": "limits.session_events", "limit": self.limits.session_events},
            )
        entry.events.append(entry_)
        self._dirty.add(session_id)
        if entry_.kind == "message":
            entry.dirty_messages.add(str(entry_.data["id"]))
        elif entry_.kind == "events_dropped":
            self.metrics.events_dropped += int(entry_.data.get("count", 0))

    # -- persistence ----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await anyio.sleep(FLUSH_PERIOD)
            try:
                await self._flush()
            except Exception as exc:  # the loop that stores every session must never stop
                self.log.error("flushing failed", error=f"{type(exc).__name__}: {exc}"[:500])

    async def flush_session(self, session_id: str) -> None:
        """Store what is pending now, so a reader of the log sees what the API already shows."""
        await self._flush({session_id})

    async def _flush(self, only: set[str] | None = None) -> None:
        """Write every session with pending data (or those of ``only``) in one transaction, then
        release what waited for it (acks, welcomes, live subscribers): nothing is acknowledged
        before it is stored. Only sessions marked dirty are visited, so idle sessions cost
        nothing here. What to write is taken here, on the loop; it is written on the store's
        thread (``self.db``) while the loop serves on, and the answers are applied here again.
        Shielded: once taken, a flush's data is written and accounted for even when the task
        that began it is cancelled (the host stopping)."""
        with anyio.CancelScope(shield=True):
            async with self._flushing:
                await self._flush_now(only)

    async def _flush_now(self, only: set[str] | None) -> None:
        store = self.store
        if store is None or not self._dirty:
            return
        if only is None:
            dirty, self._dirty = self._dirty, set()
        else:
            dirty = self._dirty & only
            self._dirty -= dirty
        now = time.monotonic()
        writes: list[SessionWrite] = []
        for sid in sorted(dirty):
            entry = self.sessions.get(sid)
            if entry is None:
                continue
            if entry.retry_at > now:
                self._dirty.add(sid)  # still backing off after a failed write
                continue
            writes.append(self._take(sid, entry))
        if not writes:
            return
        try:
            outcomes = await self.db.run(write_sessions, store, writes)
        except Exception as exc:
            # The whole transaction is gone (SQLite gave up on a full disk; PostgreSQL could not
            # be reached to begin it, lost the connection, or failed the commit): what every
            # session wrote in it waits in memory again, unacknowledged, for the next flush.
            # Every session of this flush stays dirty, also those the batch never reached (a
            # batch that could not even begin visited none): otherwise a session whose last
            # frames came in while the store was down would never be visited again, its frames
            # neither stored nor acknowledged while the wrapper, still connected, waits.
            for write in writes:
                self._put_back(write)
                write.entry.commit_unsure = True  # a lost COMMIT may have been committed after all
            self._dirty.update(dirty)
            self.metrics.store_failures += 1
            self.log.error("storing the batch failed", error=f"{type(exc).__name__}: {exc}"[:500])
            if not isinstance(exc, StoreError):
                raise
            return
        for write, outcome in zip(writes, outcomes, strict=True):
            entry = write.entry
            if self.sessions.get(write.session_id) is not entry:
                continue  # dropped or forgotten while it was written
            if outcome is None:
                entry.write_failures = 0
                entry.commit_unsure = False
                if write.state is not None:
                    entry.row.state = write.state
                self._release(entry, write.held, write.events)
            elif isinstance(outcome, LeaseLostError):
                # Fenced: another replica holds the session (nothing of this write is stored).
                self.drop_session(write.session_id, str(outcome)[:300])
            else:
                self._write_failed(write, outcome)

    def _take(self, sid: str, entry: SessionEntry) -> SessionWrite:
        """One session's pending data, taken out of the entry for a write. What arrives while it
        is written waits in the entry for the next flush; a failed write puts this back in front
        of it exactly once (``_put_back``). The acks and welcomes taken are the ones for data
        applied so far, i.e. in this write: a frame that comes in meanwhile is acked by the
        flush that stores it, never by this one."""
        core = entry.core
        events, entry.events = entry.events, []
        held, entry.held = entry.held, []
        entry.welcome_writing = any(isinstance(h, Welcome) for h in held)
        message_ids = sorted(entry.dirty_messages)
        entry.dirty_messages.clear()
        snapshot = None
        state = None
        if entry.snapshot_due or events:
            now = self.clock.now()
            state = core.state
            snapshot = SnapshotRow(
                state=state,
                snapshot=msgspec.json.encode(core.snapshot()),
                wrapper_id=core.wrapper_id,
                last_seq=core.last_seq,
                updated_at=now,
            )
            entry.snapshot_due = False
            entry.last_snapshot = now
        return SessionWrite(
            session_id=sid,
            entry=entry,
            events=events,
            rows=[EventRow(e.id, e.at, e.kind, msgspec.json.encode(e.data)) for e in events],
            check_stored=entry.commit_unsure,
            message_ids=message_ids,
            messages=[MessageRow.of(core.messages[mid]) for mid in message_ids],
            snapshot=snapshot,
            state=state,
            held=held,
        )

    def _put_back(self, write: SessionWrite) -> None:
        entry = write.entry
        entry.events = write.events + entry.events
        entry.held = write.held + entry.held
        entry.welcome_writing = False
        entry.dirty_messages.update(write.message_ids)
        if write.snapshot is not None:
            entry.snapshot_due = True

    def _write_failed(self, write: SessionWrite, exc: BaseException) -> None:
        """One session's write failed in its savepoint: whatever it raised (any store error, or
        anything else one session's data could cause) stays with that session. Its partial
        write was rolled back, its data waits in memory (unacknowledged, so nothing is lost)
        and is retried with a backoff, and every other session's write went on."""
        entry = write.entry
        self._put_back(write)
        entry.write_failures += 1
        delay = min(5.0, FLUSH_PERIOD * 2**entry.write_failures)
        entry.retry_at = time.monotonic() + delay
        self._dirty.add(write.session_id)
        self.metrics.store_failures += 1
        self.log.error(
            "storing a session failed; its data waits in memory",
            session=write.session_id,
            error=f"{type(exc).__name__}: {exc}"[:500],
            failures=entry.write_failures,
            retry_in=round(delay, 3),
        )

    def _release(self, entry: SessionEntry, held: list[Frame], events: list[LogEntry]) -> None:
        entry.welcome_writing = False
        for frame in held:
            self._send(entry, frame)
            if isinstance(frame, Welcome) and entry.outq is not None:
                for command in entry.core.commands_after_welcome():
                    self._send(entry, command)
        for log_entry in events:
            for sub in list(entry.subscribers):
                try:
                    sub.send_nowait(log_entry)
                except anyio.WouldBlock:
                    sub.close()  # a subscriber that cannot keep up reconnects with Last-Event-ID
                    entry.subscribers.discard(sub)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    entry.subscribers.discard(sub)

    # -- views for the API ----------------------------------------------------------------------

    def session_summary(self, entry: SessionEntry) -> SessionSummary:
        return SessionSummary(
            id=entry.row.id,
            state=entry.core.state,
            agent_session=entry.row.agent_session,
            user_id=entry.row.user_id,
            workdir=entry.row.workdir,
            wrapper_id=entry.core.wrapper_id,
            connected=entry.outq is not None,
            created_at=entry.row.created_at,
        )

    def session_detail(self, entry: SessionEntry, *, token: str | None = None) -> SessionDetail:
        """``token``: only when the session was just created, and only for an external runtime
        (nobody else will start its wrapper; the token is never shown again)."""
        core = entry.core
        summary = self.session_summary(entry)
        access = None
        if token is not None and self.settings.runtime == "external":
            access = WrapperAccess(f"{self.ingest_base}/{entry.row.id}", token)
        return SessionDetail(
            **msgspec.structs.asdict(summary),
            messages=list(core.messages.values()),
            timers={k: round(v, 3) for k, v in core.machine.deadlines().items()},
            restart_budget_left=core.machine.budget_remaining("wrapper_restarts"),
            now=round(time.time(), 3),
            wrapper=access,
        )

    # -- live event streams ---------------------------------------------------------------------

    def check_stream_limits(self, entry: SessionEntry) -> None:
        """429 past the stream limits. Counted from the live subscriptions themselves, so a
        stream that never started cannot leak a slot."""
        limits = self.limits
        total = sum(len(e.subscribers) for e in self.sessions.values())
        if len(entry.subscribers) >= limits.sse_per_session or total >= limits.sse_total:
            raise HTTPProblem(
                429,
                f"too many event streams open (limits.sse_per_session {limits.sse_per_session}, "
                f"limits.sse_total {limits.sse_total})",
                "session_id",
            )

    def subscribe(
        self, entry: SessionEntry
    ) -> tuple[MemoryObjectSendStream[LogEntry], MemoryObjectReceiveStream[LogEntry]]:
        send, receive = anyio.create_memory_object_stream[LogEntry](max_buffer_size=10_000)
        entry.subscribers.add(send)
        return send, receive

    def unsubscribe(self, entry: SessionEntry, send: MemoryObjectSendStream[LogEntry]) -> None:
        entry.subscribers.discard(send)
        send.close()
