"""Owning one ``kilo serve`` process: random port, password, health wait, pidfile, stop.

Why it is done this way (all measured on Kilo 7.7.9, ``shared/kilo/README.md`` §1-§2, §8):

* ``--port 0`` is not random (it prefers 4096), so the port is drawn from 10000-60000 here; a
  taken port makes Kilo exit 1 with ``ServeError`` and never print its "listening" line, so that
  case draws again (5 tries). The URL is still read from the stdout line, never assumed.
* Cold start is about 4 s (6.5 s on a first-ever start), so the caller's start-up timeout comes
  from the timer table, not the SDK's 5 s; "listening" is not "healthy", so the start ends only
  when ``GET /global/health`` says so.
* A random ``KILO_SERVER_PASSWORD`` means nothing else in the container can drive this Kilo;
  ``KILO_PARENT_PID`` makes Kilo exit by itself if the wrapper dies without stopping it.
* Kilo runs in its own process group (tool commands are its children) and the group is what
  gets signalled. A pidfile (pid + kernel start time, which survives pid reuse checks) lets the
  next wrapper kill a group left behind by a wrapper that was SIGKILLed.
* stdout/stderr go to files in the state directory: nobody has to keep draining a pipe, and the
  files are there for a post-mortem.
* Kilo's environment is built from an allow-list (``build_env``), never inherited: Kilo runs the
  agent's tools, so whatever it holds the agent can read (``/proc/<kilo>/environ``, ``env`` in a
  tool). The wrapper's token in particular drives its job API and ingest link.
* Kilo may run as another user (``RunAs``; the container image's ``agent``): the wrapper then
  starts it through ``setpriv`` with that uid and gid, supplementary groups cleared, every
  capability cleared (inheritable and ambient, so none survives the exec) and ``no_new_privs``
  (no setuid program elevates a tool), in the workdir. Kilo's own state (its ``XDG_*`` homes:
  the conversation database, its config and caches) then lives where that user owns it
  (``RunAs.kilo_home``: ``[kilo] state_dir``, else its home), created by that user; the
  pidfile, Kilo's stdout/stderr and the session record stay in the wrapper's private state dir
  (Kilo writes its output to descriptors the wrapper opened).
  The wrapper needs CAP_SETUID/CAP_SETGID to switch and CAP_KILL to signal Kilo's group
  (``RunAs.missing_capabilities``); the image's supervisor grants exactly those.
* Kilo's password is in its environment, but Kilo removes ``KILO_SERVER_PASSWORD`` (and
  ``KILO_CONFIG_CONTENT``) from the environment of the tools it runs (measured on 7.7.9: a bash
  tool's ``env``), and an execute-only binary (mode 0711, as the image installs it) makes Kilo's
  process non-dumpable, so ``/proc/<kilo>/environ`` and ``mem`` are root's, not the agent's.
  Kilo's own ``process.env`` keeps it, and Kilo runs plugins in its process: the image turns off
  the project's ``.kilo/`` (``KILO_DISABLE_PROJECT_CONFIG=1``) and gives Kilo a config home the
  agent cannot write (``RunAs.config_home``), the two places a plugin of the agent's would load.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from adapters.agents.base import AgentSpec
from adapters.environment import LOCALE_PREFIX, LOGIN_ENV
from adapters.kilo.binary import find_agent
from adapters.kilo.spec import KILO
from adapters.pidfile import kill_stale_group, remove_pidfile, signal_group, write_pidfile

PORT_RANGE = (10000, 60000)
PORT_TRIES = 5
QUIET_ENV = dict(KILO.quiet_env)
"""Kilo's (``AgentSpec.quiet_env``); kept under this name for the benches that read it."""
USERNAME = KILO.username
INHERITED_ENV = LOGIN_ENV | {"TERM"}  # a tool's terminal type
"""Variables Kilo inherits by name. Proxies (``HTTPS_PROXY``...) are left out on purpose: their
URLs often carry credentials; list them in ``pass_env`` if the model is only reachable through
one."""
INHERITED_PREFIXES = (
    LOCALE_PREFIX,
    # Kilo's own knobs, addressed to it by name (KILO_SESSION_RETRY_LIMIT, KILO_DISABLE_*...):
    # whoever sets one means it for Kilo. Like any key Kilo itself reads (KILO_API_KEY), the agent
    # can read it too. The ones this module sets below override inherited ones.
    "KILO_",
)
RESERVED_PREFIX = "FSM_AGENT_"
"""The wrapper's own variables (its token among them): never passed, even if listed."""


CAP_KILL, CAP_SETGID, CAP_SETUID = 5, 6, 7
NEEDED_CAPABILITIES = {CAP_SETUID: "setuid", CAP_SETGID: "setgid", CAP_KILL: "kill"}
"""What a non-root wrapper needs to start Kilo as another user and signal its process group."""


@dataclass(frozen=True)
class RunAs:
    """Another user for Kilo and its tools (``[kilo] user``): never the wrapper's own uid."""

    user: str
    uid: int
    gid: int
    home: Path
    shell: str
    state_root: Path | None = None
    """Where Kilo's state goes (``[kilo] state_dir``); None: this user's ``~/.local/state``."""
    config_home: Path | None = None
    """Kilo's ``XDG_CONFIG_HOME`` (``[kilo] config_home``): a directory this user can read but
    not write. Kilo loads plugins from its config home, and a plugin runs inside Kilo, where
    ``process.env`` still holds the password (measured: a ``plugin/leak.js`` the agent wrote
    there printed it after Kilo's next start). None: beside its state, which this user owns."""

    @classmethod
    def lookup(
        cls, user: str, state_root: Path | None = None, config_home: Path | None = None
    ) -> RunAs:
        """The passwd entry of ``user``; ValueError naming it when there is none."""
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"kilo user {user!r}: no such user on this machine") from None
        home = Path(entry.pw_dir)
        return cls(user, entry.pw_uid, entry.pw_gid, home, entry.pw_shell, state_root, config_home)

    def kilo_home(self, state_dir: Path) -> Path:
        """Kilo's state for the wrapper whose state dir is ``state_dir``: a folder of the same
        name under ``state_root`` (the image's ``/var/lib/kilo``, a volume of its own that this
        user owns), else in this user's home."""
        root = self.state_root or self.home / ".local" / "state" / "fsm-agent"
        return root / state_dir.name

    def command(self, argv: Sequence[str], workdir: Path) -> list[str]:
        """``argv`` run as this user in ``workdir``, with no group, capability or way back."""
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [
            setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
            "--",
            # chdir as the new user: the workspace may be closed to the wrapper's own.
            "env",
            "-C",
            str(workdir),
            *argv,
        ]

    def missing_capabilities(self) -> list[str]:
        """The capabilities this process lacks to run Kilo as this user (empty as root)."""
        if os.geteuid() == 0:
            return []
        try:
            status = Path("/proc/self/status").read_text()
        except OSError:
            status = ""
        found = re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M)
        effective = int(found.group(1), 16) if found else 0
        return [name for bit, name in NEEDED_CAPABILITIES.items() if not effective >> bit & 1]


class AgentStartError(Exception):
    """Kilo did not become healthy; the message carries the reason and the tail of its output."""


class PortTaken(AgentStartError):
    pass


@dataclass
class AgentServer:
    url: str
    port: int
    pid: int
    password: str
    process: Process
    pidfile: Path
    started_at: float
    healthy_after: float
    """Seconds from spawn to the first healthy answer (the cold start, for logs and benches)."""
    spec: AgentSpec = KILO
    _stopped: bool = field(default=False, repr=False)

    @property
    def auth(self) -> tuple[str, str]:
        return (self.spec.username, self.password)

    async def wait(self) -> int:
        code = await self.process.wait()
        self._cleanup()
        return code

    async def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds (at most the agent's own
        ``stop_grace``: OpenCode sat on SIGTERM for over 5 s right after a turn); the exit code."""
        self._stopped = True
        if self.spec.stop_grace is not None:
            grace = min(grace, self.spec.stop_grace)
        if self.process.returncode is None:
            signal_group(self.pid, signal.SIGTERM)
            with anyio.move_on_after(grace):
                await self.process.wait()
            if self.process.returncode is None:
                signal_group(self.pid, signal.SIGKILL)
        code = await self.process.wait()
        self._cleanup()
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group (fault injection in tests, last resort elsewhere)."""
        signal_group(self.pid, sig)

    def _cleanup(self) -> None:
        # Tool commands Kilo started may outlive it in the group; nothing of it may remain.
        signal_group(self.pid, signal.SIGKILL)
        remove_pidfile(self.pidfile, self.pid)


def build_env(
    base: Mapping[str, str],
    state_dir: Path,
    password: str,
    config: Mapping[str, Any],
    pass_env: Sequence[str] = (),
    *,
    run_as: RunAs | None = None,
    spec: AgentSpec = KILO,
) -> dict[str, str]:
    """The agent's environment (``spec``: Kilo's names or OpenCode's): the allow-listed part
    of ``base``, the names in ``pass_env`` (provider keys its config references with
    ``{env:NAME}``; the agent and every tool it runs can read them), then what we set (password,
    user, config, watchdog, ``XDG_*``). Nothing else of ``base``, and never ``FSM_AGENT_*``:
    raises ValueError if ``pass_env`` names one. With ``run_as`` the login variables are that
    user's and the ``XDG_*`` homes lie in its home (created by ``start_agent`` as that user).
    """
    reserved = [name for name in pass_env if name.upper().startswith(RESERVED_PREFIX)]
    if reserved:
        raise ValueError(
            f"pass_env: {reserved[0]} is the wrapper's own ({RESERVED_PREFIX}*); Kilo never gets it"
        )
    wanted = set(pass_env)
    env = {
        name: value
        for name, value in base.items()
        if not name.upper().startswith(RESERVED_PREFIX)
        and (
            name in INHERITED_ENV
            or name.startswith((LOCALE_PREFIX, spec.env_prefix))
            or name in wanted
        )
    }
    env.update(spec.quiet_env)
    env[spec.password_env] = password
    env[spec.username_env] = spec.username
    if spec.parent_pid_env is not None:
        env[spec.parent_pid_env] = str(os.getpid())
    env[spec.config_env] = json.dumps(dict(config))
    if run_as is not None:
        env.update(HOME=str(run_as.home), USER=run_as.user, LOGNAME=run_as.user, SHELL=run_as.shell)
    for name, path in xdg_homes(state_dir, run_as).items():
        if run_as is None:
            path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    return env


def xdg_homes(state_dir: Path, run_as: RunAs | None = None) -> dict[str, Path]:
    root = state_dir if run_as is None else run_as.kilo_home(state_dir)
    homes = {f"XDG_{name}_HOME": root / "xdg" / name.lower() for name in XDG_NAMES}
    if run_as is not None and run_as.config_home is not None:
        homes["XDG_CONFIG_HOME"] = run_as.config_home
    return homes


XDG_NAMES = ("DATA", "CONFIG", "CACHE", "STATE")


async def _prepare_kilo_home(run_as: RunAs, state_dir: Path) -> None:
    """Create Kilo's ``XDG_*`` homes as its user (private to it), or raise AgentStartError; a
    read-only config home is the operator's and must exist."""
    homes = xdg_homes(state_dir, run_as)
    if run_as.config_home is not None:
        homes.pop("XDG_CONFIG_HOME")
    dirs = [str(path) for path in homes.values()]
    command = run_as.command(["mkdir", "-p", "-m", "0700", *dirs], Path("/"))
    done = await anyio.run_process(command, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AgentStartError(
            f"cannot create Kilo's state as {run_as.user} (exit {done.returncode}): "
            + done.stderr.decode(errors="replace").strip()[-400:]
        )


@dataclass
class SpawnedAgent:
    """A ``kilo serve`` spawned and not yet known healthy: the first half of ``start_agent``.

    The wrapper spawns Kilo before it imports the rest of its host (``fsm.serve.main``): Kilo's
    cold start is seconds of its own work on another core, and the wrapper's imports (uvicorn,
    websockets, httpx: about 0.15 s in the container) then overlap it instead of preceding it.
    ``start_agent(first=...)`` finishes the start it began; ``abandon`` kills it when nobody will.
    """

    binary: Path
    pidfile: Path
    started: float
    process: Process
    port: int
    password: str
    out_path: Path
    err_path: Path
    spec: AgentSpec = KILO

    async def abandon(self) -> None:
        signal_group(self.process.pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await self.process.wait()
        remove_pidfile(self.pidfile, self.process.pid)


async def spawn_agent(
    *,
    workdir: Path,
    state_dir: Path,
    config: Mapping[str, Any],
    agent_bin: str | None,
    rng: random.Random | None = None,
    env: Mapping[str, str] | None = None,
    pass_env: Sequence[str] = (),
    run_as: RunAs | None = None,
    spec: AgentSpec = KILO,
) -> SpawnedAgent:
    """Spawn Kilo on a drawn port (the first of ``start_agent``'s tries) without waiting for it.

    ``env`` (default ``os.environ``) is only where variables are picked from: Kilo gets its
    allow-list plus ``pass_env`` (``build_env``), never the whole of it. ``run_as``: Kilo's user,
    when it is not ours.
    """
    binary = find_agent(spec, agent_bin)
    # Created private: Kilo's database there holds every conversation (an existing one is kept).
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pidfile = state_dir / "kilo.pid"
    kill_stale_group(pidfile)
    if run_as is not None:
        missing = run_as.missing_capabilities()
        if missing:
            raise AgentStartError(
                f"kilo user {run_as.user}: this process lacks CAP_"
                + ", CAP_".join(m.upper() for m in missing)
                + " (run the wrapper as root, or give it those capabilities as the image does)"
            )
        await _prepare_kilo_home(run_as, state_dir)
    draw = rng or random.SystemRandom()
    return await _spawn_once(
        binary,
        workdir,
        state_dir,
        pidfile,
        config,
        draw.randint(*PORT_RANGE),
        1,
        time.monotonic(),
        os.environ if env is None else env,
        pass_env,
        run_as,
        spec,
    )


async def start_agent(
    *,
    workdir: Path,
    state_dir: Path,
    config: Mapping[str, Any],
    agent_bin: str | None,
    startup_timeout: float,
    rng: random.Random | None = None,
    env: Mapping[str, str] | None = None,
    pass_env: Sequence[str] = (),
    run_as: RunAs | None = None,
    first: SpawnedAgent | None = None,
    spec: AgentSpec = KILO,
) -> AgentServer:
    """Start Kilo in ``workdir`` and return once it answers healthy, or raise ``AgentStartError``.

    ``first``: a spawn already under way (``spawn_agent``), which this start waits for as its first
    try; the start-up timeout counts from that spawn.
    """
    draw = rng or random.SystemRandom()
    source = os.environ if env is None else env
    spawned = first or await spawn_agent(
        workdir=workdir,
        state_dir=state_dir,
        config=config,
        agent_bin=agent_bin,
        rng=draw,
        env=source,
        pass_env=pass_env,
        run_as=run_as,
        spec=spec,
    )
    started = spawned.started
    deadline = started + startup_timeout
    last: AgentStartError | None = None
    for attempt in range(1, PORT_TRIES + 1):
        if attempt > 1:
            spawned = await _spawn_once(
                spawned.binary,
                workdir,
                state_dir,
                spawned.pidfile,
                config,
                draw.randint(*PORT_RANGE),
                attempt,
                started,
                source,
                pass_env,
                run_as,
                spawned.spec,
            )
        try:
            return await _wait_started(spawned, deadline)
        except PortTaken as exc:
            last = exc
    raise AgentStartError(f"no free port after {PORT_TRIES} tries: {last}")


async def _spawn_once(
    binary: Path,
    workdir: Path,
    state_dir: Path,
    pidfile: Path,
    config: Mapping[str, Any],
    port: int,
    attempt: int,
    started: float,
    env: Mapping[str, str],
    pass_env: Sequence[str],
    run_as: RunAs | None,
    spec: AgentSpec,
) -> SpawnedAgent:
    password = secrets.token_urlsafe(24)
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out_path = logs / f"{spec.log_stem}-{stamp}-{os.getpid()}-{attempt}.out"
    err_path = logs / f"{spec.log_stem}-{stamp}-{os.getpid()}-{attempt}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        argv = [str(binary), "serve", "--port", str(port), "--hostname", "127.0.0.1"]
        if spec.parent_pid_env is None:
            # No watchdog of its own: the kernel SIGKILLs it when the wrapper dies.
            argv = [_setpriv(), "--pdeathsig", "KILL", "--", *argv]
        process = await anyio.open_process(
            argv if run_as is None else run_as.command(argv, workdir),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=workdir if run_as is None else None,
            env=build_env(env, state_dir, password, config, pass_env, run_as=run_as, spec=spec),
            start_new_session=True,
        )
    write_pidfile(pidfile, process.pid)
    return SpawnedAgent(binary, pidfile, started, process, port, password, out_path, err_path, spec)


def _setpriv() -> str:
    return shutil.which("setpriv") or "/usr/bin/setpriv"


async def _wait_started(spawned: SpawnedAgent, deadline: float) -> AgentServer:
    """Poll the spawned agent's health at the port we gave it; kill it on any failure.

    Readiness is health, not a stdout line: the line's wording is each agent's own (``kilo
    server listening``, ``opencode server listening``) and "listening" was never "healthy"."""
    process = spawned.process
    url = f"http://127.0.0.1:{spawned.port}"
    try:
        await _wait_healthy(spawned, url, deadline)
    except BaseException:
        await spawned.abandon()
        raise
    return AgentServer(
        url=url,
        port=spawned.port,
        pid=process.pid,
        password=spawned.password,
        process=process,
        pidfile=spawned.pidfile,
        started_at=spawned.started,
        healthy_after=time.monotonic() - spawned.started,
        spec=spawned.spec,
    )


async def _wait_healthy(spawned: SpawnedAgent, url: str, deadline: float) -> None:
    import httpx  # here, not at the top: spawn_agent runs before the wrapper has imported it

    process, err, spec = spawned.process, spawned.err_path, spawned.spec
    auth = (spec.username, spawned.password)
    async with httpx.AsyncClient(base_url=url, auth=auth) as client:
        while True:
            remaining = deadline - time.monotonic()
            if process.returncode is not None:
                if any(marker in err.read_bytes() for marker in spec.serve_error):
                    raise PortTaken(f"exit {process.returncode}: {_tail(err)}")
                raise AgentStartError(
                    f"{spec.binary} exited {process.returncode} before it was healthy: "
                    + (_tail(err) or "(no stderr)")
                )
            if remaining <= 0:
                raise AgentStartError(
                    f"{spec.binary} at {url} was not healthy in time; stderr: "
                    + (_tail(err) or "(empty)")
                )
            try:
                response = await client.get("/global/health", timeout=min(2.0, remaining))
                if response.status_code == 200 and response.json().get("healthy") is True:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await anyio.sleep(0.05)


def _tail(path: Path, limit: int = 400) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""


async def start_kilo(*, kilo_bin: str | None, **options: Any) -> AgentServer:
    """``start_agent`` for Kilo under its older name: bench/relay.py's until it is renamed
    (issue 17)."""
    return await start_agent(agent_bin=kilo_bin, **options)
