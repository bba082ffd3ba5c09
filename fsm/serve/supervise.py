"""The in-container supervisor: ``python -m fsm.serve.supervise [OPTIONS] -- COMMAND...``.

The host of the ``supervisor`` machine (``fsm/machines/supervisor.py``, which decides everything:
when to restart, how long to wait, when to give up). This module only executes its effects: it
starts COMMAND (the image's ``fsm-agent serve ...``), reports each exit, forwards the stop
signals tini passes on, and exits with the code the machine chose. In the image it runs as root
under tini, so that:

* **the wrapper runs as another user** (``--user fsm``) through ``setpriv``: supplementary groups
  cleared, ``no_new_privs``, and only the capabilities named by ``--caps`` (the image gives
  ``setuid,setgid,kill``: what the wrapper needs to start Kilo as the ``agent`` user and signal
  its process group), raised as ambient and with the bounding set cut to them, so not even a
  ``setuid(0)`` gets any other;
* **the token is read once and handed to every wrapper it starts**. A ``--token-file PATH`` in
  COMMAND (single-use: removed once read) or ``FSM_AGENT_TOKEN`` in the environment is taken
  here, removed from COMMAND and from the child's environment, and each wrapper gets it through
  a fresh pipe as ``--token-fd N``: a restarted wrapper could not read the removed file again,
  and no process of the agent's uid can read a root process's memory or ``/proc/<pid>/environ``.

Timer overrides (``[timers] supervisor_*``) come from ``--config FILE``, else from COMMAND's own
``--config FILE`` (one file configures every side). SIGUSR1 is passed on to the wrapper (it
recycles its ingest connection); it is no lifecycle event of the supervisor's.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process, TaskGroup

from fsm.engine.clock import RealClock
from fsm.engine.effects import Effect, ExitProcess, StartWrapper
from fsm.engine.events import Event
from fsm.engine.machine import StateMachine
from fsm.engine.runner import MachineGroup
from fsm.hosting.logs import JsonLog
from fsm.machines.supervisor import SPEC, SignalWrapper
from fsm.machines.timers import TimerValues
from fsm.settings.config import ConfigError, timer_values
from fsm.settings.secrets import TOKEN_ENV, SecretInputError, make_undumpable, read_secret_file

KNOWN_CAPS = ("setuid", "setgid", "kill", "net_bind_service")
"""Capabilities ``--caps`` may hand the child; anything broader is refused."""


@dataclass(frozen=True)
class Launch:
    """How each wrapper is started: the command (token flags removed), as whom, with what."""

    command: list[str]
    env: dict[str, str]
    token: str | None = None
    user: str | None = None
    caps: tuple[str, ...] = ()

    def argv(self, token_fd: int | None) -> list[str]:
        command = list(self.command)
        if token_fd is not None:
            command += ["--token-fd", str(token_fd)]
        if self.user is None:
            return command
        entry = pwd.getpwnam(self.user)
        keep = "".join(f",+{cap}" for cap in self.caps)
        return [
            shutil.which("setpriv") or "/usr/bin/setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--clear-groups",
            f"--inh-caps=-all{keep}",
            f"--ambient-caps=-all{keep}",
            f"--bounding-set=-all{keep}",
            "--no-new-privs",
            "--",
            *command,
        ]

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k != TOKEN_ENV}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            env.update(HOME=entry.pw_dir, USER=self.user, LOGNAME=self.user, SHELL=entry.pw_shell)
        return env


def take_token(command: Sequence[str], environ: Mapping[str, str]) -> tuple[list[str], str | None]:
    """COMMAND without its ``--token-file PATH``, and the token from that file (removed once
    read) or from ``FSM_AGENT_TOKEN``; None when neither gives one. SecretInputError if the file
    cannot be used."""
    rest: list[str] = []
    path: str | None = None
    args = list(command)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--token-file" and i + 1 < len(args):
            path = args[i + 1]
            i += 2
            continue
        if arg.startswith("--token-file="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    if path is not None:
        return rest, read_secret_file(Path(path), flag="--token-file", unlink=True)
    token = environ.get(TOKEN_ENV)
    return rest, token or None


def config_path(own: str | None, command: Sequence[str]) -> Path | None:
    if own:
        return Path(own)
    for i, arg in enumerate(command):
        if arg == "--config" and i + 1 < len(command):
            return Path(command[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


class Supervisor:
    """Runs the ``supervisor`` machine on the real clock and executes its effects."""

    def __init__(self, launch: Launch, values: TimerValues, log: JsonLog) -> None:
        self.launch = launch
        self.log = log
        self.clock = RealClock()
        self.group = MachineGroup(self.clock, self._on_effect)
        self.machine = StateMachine(SPEC, values, on_record=log.record)
        self.process: Process | None = None
        self.exit_code = 1
        self.done = anyio.Event()
        self._tg: TaskGroup | None = None

    async def run(self) -> int:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self.clock.run)
            tg.start_soon(self._signals)
            self.group.add(self.machine)
            await self.done.wait()
            tg.cancel_scope.cancel()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # only after a fault: every planned exit waits for the wrapper
        return self.exit_code

    def _send(self, trigger: str, **data: object) -> None:
        self.group.send(self.machine.machine_id, Event(trigger, dict(data)))

    def _on_effect(self, _machine_id: str, effect: Effect) -> None:
        if isinstance(effect, StartWrapper):
            assert self._tg is not None
            self._tg.start_soon(self._run_wrapper, effect.attempt)
        elif isinstance(effect, SignalWrapper):
            process = self.process
            if process is not None and process.returncode is None:
                self.log.info("signalling the wrapper", signal=effect.signal, pid=process.pid)
                process.send_signal(signal.Signals[effect.signal])
        elif isinstance(effect, ExitProcess):
            self.exit_code = effect.code
            self.log.info("exiting", code=effect.code, reason=effect.reason)
            self.done.set()
        else:
            self.log.warning("unhandled effect", effect=type(effect).__name__)

    async def _run_wrapper(self, attempt: int) -> None:
        token_fd: int | None = None
        if self.launch.token is not None:
            token_fd, write_end = os.pipe()
            os.write(write_end, self.launch.token.encode())
            os.close(write_end)
        try:
            process = await anyio.open_process(
                self.launch.argv(token_fd),
                stdin=None,
                stdout=None,
                stderr=None,
                env=self.launch.child_env(),
                pass_fds=() if token_fd is None else (token_fd,),
            )
        except OSError as exc:
            self.log.error("cannot start the wrapper", error=str(exc), attempt=attempt)
            self._send("wrapper_exited", code=127)
            return
        finally:
            if token_fd is not None:
                os.close(token_fd)
        self.process = process
        self.log.info("wrapper started", pid=process.pid, attempt=attempt)
        code = await process.wait()
        self.log.info("wrapper exited", pid=process.pid, code=code)
        self._send("wrapper_exited", code=code)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR1:
                    process = self.process
                    if process is not None and process.returncode is None:
                        process.send_signal(signal.SIGUSR1)
                    continue
                self.log.info("stop signal", signal=name)
                self._send("stop_requested", signal=name)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fsm.serve.supervise",
        description="Start COMMAND, restart it when it crashes (5 in 10 min, backoff 1 s to "
        "30 s), end when it exits 0; forwards SIGTERM/SIGINT.",
    )
    parser.add_argument("--user", help="run COMMAND as this user (needs root)")
    parser.add_argument(
        "--caps",
        default="",
        help=f"capabilities COMMAND keeps as --user, comma-separated ({', '.join(KNOWN_CAPS)})",
    )
    parser.add_argument("--config", help="TOML file with [timers] supervisor_* overrides")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(list(argv))
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no COMMAND given (put it after --)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    make_undumpable()  # before the token is read: this process holds it for every restart
    args = parse_args(sys.argv[1:] if argv is None else argv)
    caps = tuple(c.strip() for c in args.caps.split(",") if c.strip())
    unknown = [c for c in caps if c not in KNOWN_CAPS]
    if unknown:
        print(f"error: --caps: {unknown[0]} is not one of {', '.join(KNOWN_CAPS)}", file=sys.stderr)
        return 2
    if args.user is not None:
        try:
            pwd.getpwnam(args.user)
        except KeyError:
            print(f"error: --user {args.user}: no such user", file=sys.stderr)
            return 2
        if os.geteuid() != 0:
            # A container started with --user (the runtime's [runtime] user): nobody to switch
            # to; the wrapper runs as that user and, lacking CAP_SETUID, refuses to start Kilo as
            # another one unless FSM_AGENT_KILO_USER is emptied too (both one uid: no boundary).
            print(
                f"warning: --user {args.user} ignored: the supervisor is not root (uid "
                f"{os.geteuid()}); the wrapper runs as this uid",
                file=sys.stderr,
            )
            args.user, caps = None, ()
    try:
        values = timer_values(config_path(args.config, args.command))["supervisor"]
        SPEC.check(values)
        command, token = take_token(args.command, os.environ)
    except (ConfigError, SecretInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.pop(TOKEN_ENV, None)
    launch = Launch(command, dict(os.environ), token, args.user, caps)
    return anyio.run(Supervisor(launch, values, JsonLog()).run)


if __name__ == "__main__":
    raise SystemExit(main())
