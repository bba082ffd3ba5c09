"""The container runtime: each session's wrapper is a container of the Docker Engine (or Podman).

Theory of operation
-------------------
``start`` creates and starts one container per session from the configured image, labelled with
the session id and this control plane's id (``LABEL_SESSION``, ``LABEL_CONTROL``), named
``fsm-agent-<control>-<session>`` so the daemon itself refuses a second one, with the
``[runtime]`` limits (memory with no extra swap, CPUs, pids), the network mode, the session's
workspace at ``/workspace``, the wrapper's state and Kilo's (two directories kept across
containers, so a replaced wrapper resumes the conversation) and a private copy of the control
plane's config file (with the Kilo file it names) read-only at ``/etc/fsm-agent``. Its command is
the ``fsm-agent serve`` arguments; the image's entrypoint (tini → supervisor → ``fsm-agent
serve``) runs them.

**The token** is in neither argv nor the container's environment (``docker inspect`` shows both to
anyone with the socket, and every process of the container inherits the environment). It is a
0600 file in a per-session directory of the control plane's 0700 state directory, bind-mounted
*read-write* at ``/run/fsm-agent/secrets`` and passed as ``--token-file``. Its reader (the image's
supervisor, as root; or the wrapper itself when ``[runtime] user`` runs the container as that
uid, which then owns the file) removes it once read (``fsm.settings.secrets``): it is then gone
from the container *and* the host. A read-only mount would keep it readable there for the
container's whole life (a bind-mounted file cannot be unlinked: EBUSY/EROFS); a writable private
directory is the mount that does not stay readable. Whatever is left (a wrapper that died before
reading) is removed with the container. The workspace and Kilo's state are made the image's agent
uid's, the wrapper's state its fsm uid's (labels ``io.fsm-agent.agent-uid``, ``...fsm-uid``,
``...kilo-state``; see ``docs/container-image.md``), so each can write its own.

**Exits** come from one long-lived ``/events`` stream filtered on our label (no polling). A
``die`` makes the runtime inspect the container: ``State.OOMKilled`` → ``oom_killed``, a stop we
asked for → ``killed_by_us``, otherwise ``exited`` with ``State.ExitCode`` (128+N for signal N, as
the daemon reports it: 137 for SIGKILL and OOM); a container already gone (``docker rm -f``) →
``removed``. The last lines of its output are appended to ``logs/<session>.log``, the container is
removed, and only then is ``on_exit`` called: exactly once per container, by the one finisher task
that a ``die``, a ``destroy`` or a reconciliation may start. If the stream breaks (daemon restart)
it is reopened with ``since`` set to the last event seen, so the daemon replays what it still
holds, and every tracked container is inspected (reconciliation), so an exit the stream lost is
still reported.

**Adoption.** Containers outlive a control plane that crashes. Entering the runtime subscribes to
events first and then lists this control plane's containers (its id persists in the state
directory), so none can exit unseen in between; ``adopt(session)`` (synchronous, as the port
requires) takes a running one from that list. Exited leftovers are removed at once, and
``start`` kills and removes a session's leftover nobody adopted rather than run two wrappers.

**Podman** (``podman system service``, ``[runtime] socket``) runs the same code, measured with
4.3.1 here: its event filter knows only its own names (``died``), so the stream is filtered by
label alone and the exit events are picked here (``remove`` is its ``destroy``); it reports no
OOM kill on cgroup v1 (``OOMKilled`` stays false: ``exited`` with 137); its error words differ
(``no such image: docker.io/library/x: image not known``); and it sets its own default ulimits
(nofile, nproc) instead of inheriting the engine's, which fails every start where the host's hard
limits are lower until ``default_ulimits`` in ``containers.conf`` lowers them.

``stop`` mirrors the local runtime: with ``asked`` the wrapper gets ``grace`` to leave on its own,
then SIGTERM (to tini, which forwards it), SIGKILL after ``grace``, and it returns after
``on_exit``. Leaving the ``async with`` stops every container.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from adapters.runtime.base import (
    TOKEN_ENV,
    ExitReason,
    OnExit,
    OnNotice,
    RuntimePortError,
    WrapperAlreadyRunningError,
    WrapperSpec,
    WrapperStartError,
    stop_all,
)
from adapters.runtime.docker_api import DockerAPI, DockerError
from adapters.runtime.local import _check_session_id, _config_pass_env, _stamp
from fsm.settings.config import ConfigError, read_toml
from fsm.settings.file import agent_table
from fsm.settings.runtime import RuntimeSettings
from fsm.settings.secrets import API_KEY_ENV

__all__ = [
    "AGENT_STATE_PATH",
    "CONFIG_PATH",
    "LABEL_CONTROL",
    "LABEL_SESSION",
    "SECRETS_PATH",
    "WORKSPACE_PATH",
    "WRAPPER_STATE_PATH",
    "DockerRuntime",
]

log = logging.getLogger("fsm_agent.runtime")

LABEL_SESSION = "io.fsm-agent.session"
LABEL_CONTROL = "io.fsm-agent.control-plane"
LABEL_FSM_UID = "io.fsm-agent.fsm-uid"
"""The image's label for the wrapper's uid: the wrapper's state directory is made that uid's."""
LABEL_AGENT_UID = "io.fsm-agent.agent-uid"
"""The image's label for the agent's uid: the workspace and Kilo's state are made that uid's."""
LABEL_AGENT_STATE = "io.fsm-agent.kilo-state"
"""The image's label for where the agent keeps its state (its conversation database); the value
keeps the name it had when Kilo was the only agent, so images built before are read alike."""
WORKSPACE_PATH = "/workspace"
WRAPPER_STATE_PATH = "/var/lib/fsm-agent"
"""The wrapper's ``--state-dir`` is ``WRAPPER_STATE_PATH/<session>`` (the image's default)."""
AGENT_STATE_PATH = "/var/lib/kilo"
"""The agent's state when the image's label does not say (the image's, Kilo's folder)."""
SECRETS_PATH = "/run/fsm-agent/secrets"
CONFIG_DIR = "/etc/fsm-agent"
CONFIG_PATH = f"{CONFIG_DIR}/config.toml"
TOKEN_NAME = "token"
KILL_WAIT = 10.0
"""After SIGKILL, how long the daemon gets to report the exit before it is inspected instead."""
RECONNECT_BACKOFF = (0.1, 5.0)
EXIT_EVENTS = frozenset({"die", "destroy", "remove"})
"""A container's end: ``die``, or its removal if that came first (``remove`` is Podman's name)."""
LOG_TAIL_LINES = 2000
LOG_TAIL_BYTES = 1024 * 1024


@dataclass(eq=False)
class _Container:
    session_id: str
    id: str
    name: str
    log_path: Path
    adopted: bool = False
    stopping: bool = False
    """``stop`` signalled it: its exit is ``killed_by_us``."""
    finishing: bool = False
    oom_events: int = 0
    """``oom`` events the daemon sent for it: processes the kernel killed at its memory limit."""
    exited: anyio.Event = field(default_factory=anyio.Event)
    code: int | None = None


def _valid_session_id(session_id: str) -> bool:
    try:
        _check_session_id(session_id)
    except WrapperStartError:
        return False
    return True


@dataclass(frozen=True)
class _Owners:
    """uid, gid of each mount's host side; None: leave it ours."""

    token: tuple[int, int] | None
    wrapper: tuple[int, int] | None
    """The wrapper's state directory and config copy."""
    agent: tuple[int, int] | None
    """The workspace and Kilo's state."""


def _chown(owner: tuple[int, int] | None, *paths: Path) -> None:
    if owner is None or owner == (os.geteuid(), os.getegid()):
        return
    for path in paths:
        os.chown(path, *owner, follow_symlinks=False)


def _chown_tree(owner: tuple[int, int] | None, root: Path) -> None:
    """The workspace and everything in it, the first time (a workspace already the agent's is
    left alone: walking a large tree on every start would cost seconds)."""
    if owner is None or owner == (os.geteuid(), os.getegid()):
        return
    info = root.stat()
    if (info.st_uid, info.st_gid) == owner:
        return
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(Path(folder) / name, *owner, follow_symlinks=False)
    os.chown(root, *owner)


class DockerRuntime:
    """``RuntimePort`` for wrappers running as containers of a Docker-compatible Engine API."""

    def __init__(
        self,
        settings: RuntimeSettings,
        on_exit: OnExit,
        *,
        state_dir: Path,
        base_dir: Path | None = None,
        image: str | None = None,
        command: list[str] | None = None,
        control_plane_id: str | None = None,
        exit_grace: float = 10.0,
        labels: dict[str, str] | None = None,
        on_notice: OnNotice | None = None,
    ) -> None:
        """``state_dir`` holds the runtime's files (control plane id, logs, each session's Kilo
        state and token directory); ``base_dir`` the fallback workspace of a session whose
        workdir is missing. ``image`` overrides ``settings.image``. ``command`` replaces the
        image's entrypoint (tests run stand-ins on a bare image); the wrapper's arguments follow
        it. ``control_plane_id`` defaults to one kept in ``state_dir``, so a restarted control
        plane finds its containers. ``labels`` are added to every container (tests' cleanup)."""
        self.settings = settings
        self.image = image or settings.image
        self.state_dir = Path(state_dir)
        self.base_dir = Path(base_dir) if base_dir is not None else self.state_dir / "sessions"
        self.log_dir = self.state_dir / "logs"
        self.command = list(command) if command is not None else None
        self.exit_grace = exit_grace
        self.extra_labels = dict(labels or {})
        self._control_plane_id = control_plane_id
        self._on_exit = on_exit
        self._on_notice = on_notice
        self._api = DockerAPI(settings.socket)
        self._boxes: dict[str, _Container] = {}
        self._by_id: dict[str, _Container] = {}
        self._leftovers: dict[str, tuple[str, int]] = {}
        """Running containers of ours found on entry: session → (container id, pid)."""
        self._starting: set[str] = set()
        self._tg: TaskGroup | None = None
        self._closing = False
        self._subscribed = anyio.Event()
        self._first_try = anyio.Event()
        self.last_start_seconds: float | None = None
        """Create → started, of the last start (measured for the bench and the logs)."""

    # -- lifetime ---------------------------------------------------------------------------------

    @property
    def control_plane_id(self) -> str:
        if self._control_plane_id is None:
            path = self.state_dir / "control-plane-id"
            try:
                self._control_plane_id = path.read_text().strip()
            except FileNotFoundError:
                self._control_plane_id = uuid.uuid4().hex[:16]
                self.state_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(self._control_plane_id + "\n")
        return self._control_plane_id

    async def __aenter__(self) -> DockerRuntime:
        if self._tg is not None or self._closing:
            raise RuntimePortError("a DockerRuntime can be entered only once")
        if not self.image:
            raise RuntimePortError(
                "no image for the docker runtime: give --image or [runtime] image"
            )
        self.control_plane_id  # noqa: B018 - created now, not inside a start
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._watch_events, name="docker events")
        # Adoption needs the list of leftovers before the host asks; the stream first, so that
        # none exits between the list and the subscription. A daemon that is down is not fatal:
        # the watcher keeps trying, and starts fail with the daemon's word meanwhile.
        with anyio.move_on_after(5.0):
            await self._first_try.wait()
        if self._subscribed.is_set():
            try:
                await self._find_leftovers()
            except DockerError as exc:
                log.error("cannot list the containers left by a previous control plane: %s", exc)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._closing = True
        assert self._tg is not None
        await stop_all(self, self._boxes, self.exit_grace)
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            await self._api.__aexit__(None, None, None)

    # -- the port ---------------------------------------------------------------------------------

    def running(self, session_id: str) -> bool:
        return session_id in self._boxes or session_id in self._starting

    def container(self, session_id: str) -> str | None:
        """The id of the session's container, None if it has none running."""
        box = self._boxes.get(session_id)
        return box.id if box is not None else None

    def adopt(self, session_id: str) -> int | None:
        """Take charge of the session's running container left by a previous control plane;
        the host pid of its init, or None if there is none."""
        _check_session_id(session_id)
        if self._tg is None or self._closing or self.running(session_id):
            return None
        found = self._leftovers.pop(session_id, None)
        if found is None:
            return None
        container, pid = found
        box = _Container(
            session_id, container, self._name(session_id), self._log_path(session_id), True
        )
        self._track(box)
        log.info(
            "adopted the running container of session %s: %s",
            session_id,
            container[:12],
            extra={"session": session_id, "container": container[:12], "adopted": True},
        )
        return pid

    async def start(self, spec: WrapperSpec) -> None:
        """Create and start the session's container; returns once it runs."""
        sid = spec.session_id
        if self._tg is None or self._closing:
            raise RuntimePortError(
                f"cannot start the wrapper of session {sid!r}: the runtime is not running "
                "(use `async with DockerRuntime(...)`, and not after it exits)"
            )
        _check_session_id(sid)
        if self.running(sid):
            raise WrapperAlreadyRunningError(
                f"the wrapper of session {sid!r} is already running"
                + (f" (container {self._boxes[sid].id[:12]})" if sid in self._boxes else "")
                + "; stop it first, or use restart()"
            )
        if TOKEN_ENV in spec.extra_env or API_KEY_ENV in spec.extra_env:
            raise WrapperStartError(
                f"session {sid!r}: extra_env must not set {TOKEN_ENV} or {API_KEY_ENV}; the "
                "token comes from spec.token, through a file"
            )
        if not spec.token:
            raise WrapperStartError(f"session {sid!r}: the wrapper token is empty")
        self._starting.add(sid)
        try:
            # Shielded: a cancelled caller must not leave a container nobody watches.
            with anyio.CancelScope(shield=True):
                box = await self._launch(spec)
        except DockerError as exc:
            raise WrapperStartError(
                f"cannot start the wrapper container of session {sid!r}: {exc}"
            ) from exc
        finally:
            self._starting.discard(sid)
        if self._closing:
            with anyio.CancelScope(shield=True):
                await self.stop(sid, self.exit_grace)
            raise RuntimePortError(
                f"the runtime closed while the wrapper of session {sid!r} was starting; stopped it"
            )
        log.info(
            "wrapper container of session %s started: %s (%s), %.3f s create → running",
            sid,
            box.name,
            box.id[:12],
            self.last_start_seconds or 0.0,
            extra={"session": sid, "container": box.id[:12], "image": self.image},
        )

    async def stop(self, session_id: str, grace: float, *, asked: bool = False) -> int | None:
        """SIGTERM the container, SIGKILL it after ``grace``; its exit code, once reported.

        With ``asked`` it first gets ``grace`` to exit on its own. None (and nothing reported)
        if the session has no container of ours."""
        box = self._boxes.get(session_id)
        if box is None:
            return None
        if asked:
            with anyio.move_on_after(max(grace, 0.0)):
                await box.exited.wait()
        if not box.exited.is_set():
            box.stopping = True
            await self._signal(box, "SIGTERM")
            with anyio.move_on_after(max(grace, 0.0)):
                await box.exited.wait()
        if not box.exited.is_set():
            log.warning(
                "container of session %s still running %.1f s after SIGTERM; killing it",
                session_id,
                grace,
                extra={"session": session_id, "container": box.id[:12], "grace": grace},
            )
            await self._signal(box, "SIGKILL")
            with anyio.move_on_after(KILL_WAIT):
                await box.exited.wait()
        if not box.exited.is_set():
            # The daemon has not said it exited (its stream is down?): look, and report.
            await self._finish(box, None)
        return box.code

    # -- starting ---------------------------------------------------------------------------------

    def _name(self, session_id: str) -> str:
        return f"fsm-agent-{self.control_plane_id[:8]}-{session_id}"

    def _log_path(self, session_id: str) -> Path:
        return self.log_dir / f"{session_id}.log"

    def agent_state_dir(self, session_id: str) -> Path:
        """Kilo's state of the session on the host (its conversation database), mounted where
        the image keeps it: it outlives each container, so a replaced wrapper resumes the same
        conversation."""
        return (self.state_dir / "kilo-state" / session_id).resolve()

    def wrapper_state_dir(self, session_id: str) -> Path:
        """The wrapper's ``--state-dir`` on the host (its record of the Kilo session each
        agent-session name is), kept across containers for the same reason."""
        return (self.state_dir / "wrapper-state" / session_id).resolve()

    def secrets_dir(self, session_id: str) -> Path:
        return (self.state_dir / "secrets" / session_id).resolve()

    def _labels(self, session_id: str) -> dict[str, str]:
        return {
            **self.extra_labels,
            LABEL_SESSION: session_id,
            LABEL_CONTROL: self.control_plane_id,
        }

    def argv(self, spec: WrapperSpec) -> list[str]:
        """The ``fsm-agent serve`` arguments, as paths inside the container; no token."""
        args = [
            f"--agent-session={spec.agent_session}",
            f"--user-id={spec.user_id}",
            f"--session-id={spec.session_id}",
            f"--ingest-url={spec.ingest_url}",
            f"--token-file={SECRETS_PATH}/{TOKEN_NAME}",
            f"--workdir={WORKSPACE_PATH}",
            f"--state-dir={WRAPPER_STATE_PATH}/{spec.session_id}",
        ]
        if spec.config is not None:
            args.append(f"--config={CONFIG_PATH}")
        if spec.version is not None:
            args.append(f"--version={spec.version}")
        return args

    def config_dir(self, session_id: str) -> Path:
        return (self.state_dir / "config" / session_id).resolve()

    def _agent_config_file(self, config: Path) -> str | None:
        """``[agent] config_file`` of the config (or of an older name of the table an agent
        declares), if it names one."""
        try:
            table = agent_table(config, read_toml(config)).get("agent", {})
        except ConfigError:
            return None  # the wrapper reads the same file and says what is wrong
        name = table.get("config_file") if isinstance(table, dict) else None
        return name if isinstance(name, str) else None

    def _copy_config(self, spec: WrapperSpec, owner: tuple[int, int] | None) -> None:
        """The config file, and the Kilo configuration file it names relative to itself, copied
        (0600, the wrapper's) into the session's folder that is mounted read-only at
        ``CONFIG_DIR``: the operator's file may be 0600 root's, which the wrapper's uid could not
        read through a bind mount, and each container keeps the config it started with."""
        folder = self.config_dir(spec.session_id)
        shutil.rmtree(folder, ignore_errors=True)
        if spec.config is None:
            return
        config = spec.config.resolve()
        copies = [(config, folder / "config.toml")]
        name = self._agent_config_file(config)
        if name is not None and not PurePosixPath(name).is_absolute():
            if ".." in PurePosixPath(name).parts:
                raise WrapperStartError(
                    f"{config}: agent.config_file {name!r} climbs out of the config's folder; "
                    "the docker runtime copies it beside the config: give a path inside it"
                )
            copies.append((config.parent / name, folder / name))
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
        for source, target in copies:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(0o600)
        for path in [folder, *(p for p in folder.rglob("*"))]:
            _chown(owner, path)

    def _config_binds(self, config: Path | None, session_id: str) -> list[str]:
        """The session's copy of the config read-only at ``CONFIG_DIR``, and a Kilo
        configuration file it names by an absolute path, read-only at that path."""
        if config is None:
            return []
        binds = [f"{self.config_dir(session_id)}:{CONFIG_DIR}:ro"]
        name = self._agent_config_file(config.resolve())
        if name is not None and PurePosixPath(name).is_absolute():
            binds.append(f"{name}:{name}:ro")
        return binds

    def _owners(self, image: dict[str, Any] | None) -> _Owners:
        """Who must own each host side of the mounts, from ``[runtime] user`` and the image's
        uid labels (``docker/Dockerfile``: ``io.fsm-agent.fsm-uid``, ``...agent-uid``)."""
        labels = ((image or {}).get("Config") or {}).get("Labels") or {}

        def uid(value: object) -> tuple[int, int] | None:
            number, _, group = str(value or "").partition(":")
            if not number.isdigit():
                return None
            return int(number), int(group) if group.isdigit() else int(number)

        user = uid(self.settings.user)
        return _Owners(
            # The image's supervisor reads the token as root; a container run as [runtime] user
            # reads it as that user (``fsm.settings.secrets`` wants the reader's own file).
            token=user,
            wrapper=user or uid(labels.get(LABEL_FSM_UID)),
            agent=uid(labels.get(LABEL_AGENT_UID)) or user,
        )

    def _prepare(self, spec: WrapperSpec, owners: _Owners) -> Path:
        """The host side of the mounts: workspace, both state directories, the token, the
        config; the workspace's path."""
        sid = spec.session_id
        workdir = spec.workdir
        if not workdir.exists():
            workdir = self.base_dir / sid
            log.warning(
                "session %s: workdir %s does not exist; using %s",
                sid,
                spec.workdir,
                workdir,
                extra={"session": sid, "workdir": str(spec.workdir)},
            )
        secrets = self.secrets_dir(sid)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            agent_state, wrapper_state = self.agent_state_dir(sid), self.wrapper_state_dir(sid)
            for state in (agent_state, wrapper_state):
                state.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                state.mkdir(mode=0o700, exist_ok=True)
            shutil.rmtree(secrets, ignore_errors=True)
            secrets.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            secrets.mkdir(mode=0o700)
            token = secrets / TOKEN_NAME
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, spec.token.encode())
            finally:
                os.close(fd)
            _chown(owners.token, secrets, token)
            _chown(owners.wrapper, wrapper_state)
            _chown(owners.agent, agent_state)
            _chown_tree(owners.agent, workdir)
            self._copy_config(spec, owners.wrapper)
        except OSError as exc:
            self._forget_files(sid)
            raise WrapperStartError(
                f"session {sid!r}: cannot prepare the container's files: {exc}"
            ) from exc
        except BaseException:
            self._forget_files(sid)
            raise
        return workdir.resolve()

    def _environment(self, spec: WrapperSpec) -> list[str]:
        """Only what the agent's config asks to be passed (``[agent] pass_env``), and ``extra_env``.
        Never the token, never our API key."""
        env = {
            name: os.environ[name]
            for name in _config_pass_env(spec.config)
            if name in os.environ and name not in (TOKEN_ENV, API_KEY_ENV)
        }
        env.update(spec.extra_env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return [f"{k}={v}" for k, v in env.items()]

    def _create_body(
        self, spec: WrapperSpec, workdir: Path, agent_path: str = AGENT_STATE_PATH
    ) -> dict[str, Any]:
        s = self.settings
        sid = spec.session_id
        binds = [
            f"{workdir}:{WORKSPACE_PATH}:rw",
            f"{self.wrapper_state_dir(sid)}:{WRAPPER_STATE_PATH}/{sid}:rw",
            f"{self.agent_state_dir(sid)}:{agent_path}:rw",
            f"{self.secrets_dir(spec.session_id)}:{SECRETS_PATH}:rw",
            *self._config_binds(spec.config, spec.session_id),
            *s.volumes,
        ]
        body: dict[str, Any] = {
            "Image": self.image,
            "Cmd": self.argv(spec),
            "Labels": self._labels(spec.session_id),
            "Env": self._environment(spec),
            "WorkingDir": WORKSPACE_PATH,
            "HostConfig": {
                "Binds": binds,
                "NetworkMode": s.network,
                "Memory": s.memory,
                "MemorySwap": s.memory,  # no swap beyond the limit: the limit is an OOM kill
                "NanoCpus": int(s.cpus * 1e9),
                "PidsLimit": s.pids,
                "RestartPolicy": {"Name": "no"},  # restarts are the session machine's
            },
        }
        if self.command is not None:
            body["Entrypoint"] = self.command
        if s.user:
            body["User"] = s.user
        return body

    async def _remove_leftover(self, sid: str) -> None:
        """Kill and remove the session's containers of ours nobody adopted."""
        self._leftovers.pop(sid, None)
        for item in await self._api.containers(
            [f"{LABEL_CONTROL}={self.control_plane_id}", f"{LABEL_SESSION}={sid}"]
        ):
            if item["Id"] in self._by_id:
                continue
            await self._keep_output(
                _Container(sid, item["Id"], "", self._log_path(sid))
            )  # sid: ours
            await self._api.remove(item["Id"])
            log.warning(
                "removed a leftover container of session %s nobody adopted: %s (%s)",
                sid,
                item["Id"][:12],
                item.get("State", "?"),
                extra={"session": sid, "container": item["Id"][:12]},
            )

    async def _launch(self, spec: WrapperSpec) -> _Container:
        sid = spec.session_id
        image = await self._api.image(self.image)
        # No such image: the create below fails with the daemon's own words.
        await self._remove_leftover(sid)
        workdir = self._prepare(spec, self._owners(image))
        labels = ((image or {}).get("Config") or {}).get("Labels") or {}
        agent_path = str(labels.get(LABEL_AGENT_STATE) or AGENT_STATE_PATH)
        if not PurePosixPath(agent_path).is_absolute() or ":" in agent_path:
            agent_path = AGENT_STATE_PATH
        body = self._create_body(spec, workdir, agent_path)
        name = self._name(sid)
        log_path = self._log_path(sid)
        self._log_line(log_path, f"starting container {name} from {self.image}: {body['Cmd']}")
        began = time.perf_counter()
        try:
            container = await self._api.create(name, body)
        except BaseException:
            self._forget_files(sid)
            raise
        box = _Container(sid, container, name, log_path)
        self._track(box)  # before start: its die event must find it
        try:
            await self._api.start(container)
        except BaseException:
            self._untrack(box)
            self._forget_files(sid)
            try:
                await self._api.remove(container)
            except DockerError as exc:
                log.error("cannot remove the container that failed to start: %s", exc)
            raise
        self.last_start_seconds = time.perf_counter() - began
        return box

    # -- watching ---------------------------------------------------------------------------------

    def _track(self, box: _Container) -> None:
        self._boxes[box.session_id] = box
        self._by_id[box.id] = box

    def _untrack(self, box: _Container) -> None:
        if self._boxes.get(box.session_id) is box:
            del self._boxes[box.session_id]
        self._by_id.pop(box.id, None)

    async def _find_leftovers(self) -> None:
        for item in await self._api.containers([f"{LABEL_CONTROL}={self.control_plane_id}"]):
            sid = (item.get("Labels") or {}).get(LABEL_SESSION, "")
            container = str(item["Id"])
            if container in self._by_id:
                continue
            info = await self._api.inspect(container)
            state = (info or {}).get("State") or {}
            if state.get("Running") and sid and sid not in self._leftovers:
                self._leftovers[sid] = (container, int(state.get("Pid") or 0))
            else:  # exited (or a duplicate): nobody will run it again
                if _valid_session_id(sid):
                    await self._keep_output(_Container(sid, container, "", self._log_path(sid)))
                await self._api.remove(container)

    async def _watch_events(self) -> None:
        # Not filtered by event at the daemon: Podman matches its own names there ("died"), not
        # Docker's; the few other events of our containers (create, start) are dropped here.
        filters = {"type": ["container"], "label": [f"{LABEL_CONTROL}={self.control_plane_id}"]}
        since: str | None = None
        delay = RECONNECT_BACKOFF[0]
        while True:
            try:
                async with self._api.events(filters, since) as stream:
                    if self._subscribed.is_set():
                        log.info("docker event stream reopened", extra={"since": since})
                        self._reconcile()
                    self._subscribed.set()
                    self._first_try.set()
                    delay = RECONNECT_BACKOFF[0]
                    async for event in stream:
                        nanos = event.get("timeNano")
                        if isinstance(nanos, int):
                            since = f"{nanos // 10**9}.{nanos % 10**9:09d}"
                        self._on_event(event)
                raise DockerError("the daemon ended the event stream")
            except DockerError as exc:
                self._first_try.set()
                log.warning(
                    "docker event stream lost (%s); reopening in %.1f s",
                    exc,
                    delay,
                    extra={"retry_in": delay},
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, RECONNECT_BACKOFF[1])

    def _on_event(self, event: dict[str, Any]) -> None:
        container = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        action = event.get("Action") or event.get("status")
        box = self._by_id.get(container)
        if box is None:
            for sid, (leftover, _) in list(self._leftovers.items()):
                if leftover == container:  # a leftover died before anyone adopted it
                    del self._leftovers[sid]
            return
        if action == "oom":
            # The kernel killed a process in the container at its limit; the container may live
            # on (a tool, or Kilo, which the wrapper restarts): say so, once per event.
            box.oom_events += 1
            if self._on_notice is not None:
                limit = self.settings.memory
                detail = (
                    f"a process in the wrapper's container was killed at its memory limit "
                    f"({limit // 1024**2} MiB, runtime.memory)"
                )
                try:
                    self._on_notice(box.session_id, "oom", detail)
                except Exception:
                    log.exception("on_notice handler failed for session %s", box.session_id)
        elif action in EXIT_EVENTS and not box.finishing:
            code = (event.get("Actor") or {}).get("Attributes", {}).get("exitCode")
            assert self._tg is not None
            self._tg.start_soon(
                self._finish,
                box,
                int(code) if isinstance(code, str) and code.lstrip("-").isdigit() else None,
                name=f"container exit {box.session_id}",
            )

    def _reconcile(self) -> None:
        """After the stream was down: look at every tracked container, since an exit may have
        gone unseen (the daemon holds only recent events, and none across its own restart)."""
        assert self._tg is not None
        for box in list(self._by_id.values()):
            if not box.finishing:
                self._tg.start_soon(self._check, box, name=f"container check {box.session_id}")

    async def _check(self, box: _Container) -> None:
        try:
            info = await self._api.inspect(box.id)
        except DockerError:
            return  # the stream will reconnect and reconcile again
        if info is None or not (info.get("State") or {}).get("Running"):
            await self._finish(box, None)

    async def _signal(self, box: _Container, signal: str) -> None:
        try:
            await self._api.kill(box.id, signal)
        except DockerError as exc:
            log.error(
                "cannot signal the container of session %s: %s",
                box.session_id,
                exc,
                extra={"session": box.session_id, "container": box.id[:12]},
            )

    async def _finish(self, box: _Container, event_code: int | None) -> None:
        """Learn why the container is gone, keep its output, remove it, report it: once."""
        if box.finishing:
            await box.exited.wait()
            return
        box.finishing = True
        with anyio.CancelScope(shield=True):
            code, reason, detail = await self._exit_status(box, event_code)
            try:
                await self._api.remove(box.id)
            except DockerError as exc:
                log.error("cannot remove the container of session %s: %s", box.session_id, exc)
            self._forget_files(box.session_id)
            self._untrack(box)
            box.code = code
            self._log_line(box.log_path, f"container {box.id[:12]} exited: {code} ({reason})")
            log.info(
                "wrapper container of session %s exited with code %s (%s)",
                box.session_id,
                code,
                reason,
                extra={"session": box.session_id, "code": code, "reason": reason},
            )
            try:
                self._on_exit(box.session_id, code, reason, detail)
            except Exception:
                log.exception("on_exit handler failed for session %s", box.session_id)
            finally:
                box.exited.set()

    async def _exit_status(
        self, box: _Container, event_code: int | None
    ) -> tuple[int | None, ExitReason | None, str]:
        """Code, reason and the daemon's words for a container that is gone (not removed yet)."""
        try:
            info = await self._api.inspect(box.id)
        except DockerError as exc:  # the daemon is gone too: what the event said, if anything
            return event_code, "killed_by_us" if box.stopping else None, str(exc)
        if info is None:  # removed under us (docker rm -f) before we looked
            return event_code, "killed_by_us" if box.stopping else "removed", ""
        state = info.get("State") or {}
        code = state.get("ExitCode")
        code = int(code) if isinstance(code, int) else event_code
        detail = str(state.get("Error") or "")
        await self._keep_output(box)
        if state.get("OOMKilled") and code == 137 and not box.stopping:
            # OOMKilled says an OOM kill happened in the container at some point, not that it
            # ended it: a tool killed earlier leaves it true for a wrapper that exits 0 later.
            limit = (info.get("HostConfig") or {}).get("Memory")
            return code, "oom_killed", detail or f"out of memory at its limit of {limit} bytes"
        return code, "killed_by_us" if box.stopping else "exited", detail

    def _forget_files(self, session_id: str) -> None:
        """What only one container needed: its token (if never read) and its config copy."""
        shutil.rmtree(self.secrets_dir(session_id), ignore_errors=True)
        shutil.rmtree(self.config_dir(session_id), ignore_errors=True)

    async def _keep_output(self, box: _Container) -> None:
        try:
            output = await self._api.logs(box.id, LOG_TAIL_LINES, LOG_TAIL_BYTES)
        except DockerError:
            return
        if output:
            try:
                with box.log_path.open("ab") as file:
                    file.write(output if output.endswith(b"\n") else output + b"\n")
            except OSError:
                pass

    def _log_line(self, path: Path, text: str) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as file:
                file.write(f"--- {_stamp()} {text}\n")
        except OSError:
            pass  # the log is a convenience; losing a line must not lose a start or an exit
