"""The embedded runtime: each session's wrapper is a local child process group.

Theory of operation
-------------------
``start`` launches ``fsm-agent serve`` (by default ``python -m fsm serve``) in a new session, so
the wrapper and everything it spawns form one process group that can be signalled as a unit.

The wrapper runs next to an untrusted agent of the same uid, so what it is given matters:

* **The token goes through an inherited pipe** (``--token-fd=N``): written into ``os.pipe()``,
  the write end closed, the read end passed with ``pass_fds`` and closed here once the child has
  it. Never argv (``ps`` shows it to every local user), never the environment (every child of the
  wrapper inherits it and ``/proc/<pid>/environ`` shows it for good), never a file.
* **The environment is an allow-list** (``WRAPPER_ENV``): what ``python -m fsm serve`` from this
  venv and a login-like shell need, each agent's ``AgentSpec.bin_env``, the names the config's
  ``[agent] pass_env`` lists (the wrapper hands them on to the agent) and ``spec.extra_env``.
  Nothing else of the control plane's: not its API key, not whatever else its operator exported.
* **The agent's state goes to** ``state_dir/kilo-state/<session_id>`` (``--state-dir``; the
  folder keeps the name it had when Kilo was the only agent, so existing state is found), not
  into the workspace, where the agent would read and rewrite it as project files.

Under one uid the agent can still read whatever files the control plane can; the boundary is a
separate user for the agent (issue 14).

Every child has one watcher task in the runtime's task group. The watcher is the only place an
exit is observed: it reaps the child, kills whatever is left of its group (a wrapper's group does
not outlive the wrapper), appends a footer to the log and calls ``on_exit(session_id, code)`` —
exactly once per child, whether the exit was a crash or asked for by ``stop``. ``stop`` therefore
only sends signals (SIGTERM to the group, SIGKILL after ``grace``) and waits for the watcher.

The runtime is an async context manager because it owns tasks and processes: leaving it stops
every child (SIGTERM, then SIGKILL after ``exit_grace``), and if the owner is cancelled outright the
watchers kill their children at once. Nothing outlives the ``async with`` block.

Each wrapper's stdout and stderr are appended to ``log_dir/<session_id>.log``, between header and
footer lines written by the runtime, so one file tells the story of every start and exit.

Wrappers outlive a control plane that crashes (they are in their own sessions, and they reconnect
to its successor). Each start writes ``state_dir/pids/<session_id>.json`` (pid + kernel start
time); the successor ``adopt``s a session's live wrapper from it, so it can still be stopped and
its exit is still reported (by polling, since it is not our child), and ``start`` kills a live
leftover no one adopted rather than run two wrappers for one session.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import anyio
from anyio.abc import Process, TaskGroup

from adapters.agents.registry import AGENTS
from adapters.environment import LOCALE_PREFIX, LOGIN_ENV
from adapters.pidfile import (
    kill_stale_group,
    live_pid,
    process_start_time,
    remove_pidfile,
    signal_group,
    write_pidfile,
)
from adapters.runtime.base import (
    TOKEN_ENV,
    OnExit,
    RuntimePortError,
    WrapperAlreadyRunningError,
    WrapperSpec,
    WrapperStartError,
    stop_all,
)
from fsm.settings.config import ConfigError, read_toml
from fsm.settings.file import agent_table
from fsm.settings.secrets import API_KEY_ENV

__all__ = ["API_KEY_ENV", "DEFAULT_COMMAND", "WRAPPER_ENV", "LocalRuntime"]

log = logging.getLogger("fsm_agent.runtime")

DEFAULT_COMMAND: tuple[str, ...] = (sys.executable, "-m", "fsm", "serve")
WRAPPER_ENV = LOGIN_ENV | {
    # ``python -m fsm serve`` must find this venv's packages.
    "PYTHONPATH",
    "VIRTUAL_ENV",
    # Which agent binary to run, when --agent-bin does not say: each agent's own variable.
    *(spec.bin_env for spec in AGENTS.values()),
}
"""Variables of the control plane's environment a wrapper inherits by name (plus ``LC_*``)."""
TOKEN_PIPE_MAX = 4096
"""A pipe holds at least one page with no reader, so writing the token can never block."""


@dataclass(eq=False)
class _Child:
    session_id: str
    process: Process
    log_path: Path
    exited: anyio.Event
    code: int | None = None


@dataclass(eq=False)
class _Orphan:
    """A wrapper started by a previous control plane, adopted through its pidfile."""

    session_id: str
    pid: int
    start_time: int
    exited: anyio.Event


ORPHAN_POLL = 0.2
"""How often an adopted wrapper (not our child: no wait() possible) is checked for exit."""


def _check_session_id(session_id: str) -> None:
    # The id names a directory and a log file: it must not climb out of base_dir or log_dir.
    if not session_id or session_id in (".", "..") or "/" in session_id or "\0" in session_id:
        raise WrapperStartError(
            f"session id {session_id!r} cannot name a directory; use letters, digits, '_' or '-'"
        )


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _token_pipe(token: str) -> int:
    """The read end of a pipe holding ``token`` and then EOF (the write end is closed)."""
    read, write = os.pipe()
    try:
        os.write(write, token.encode())  # at most TOKEN_PIPE_MAX bytes: fits, never blocks
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
    return read


def _config_pass_env(config: Path | None) -> list[str]:
    """The names ``[agent] pass_env`` lists in the wrapper's config (or an older name of the
    table an agent declares). An unreadable or invalid file gives none: the wrapper reads the
    same file and reports it."""
    if config is None:
        return []
    try:
        names = agent_table(config, read_toml(config)).get("agent", {}).get("pass_env", [])
    except (ConfigError, AttributeError):
        return []
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and not n.startswith("FSM_AGENT_")]


class LocalRuntime:
    """``RuntimePort`` for wrappers running as local child process groups."""

    def __init__(
        self,
        base_dir: Path,
        on_exit: OnExit,
        *,
        command: list[str] | None = None,
        log_dir: Path | None = None,
        exit_grace: float = 10.0,
        state_dir: Path | None = None,
    ) -> None:
        """``base_dir`` holds the fallback directory of a session without a workspace;
        ``state_dir`` (default ``base_dir``) the runtime's own files: pidfiles, logs (unless
        ``log_dir``) and each wrapper's Kilo state. Give the control plane's state directory, so
        that none of it lies in the tree workspaces live in. ``command`` replaces
        ``python -m fsm serve`` (tests use stand-ins); the session's arguments are appended to
        it. ``exit_grace`` is the SIGTERM→SIGKILL delay used when the context manager exits.
        """
        self.base_dir = Path(base_dir)
        self.state_dir = Path(state_dir) if state_dir is not None else self.base_dir
        self.log_dir = Path(log_dir) if log_dir is not None else self.state_dir / "logs"
        self.command = list(command) if command is not None else list(DEFAULT_COMMAND)
        self.exit_grace = exit_grace
        self._on_exit = on_exit
        self._children: dict[str, _Child] = {}
        self._orphans: dict[str, _Orphan] = {}
        self.pid_dir = self.state_dir / "pids"
        self._starting: set[str] = set()
        self._tg: TaskGroup | None = None
        self._closing = False

    # -- lifetime ---------------------------------------------------------------------------------

    async def __aenter__(self) -> LocalRuntime:
        if self._tg is not None or self._closing:
            raise RuntimePortError("a LocalRuntime can be entered only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closing = True
        assert self._tg is not None
        # (A cancelled owner has already made the watchers SIGKILL their children; see _watch.)
        await stop_all(self, [*self._children, *self._orphans], self.exit_grace)
        return await self._tg.__aexit__(exc_type, exc, tb)

    # -- the port ---------------------------------------------------------------------------------

    def running(self, session_id: str) -> bool:
        return (
            session_id in self._children
            or session_id in self._starting
            or session_id in self._orphans
        )

    def pid(self, session_id: str) -> int | None:
        """The wrapper's process id (also its process group id), None if it is not running."""
        child = self._children.get(session_id)
        if child is not None:
            return child.process.pid
        orphan = self._orphans.get(session_id)
        return orphan.pid if orphan is not None else None

    def adopt(self, session_id: str) -> int | None:
        """Take charge of the session's wrapper left running by a previous owner; its pid.

        None if there is none (no pidfile, or its process is gone or is another process now).
        """
        _check_session_id(session_id)
        if self._tg is None or self._closing or self.running(session_id):
            return None
        found = live_pid(self._pidfile(session_id))
        if found is None:
            self._pidfile(session_id).unlink(missing_ok=True)
            return None
        orphan = _Orphan(session_id, found[0], found[1], anyio.Event())
        self._orphans[session_id] = orphan
        self._tg.start_soon(self._watch_orphan, orphan, name=f"adopted wrapper {session_id}")
        log.info(
            "adopted the running wrapper of session %s: pid %d",
            session_id,
            orphan.pid,
            extra={"session": session_id, "pid": orphan.pid, "adopted": True},
        )
        return orphan.pid

    def _pidfile(self, session_id: str) -> Path:
        return self.pid_dir / f"{session_id}.json"

    def agent_state_dir(self, session_id: str) -> Path:
        """Where the session's wrapper keeps the agent's state: beside the runtime's other files."""
        return (self.state_dir / "kilo-state" / session_id).resolve()

    def argv(self, spec: WrapperSpec, workdir: Path, token_fd: int) -> list[str]:
        """The wrapper's command line. ``--opt=value`` so a value starting with '-' stays a value;
        paths absolute because the child runs in ``workdir``, not in our directory. The token is
        not in it: ``token_fd`` is the inherited pipe it is read from."""
        args = [
            f"--agent-session={spec.agent_session}",
            f"--user-id={spec.user_id}",
            f"--session-id={spec.session_id}",
            f"--ingest-url={spec.ingest_url}",
            f"--workdir={workdir}",
            f"--token-fd={token_fd}",
            f"--state-dir={self.agent_state_dir(spec.session_id)}",
        ]
        if spec.config is not None:
            args.append(f"--config={spec.config.resolve()}")
        binary = spec.agent_bin
        if binary is not None:
            if os.sep in binary and not os.path.isabs(binary):
                binary = os.path.abspath(binary)
            args.append(f"--agent-bin={binary}")
        if spec.version is not None:
            args.append(f"--version={spec.version}")
        return [*self.command, *args]

    async def start(self, spec: WrapperSpec) -> None:
        """Launch the session's wrapper in its own process group and watch it."""
        sid = spec.session_id
        if self._tg is None or self._closing:
            raise RuntimePortError(
                f"cannot start the wrapper of session {sid!r}: the runtime is not running "
                "(use `async with LocalRuntime(...)`, and not after it exits)"
            )
        _check_session_id(sid)
        if self.running(sid):
            pid = self.pid(sid)
            raise WrapperAlreadyRunningError(
                f"the wrapper of session {sid!r} is already running"
                + (f" (pid {pid})" if pid is not None else " (starting)")
                + "; stop it first, or use restart()"
            )
        if TOKEN_ENV in spec.extra_env or API_KEY_ENV in spec.extra_env:
            raise WrapperStartError(
                f"session {sid!r}: extra_env must not set {TOKEN_ENV} or {API_KEY_ENV}; the "
                "token comes from spec.token, through a pipe"
            )
        if not spec.token:
            raise WrapperStartError(f"session {sid!r}: the wrapper token is empty")
        if len(spec.token.encode()) > TOKEN_PIPE_MAX:
            raise WrapperStartError(
                f"session {sid!r}: the wrapper token is longer than {TOKEN_PIPE_MAX} bytes"
            )
        self._starting.add(sid)
        try:
            if kill_stale_group(self._pidfile(sid)):
                log.warning(
                    "killed a leftover wrapper of session %s nobody adopted",
                    sid,
                    extra={"session": sid},
                )
            child = await self._spawn(spec)
        finally:
            self._starting.discard(sid)
        self._children[sid] = child
        try:
            write_pidfile(self._pidfile(sid), child.process.pid)
        except OSError as exc:  # adoption after a crash is lost, the wrapper is not
            log.warning("cannot write the pidfile of session %s: %s", sid, exc)
        self._tg.start_soon(self._watch, child, name=f"wrapper watcher {sid}")
        if self._closing:
            # The runtime began closing while this wrapper was being launched; its stoppers did
            # not see it, so stop it here or it would outlive the runtime.
            with anyio.CancelScope(shield=True):
                await self.stop(sid, self.exit_grace)
            raise RuntimePortError(
                f"the runtime closed while the wrapper of session {sid!r} was starting; stopped it"
            )
        log.info(
            "wrapper of session %s started: pid %d, log %s",
            sid,
            child.process.pid,
            child.log_path,
            extra={"session": sid, "pid": child.process.pid, "log": str(child.log_path)},
        )

    async def stop(self, session_id: str, grace: float, *, asked: bool = False) -> int | None:
        """SIGTERM the wrapper's group, SIGKILL it after ``grace`` seconds; its exit code.

        With ``asked`` (the wrapper was told to exit over its socket) it first gets ``grace`` to
        exit on its own. Returns None (and reports nothing) if the session has no running wrapper.
        """
        orphan = self._orphans.get(session_id)
        if orphan is not None:
            if asked:
                with anyio.move_on_after(max(grace, 0.0)):
                    await orphan.exited.wait()
            await self._stop_orphan(orphan, grace)
            return None
        child = self._children.get(session_id)
        if child is None:
            return None
        if asked:
            with anyio.move_on_after(max(grace, 0.0)):
                await child.exited.wait()
        if not child.exited.is_set():
            self._signal(child, signal.SIGTERM)
            with anyio.move_on_after(max(grace, 0.0)):
                await child.exited.wait()
        if not child.exited.is_set():
            log.warning(
                "wrapper of session %s still running %.1f s after SIGTERM; killing its group",
                session_id,
                grace,
                extra={"session": session_id, "pid": child.process.pid, "grace": grace},
            )
            self._signal(child, signal.SIGKILL)
            await child.exited.wait()
        return child.code

    # -- internals --------------------------------------------------------------------------------

    def _workdir(self, spec: WrapperSpec) -> Path:
        workdir = spec.workdir
        if not workdir.exists():
            # A session without a workspace still gets a private directory of its own, never the
            # control plane's current directory.
            workdir = self.base_dir / spec.session_id
            log.warning(
                "session %s: workdir %s does not exist; using %s",
                spec.session_id,
                spec.workdir,
                workdir,
                extra={"session": spec.session_id, "workdir": str(spec.workdir)},
            )
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WrapperStartError(
                f"session {spec.session_id!r}: cannot use {workdir} as the working directory: {exc}"
            ) from exc
        return workdir.resolve()

    def _environment(self, spec: WrapperSpec) -> dict[str, str]:
        """The wrapper's environment: ``WRAPPER_ENV`` and ``LC_*`` from ours, the config's
        ``[agent] pass_env`` names (the wrapper passes them on to the agent), then
        ``spec.extra_env``.
        Never the token, never our API key."""
        wanted = WRAPPER_ENV | set(_config_pass_env(spec.config))
        env = {
            name: value
            for name, value in os.environ.items()
            if (name in wanted or name.startswith(LOCALE_PREFIX))
            and name not in (TOKEN_ENV, API_KEY_ENV)
        }
        env.update(spec.extra_env)
        # Output goes to a file: unbuffered, so a crash does not swallow the last lines.
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def _spawn(self, spec: WrapperSpec) -> _Child:
        sid = spec.session_id
        workdir = self._workdir(spec)
        log_path = self.log_dir / f"{sid}.log"
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.agent_state_dir(sid).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            log_file = log_path.open("ab")
        except OSError as exc:
            raise WrapperStartError(
                f"session {sid!r}: cannot open the log {log_path}: {exc}"
            ) from exc
        token_fd = _token_pipe(spec.token)
        try:
            with log_file:
                return await self._launch(spec, workdir, log_file, log_path, token_fd)
        finally:
            os.close(token_fd)  # the child has its copy (or there is no child)

    async def _launch(
        self, spec: WrapperSpec, workdir: Path, log_file: BinaryIO, log_path: Path, token_fd: int
    ) -> _Child:
        sid = spec.session_id
        argv = self.argv(spec, workdir, token_fd)
        log_file.write(f"--- {_stamp()} starting: {shlex.join(argv)}\n".encode())
        log_file.flush()
        try:
            # Shielded: a cancellation after the fork must not leave an unwatched child.
            with anyio.CancelScope(shield=True):
                process = await anyio.open_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    env=self._environment(spec),
                    start_new_session=True,
                    pass_fds=(token_fd,),
                )
        except OSError as exc:
            raise WrapperStartError(
                f"cannot start the wrapper of session {sid!r} with {argv[0]!r}: {exc}"
            ) from exc
        return _Child(sid, process, log_path, anyio.Event())

    def _signal(self, child: _Child, signum: signal.Signals) -> None:
        try:
            os.killpg(child.process.pid, signum)
        except ProcessLookupError:
            pass  # the whole group is already gone
        except PermissionError as exc:  # pragma: no cover - only if the pid was reused
            log.error("cannot signal process group %d: %s", child.process.pid, exc)

    async def _watch(self, child: _Child) -> None:
        try:
            code = await child.process.wait()
        except anyio.get_cancelled_exc_class():
            # The owner is gone without stopping us: take the child with us, and still report it.
            with anyio.CancelScope(shield=True):
                self._signal(child, signal.SIGKILL)
                code = await child.process.wait()
                self._reaped(child, code)
            raise
        self._reaped(child, code)

    async def _stop_orphan(self, orphan: _Orphan, grace: float) -> None:
        if not orphan.exited.is_set():
            signal_group(orphan.pid, signal.SIGTERM)
            with anyio.move_on_after(max(grace, 0.0)):
                await orphan.exited.wait()
        if not orphan.exited.is_set():
            signal_group(orphan.pid, signal.SIGKILL)
            await orphan.exited.wait()

    async def _watch_orphan(self, orphan: _Orphan) -> None:
        try:
            while process_start_time(orphan.pid) == orphan.start_time:
                await anyio.sleep(ORPHAN_POLL)
        finally:
            with anyio.CancelScope(shield=True):
                sid = orphan.session_id
                signal_group(orphan.pid, signal.SIGKILL)
                if self._orphans.get(sid) is orphan:
                    del self._orphans[sid]
                remove_pidfile(self._pidfile(sid), orphan.pid)
                log.info(
                    "adopted wrapper of session %s exited",
                    sid,
                    extra={"session": sid, "pid": orphan.pid, "code": None},
                )
                try:
                    self._on_exit(sid, None)  # not our child: its exit code is not ours to read
                except Exception:
                    log.exception("on_exit handler failed for session %s", sid)
                finally:
                    orphan.exited.set()

    def _reaped(self, child: _Child, code: int) -> None:
        sid = child.session_id
        # The group dies with its leader: grandchildren the wrapper left behind have no owner.
        self._signal(child, signal.SIGKILL)
        remove_pidfile(self._pidfile(sid), child.process.pid)
        if self._children.get(sid) is child:
            del self._children[sid]
        child.code = code
        try:
            with child.log_path.open("a+b") as log_file:
                # Start the footer on its own line even if the wrapper's last line was cut short.
                log_file.seek(0, os.SEEK_END)
                if log_file.tell() > 0:
                    log_file.seek(-1, os.SEEK_END)
                    if log_file.read(1) != b"\n":
                        log_file.write(b"\n")
                log_file.write(
                    f"--- {_stamp()} pid {child.process.pid} exited with code {code}\n".encode()
                )
        except OSError:
            pass  # the log is a convenience; losing its footer must not lose the exit
        log.info(
            "wrapper of session %s exited with code %s",
            sid,
            code,
            extra={"session": sid, "pid": child.process.pid, "code": code},
        )
        try:
            self._on_exit(sid, code)
        except Exception:
            # One session's handler failing must not take every other session's wrapper down
            # with the task group.
            log.exception("on_exit handler failed for session %s (code %s)", sid, code)
        finally:
            child.exited.set()
