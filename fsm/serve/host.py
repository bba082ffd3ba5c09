"""The wrapper host: runs ``WrapperCore`` on the real clock with the Kilo and ingest adapters.

Theory of operation
-------------------
All decisions are the machines'; this module only executes actions and reports results back.
Each long-lived thing has one task and one owner, all inside one task group whose lifetime is the
process: the clock's scheduler, the job API server, the signal handler, the Kilo process watcher,
one task per event subscription (cancelled through its own scope on ``Unsubscribe``), one per
ingest connection. An exception in an action is logged and turned into the event the machine
expects when the thing fails (an agent that could not start *exited*; a probe that raised
*failed*), so no task ever dies silently and no machine waits for an answer that cannot come.

Signals: SIGTERM/SIGINT stop gracefully (Kilo stopped, outbox flushed within a bound, exit 0);
SIGUSR1 recycles the ingest connection (a fault-injection hook for tests and operators).

Kilo's events arrive in bursts (a socket read holds many). The subscription brackets each burst
with ``WrapperCore.begin_batch``/``end_batch`` (the end runs as a loop callback queued at the
first event, so it runs as soon as the read's events are all handled), which lets the core skip
superseded timer re-arms and send the burst's frames in one write. When the outbox's window is
full (``WrapperCore.window_full``: most of its bound is frames the control plane has not
acknowledged yet) the subscription stops reading Kilo until acks come, for at most ``ACK_WAIT``:
events dropped on a healthy connection only because acks are in flight would be lost for
nothing, and a control plane that stopped answering must not stall the agent link's liveness.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import uvicorn
from anyio.abc import TaskGroup

from adapters.agents.registry import agent_spec
from adapters.ingest.websocket_client import IngestConnection
from adapters.kilo.client import ID_PATTERN, AgentClient, AgentError, ascending_id
from adapters.kilo.process import AgentServer, SpawnedAgent, start_agent
from fsm.engine.clock import RealClock
from fsm.engine.effects import (
    AbortAgentTurn,
    CloseSocket,
    Effect,
    ExitProcess,
    OpenSocket,
    ProbeHealth,
    Reconcile,
    SpawnAgent,
    StopAgent,
    Subscribe,
    Unsubscribe,
)
from fsm.engine.machine import Record
from fsm.hosting.collector import settle_collector
from fsm.hosting.logs import JsonLog, capture_asyncio, capture_stdlib
from fsm.hosting.tasks import start_guarded
from fsm.machines.timers import TimerValues
from fsm.serve.auto_commit import auto_commit
from fsm.serve.core import AgentCall, Identity, PromptAgent, WrapperCore
from fsm.serve.job_api import build_app
from fsm.serve.settings import ServeSettings
from fsm.wire.http_guard import reap_silent_connections
from fsm.wire.outbox import Outbox
from fsm.wire.protocol import WRAPPER_VERSION, ControlFrame, PromptCommand
from fsm.wire.slash import parse_slash
from fsm.wire.transmit import Transmit

ACK_WAIT = 1.0
"""Longest the event subscription waits for acks when the outbox window is full."""

SESSIONS_FILE = "agent-sessions.json"
"""In the state dir: which Kilo session each agent-session name is (``_ensure_session``)."""

MESSAGE_IDS_KEPT = 1024
"""Kilo message ids remembered for resubmission; a resubmission follows its first submission
within one turn's lifetime, and far fewer turns than this are ever open at once."""


def recorded_sessions(state_dir: Path) -> dict[str, str]:
    """The agent-session → Kilo session map kept in ``state_dir``; empty when absent or unreadable
    (a lost map costs the old conversation, never the wrapper's start)."""
    try:
        data = json.loads((state_dir / SESSIONS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    sessions = data.get("sessions") if isinstance(data, dict) else None
    if not isinstance(sessions, dict):
        return {}
    return {k: v for k, v in sessions.items() if isinstance(k, str) and isinstance(v, str)}


def record_session(state_dir: Path, agent_session: str, agent_session_id: str) -> None:
    """Remember that ``agent_session`` is Kilo's ``agent_session_id``: written to a temporary file,
    synced and renamed over the old map, so a wrapper killed mid-write leaves the old map or the
    new one, never half of either."""
    sessions = recorded_sessions(state_dir)
    if sessions.get(agent_session) == agent_session_id:
        return
    sessions[agent_session] = agent_session_id
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / SESSIONS_FILE
    tmp = path.with_name(f"{SESSIONS_FILE}.{os.getpid()}.tmp")
    with tmp.open("w") as out:
        json.dump({"version": 1, "sessions": sessions}, out)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class WrapperHost:
    def __init__(
        self,
        settings: ServeSettings,
        values: TimerValues,
        log: JsonLog,
        early_agent: SpawnedAgent | None = None,
        early_signals: list[int] | None = None,
    ) -> None:
        self.settings = settings
        self.early_agent = early_agent
        self.early_signals = early_signals if early_signals is not None else []
        """Stop signals the launcher held before ``_signals`` listened (handled first there)."""
        """Kilo spawned before this host was imported (``fsm.serve.launch``): the first start
        waits for it instead of spawning one; the launcher kills it if no start took it."""
        self.values = values
        self.log = log
        capture_stdlib(log)
        capture_stdlib(log, "uvicorn", logging.WARNING)
        capture_asyncio(log)  # folded: a lost peer makes asyncio warn on every write
        self.clock = RealClock()
        self.spec = agent_spec(settings.agent)
        identity = Identity(
            wrapper_id=settings.wrapper_id or f"wrp_{uuid.uuid4().hex[:16]}",
            agent_session=settings.agent_session,
            user_id=settings.user_id,
            session_id=settings.session_id,
            version=settings.version or WRAPPER_VERSION,
        )
        self.core = WrapperCore(
            self.clock,
            values,
            identity,
            self._on_action,
            outbox=Outbox(
                settings.outbox_frames,
                settings.outbox_bytes,
                frame_bytes=settings.limits.frame_bytes,
                frame_depth=settings.limits.frame_depth,
            ),
            on_record=self._on_record,
            agent=self.spec.name,
            dialect=self.spec.dialect,
            capabilities=self.spec.capabilities,
        )
        self.server: AgentServer | None = None
        self.client: AgentClient | None = None
        self.agent_session_id: str | None = None
        self.spawn_scope: anyio.CancelScope | None = None
        self.subscriptions: dict[int, anyio.CancelScope] = {}
        self.ingest: IngestConnection | None = None
        self.exit_code: int | None = None
        self.done = anyio.Event()
        self.api_port: int | None = None
        self._tg: TaskGroup | None = None
        self.auto_commits: dict[str, PromptCommand] = {}
        """Prompts that asked for auto-commit, until their turn ends."""
        self.agent_message_ids: OrderedDict[str, str] = OrderedDict()
        """Our message id → the agent's message id its first submission used
        (``_agent_message_id``)."""
        self._in_batch = False
        self._acked: anyio.Event | None = None

    # -- lifetime -------------------------------------------------------------------------------

    async def run(self) -> int:
        self.log.info(
            "starting",
            wrapper_id=self.core.identity.wrapper_id,
            version=self.core.identity.version,
            session_id=self.settings.session_id,
            timers={k: self.values[k] for k in self.values},
            overridden=self.values.overridden(),
        )
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.settings.listen_host else socket.AF_INET,
            socket.SOCK_STREAM,
            socket.IPPROTO_TCP,  # asyncio sets TCP_NODELAY only on sockets that say TCP
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.listen_host, self.settings.listen_port))
        sock.listen(128)  # connections queue from now on: the port we log is already usable
        self.api_port = sock.getsockname()[1]
        app = build_app(self.core, self.settings.token, self._agent_info, self.settings.limits)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                log_config=None,  # uvicorn's own lines go through our JSON log (capture_stdlib)
                lifespan="off",
                access_log=False,
                ws_max_size=self.settings.limits.frame_bytes,
                limit_concurrency=self.settings.limits.connections,
            )
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.clock.run)
            start_guarded(tg, self.log, "job API", lambda: server.serve(sockets=[sock]))
            start_guarded(
                tg,
                self.log,
                "silent connection reaper",
                lambda: reap_silent_connections(server, self.values["job_first_request"]),
            )
            tg.start_soon(self._signals)
            self.log.info(
                "job API listening",
                url=f"http://{self.settings.listen_host}:{self.api_port}",
                port=self.api_port,
            )
            # Everything built so far (modules, the app, the machines' declarations) lives as
            # long as the process: keep the collector from re-scanning it in every full pass,
            # a pause of tens of milliseconds in the middle of the event stream.
            settle_collector()
            self.core.start()
            await self.done.wait()
            server.should_exit = True
            with anyio.move_on_after(2):
                while server.started and not server.should_exit:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        code = self.exit_code if self.exit_code is not None else 0
        self.log.info("exiting", code=code)
        return code

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            # Open now, so every later signal reaches the receiver; the ones before it were held.
            held, self.early_signals = self.early_signals, []
            for signum in held:
                self._on_signal(signum)
            async for signum in signals:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGUSR1:
            self.log.info("SIGUSR1: recycling the ingest connection")
            self.core.recycle_ingest()
        else:
            self.log.info("stopping on signal", signal=signal.Signals(signum).name)
            if self.exit_code is None:
                self.exit_code = 0
            self.core.stop()
            if self.core.wrapper.terminal:
                self.done.set()

    def _start(self, what: str, work: Callable[[], Awaitable[Any]]) -> None:
        start_guarded(self._tg, self.log, what, work)

    def _on_record(self, record: Record) -> None:
        self.log.record(record)
        if record.machine == "turn" and record.kind == "transition":
            command = self.auto_commits.get(record.machine_id.removeprefix("turn:"))
            if command is not None and record.dest in ("completed", "failed", "cancelled"):
                del self.auto_commits[command.message_id]
                if record.dest == "completed":
                    self._start("auto-commit", lambda: self._auto_commit(command))

    async def _auto_commit(self, command: PromptCommand) -> None:
        mid = command.message_id
        self.core.note("auto_commit_started", {"message_id": mid})

        async def generate() -> str:
            if self.client is None:
                return ""
            answer = await self.client.commit_message(str(self.settings.workdir))
            return str(answer.get("message") or "")

        result = await auto_commit(
            self.settings.workdir,
            command.prompt,
            generate,
            private_paths=[self.settings.state_dir],
            run_as=self.settings.agent_run_as,
        )
        self.log.info("auto-commit", message_id=mid, **result)
        self.core.note("auto_commit", {"message_id": mid, **result})

    def _agent_info(self) -> dict[str, Any]:
        server = self.server
        return {
            "port": server.port if server else None,
            "pid": server.pid if server else None,
            "url": server.url if server else None,
            "session": self.agent_session_id,
            "name": self.spec.name,
            "capabilities": sorted(self.spec.capabilities),
            "healthy": self.core.wrapper.state in ("ready", "running", "idle"),
        }

    # -- actions --------------------------------------------------------------------------------

    def _on_action(self, effect: Effect) -> None:
        if isinstance(effect, Transmit):
            if self.ingest is not None:
                self.ingest.send(effect.frames)
        elif isinstance(effect, SpawnAgent):
            self._start("spawning Kilo", self._spawn)
        elif isinstance(effect, StopAgent):
            self._start("stopping Kilo", self._stop_agent)
        elif isinstance(effect, Subscribe):
            self._start("event subscription", lambda: self._subscribe(effect.generation))
        elif isinstance(effect, Unsubscribe):
            scope = self.subscriptions.pop(effect.generation, None)
            if scope is not None:
                scope.cancel()
        elif isinstance(effect, ProbeHealth):
            self._start("health probe", lambda: self._probe(effect.generation))
        elif isinstance(effect, Reconcile):
            self._start("reconcile", lambda: self._reconcile(effect.generation))
        elif isinstance(effect, PromptAgent):
            self._start("prompt", lambda: self._prompt(effect))
        elif isinstance(effect, AbortAgentTurn):
            self._start("abort", self._abort)
        elif isinstance(effect, AgentCall):
            self._start(effect.method, lambda: self._agent_call(effect))
        elif isinstance(effect, OpenSocket):
            self._open_socket()
        elif isinstance(effect, CloseSocket):
            self._start("closing ingest", self._close_socket)
        elif isinstance(effect, ExitProcess):
            self._exit(effect)
        else:
            self.log.warning("unhandled action", action=type(effect).__name__)

    async def _spawn(self) -> None:
        s = self.settings
        with anyio.CancelScope() as scope:
            self.spawn_scope = scope
            first, self.early_agent = self.early_agent, None
            try:
                server = await start_agent(
                    first=first,
                    workdir=s.workdir,
                    state_dir=s.state_dir,
                    config=s.agent_config,
                    agent_bin=s.agent_bin,
                    startup_timeout=self.values["agent_startup"],
                    pass_env=s.agent_pass_env,
                    run_as=s.agent_run_as,
                    spec=self.spec,
                )
            except Exception as exc:
                self.log.error("Kilo did not start", error=f"{type(exc).__name__}: {exc}")
                self.core.agent_exited(None)
                return
            finally:
                self.spawn_scope = None
        if scope.cancel_called:
            return
        self.server = server
        self.client = AgentClient(server.url, server.password, spec=self.spec)
        self.log.info(
            "Kilo is healthy",
            agent=self.spec.name,
            port=server.port,
            pid=server.pid,
            startup=round(server.healthy_after, 3),
        )
        try:
            self.agent_session_id = await self._ensure_session(self.client)
        except Exception as exc:
            self.log.error("cannot open the agent session", error=f"{type(exc).__name__}: {exc}")
            await server.stop(self.values["agent_stop_grace"])
            self.server = None
            self.core.agent_exited(None)
            return
        self.core.agent_ready(self.agent_session_id)
        code = await server.wait()
        if self.server is server:  # an exit nobody asked for
            self.log.warning("Kilo exited", code=code)
            self.server = None
            self.core.agent_exited(code)

    async def _ensure_session(self, client: AgentClient) -> str:
        """Resume the agent's own Kilo session when it still exists, else create one.

        Which session is ours: the one this process already used (a Kilo-only restart), else the one
        recorded for the agent-session name in the state dir (``SESSIONS_FILE``), else the name
        itself when it is a Kilo id (``ses…``; a gone one is replaced and the replacement recorded,
        so it is not replaced again at every start). The control plane names agent sessions
        ``agent_s_…``, which Kilo cannot take as an id, so without the record every wrapper restart
        opened a new, empty conversation. The record lives in the state dir because Kilo's own
        database lives there too (``start_agent``): the record and the conversation it points at
        survive, or are wiped, together; it is outside the workspace, so the agent cannot edit it.
        Kilo's session title was not used to find it: a title is the user's to rename (``PATCH
        /session/{id}``), ``GET /session`` only searches titles as text (no exact match, never
        metadata) and lists one directory's sessions, and a lookup would cost a listing per start.

        A session Kilo says it does not have (an HTTP error answer, e.g. 404 after its data was
        wiped) is replaced by a new one, recorded in its place. A Kilo that does not answer at all
        raises instead: creating a session then would silently fork the conversation, while raising
        makes the caller restart Kilo and try again.
        """
        name = self.settings.agent_session
        if self.agent_session_id is not None:
            candidates = [self.agent_session_id]
        else:
            candidates = [recorded_sessions(self.settings.state_dir).get(name) or "", name]
        for wanted in dict.fromkeys(candidates):
            if not wanted.startswith("ses") or not ID_PATTERN.fullmatch(wanted):
                continue
            try:
                session = (await client.get_session(wanted)).id
            except AgentError as exc:
                self.log.warning("agent session is gone", agent_session_id=wanted, error=str(exc))
            else:
                self._record_session(session)
                return session
        session = (await client.create_session()).id
        self._record_session(session)
        return session

    def _record_session(self, agent_session_id: str) -> None:
        """Record the agent-session → Kilo session pair; a failed write is logged, not fatal (the
        conversation goes on; only a later wrapper restart would start a new one)."""
        try:
            record_session(self.settings.state_dir, self.settings.agent_session, agent_session_id)
        except OSError as exc:
            self.log.warning(
                "cannot record the agent session", agent_session_id=agent_session_id, error=str(exc)
            )

    async def _stop_agent(self) -> None:
        if self.spawn_scope is not None:
            self.spawn_scope.cancel()
        server, self.server = self.server, None
        code: int | None = None
        if server is not None:
            code = await server.stop(self.values["agent_stop_grace"])
        self.core.agent_exited(code)

    async def _subscribe(self, generation: int) -> None:
        client = self.client
        if client is None:
            self.core.stream_ended(generation)
            return
        loop = asyncio.get_running_loop()
        with anyio.CancelScope() as scope:
            self.subscriptions[generation] = scope
            try:
                async with client.subscribe_events() as events:
                    async for event in events:
                        if not self._in_batch:
                            # The events of one network read are parsed without yielding to
                            # the loop: a callback queued now runs once they all are.
                            self._in_batch = True
                            self.core.begin_batch()
                            loop.call_soon(self._end_batch)
                        self.core.agent_event(generation, event)
                        if self.core.window_full:
                            await self._wait_for_acks()
            except Exception as exc:
                self.log.info(
                    "event stream ended",
                    generation=generation,
                    error=f"{type(exc).__name__}: {exc}",
                )
            finally:
                self.subscriptions.pop(generation, None)
        if not scope.cancel_called:
            self.core.stream_ended(generation)

    async def _wait_for_acks(self) -> None:
        """Back-pressure: stop reading Kilo until the control plane acknowledges, for at most
        ``ACK_WAIT`` seconds (a control plane that stopped answering must not stall the agent
        link's own liveness: the outbox's drop policy takes over)."""
        try:
            with anyio.move_on_after(ACK_WAIT):
                while self.core.window_full:
                    self._acked = anyio.Event()
                    await self._acked.wait()
        finally:
            self._acked = None

    def _control_frame(self, frame: ControlFrame) -> None:
        self.core.control_frame(frame)
        if self._acked is not None:
            self._acked.set()

    def _end_batch(self) -> None:
        self._in_batch = False
        self.core.end_batch()

    async def _probe(self, generation: int) -> None:
        client = self.client
        timeout = self.values["health_probe_timeout"]
        healthy = False
        if client is not None:
            with anyio.move_on_after(timeout + 1):
                try:
                    healthy = await client.health(timeout=timeout)
                except Exception:
                    healthy = False
                self.core.probe_result(generation, healthy)
                return
        # No answer at all: the machine's own probe timer decides; nothing to report.

    async def _reconcile(self, generation: int) -> None:
        client, session = self.client, self.agent_session_id
        if client is None or session is None:
            return
        status = await client.session_status()
        busy = session in status
        pending = await self._pending_requests(client, session) if busy else None
        reason, error = "completed", ""
        if not busy:
            messages = await client.session_messages(session, limit=1)
            if messages:
                info = messages[-1].info
                if info.error is not None:
                    reason, error = "error", info.error_text()
            last = messages[-1].info if messages else None
            if not self.core.dialect.resync_idle_closes(
                last.role if last else None, last.parentID if last else None
            ):
                busy = True  # idle only because the agent has not started on our prompt yet
        self.core.reconciled(generation, busy, reason, error, pending)

    async def _pending_requests(self, client: AgentClient, session: str) -> dict[str, str] | None:
        """The session's permission requests and questions still waiting, as the agent lists
        them (id -> kind): what the stream may have missed while it was down. None when the
        agent cannot say (the core then keeps what its events told it)."""
        try:
            permissions = await client.pending_permissions()
            questions = await client.pending_questions()
        except (AgentError, httpx.HTTPError, msgspec.DecodeError) as exc:
            self.log.warning("cannot list pending requests", error=f"{type(exc).__name__}: {exc}")
            return None
        pending = {p.id: "permission" for p in permissions if p.sessionID in ("", session)}
        pending.update({q.id: "question" for q in questions if q.sessionID in ("", session)})
        return pending

    async def _prompt(self, action: PromptAgent) -> None:
        client, session = self.client, self.agent_session_id
        command = action.command
        if command.auto_commit:
            self.auto_commits[command.message_id] = command
        if client is None or session is None:
            return  # the agent is gone; the machines already handle that turn
        # Kilo makes a session's last model sticky: always name one (README §4).
        model = command.model or self.settings.agent_config.get("model")
        message_id = self._agent_message_id(command.message_id)
        slash = parse_slash(command.prompt)
        try:
            if slash is None:
                self.core.dialect.prompted(message_id)  # the idle blip's guard (fsm.agents)
                await client.prompt_async(
                    session,
                    command.prompt,
                    model=model,
                    agent=command.agent,
                    variant=command.variant,
                    message_id=message_id,
                    files=command.files,
                )
            elif slash.call == "summarize":
                if not model:
                    raise ValueError("/compact needs a model: none configured or sent")
                await client.summarize(session, model)
            else:
                await client.command(
                    session,
                    slash.name,
                    slash.arguments,
                    model=model,
                    message_id=message_id,
                    files=command.files,
                )
        except Exception as exc:
            self.core.prompt_failed(command.message_id, f"{type(exc).__name__}: {exc}")

    def _agent_message_id(self, message_id: str) -> str:
        """The Kilo message id for our ``message_id``: made at its first submission, the same for
        every resubmission, so Kilo replaces the stored user message instead of adding a second
        one. It cannot be a pure function of our id: Kilo orders messages by id, so the id must
        carry the time of the first submission (``ascending_id``); that time is what is kept."""
        known = self.agent_message_ids.get(message_id)
        if known is None:
            known = ascending_id("msg", int(time.time() * 1000), message_id)
            self.agent_message_ids[message_id] = known
            while len(self.agent_message_ids) > MESSAGE_IDS_KEPT:
                self.agent_message_ids.popitem(last=False)
        return known

    async def _abort(self) -> None:
        if self.client is not None and self.agent_session_id is not None:
            await self.client.abort(self.agent_session_id)

    async def _agent_call(self, call: AgentCall) -> None:
        if self.client is None:
            return
        method = getattr(self.client, call.method)
        await method(**call.args)

    def _open_socket(self) -> None:
        conn = IngestConnection(
            self.settings.ingest_url,
            self.settings.token,
            on_open=self.core.socket_open,
            on_failed=self._socket_failed,
            on_closed=self._socket_closed,
            on_frame=self._control_frame,
            connect_timeout=self.values["ingest_connect_timeout"],
        )
        self.ingest = conn
        self._start("ingest connection", conn.run)

    def _socket_failed(self, reason: str) -> None:
        self.log.info("ingest connect failed", reason=reason)
        self.core.socket_failed()

    def _socket_closed(self, reason: str) -> None:
        self.log.info("ingest connection closed", reason=reason)
        self.core.socket_closed()
        if self._acked is not None:
            self._acked.set()  # nothing to wait for any more

    async def _close_socket(self) -> None:
        conn = self.ingest
        if conn is None:
            return
        if self.core.wrapper.state in ("stopping", "stopped"):
            # Stopping: give the control plane a bounded chance to acknowledge what is left.
            with anyio.move_on_after(self.settings.flush_bound):
                while len(self.core.outbox):
                    await anyio.sleep(0.05)
        conn.close()

    def _exit(self, effect: ExitProcess) -> None:
        self.log.info("exit requested", code=effect.code, reason=effect.reason)
        if self.exit_code is None:
            self.exit_code = effect.code
        if self.core.wrapper.terminal:
            self._start("final flush", self._final_flush)
        else:
            self.core.stop()

    async def _final_flush(self) -> None:
        with anyio.move_on_after(self.settings.flush_bound):
            while len(self.core.outbox):
                await anyio.sleep(0.05)
        self.done.set()
