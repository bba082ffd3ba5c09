"""The runtime port: how the control plane starts, stops and watches one wrapper per session.

The session machine only says *start the wrapper* or *stop it* and learns *the wrapper exited*;
where the wrapper runs (a local process group, a bubblewrap or Docker sandbox, a pod) is the
runtime's business. A new runtime implements ``RuntimePort`` and nothing above it changes.

Exits are reported through one callback, ``on_exit(session_id, code, reason)``, given when the
runtime is built — for every exit, asked for or not. The session machine needs ``wrapper_exited``
in both cases: after a crash to restart, after a release to finish stopping. ``code`` is the exit
status; negative means killed by that signal (the ``subprocess`` convention); None means the
runtime could not learn it. ``reason`` is what the runtime knows beyond the code, one of
``EXIT_REASONS`` (a container runtime can tell an OOM kill from a crash; local processes report
None).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

import anyio
import msgspec

from fsm.settings.secrets import TOKEN_ENV as _TOKEN_ENV

__all__ = [
    "EXIT_REASONS",
    "TOKEN_ENV",
    "ExitReason",
    "OnExit",
    "OnNotice",
    "RuntimePort",
    "RuntimePortError",
    "WrapperAlreadyRunningError",
    "WrapperSpec",
    "WrapperStartError",
    "restart",
    "stop_all",
]

TOKEN_ENV = _TOKEN_ENV
"""The variable ``fsm-agent serve`` takes its token from as a last resort: for starters that can
pass neither a file nor a descriptor (an orchestrator given the token by ``--runtime external``).
``LocalRuntime`` uses a pipe (``--token-fd``) instead; nothing should put the token in argv, which
any local user can read, and the wrapper removes this variable from its environment once read."""

ExitReason = Literal["exited", "oom_killed", "killed_by_us", "removed", "start_failed"]
"""Why a wrapper is gone, as far as its runtime can tell: it ``exited`` by itself (the code says
how), the kernel's ``oom_killed`` it at a memory limit, it was ``killed_by_us`` (``stop``), its
container was ``removed`` under us, or it never ran (``start_failed``)."""

EXIT_REASONS: tuple[ExitReason, ...] = (
    "exited",
    "oom_killed",
    "killed_by_us",
    "removed",
    "start_failed",
)


class OnExit(Protocol):
    """``on_exit(session_id, code, reason, detail)``: called once per started wrapper when it has
    exited. ``detail`` is the runtime's own words where it has some (a daemon's error message)."""

    def __call__(
        self,
        session_id: str,
        code: int | None,
        reason: ExitReason | None = None,
        detail: str = "",
        /,
    ) -> None: ...


class WrapperSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a runtime needs to start the wrapper of one session."""

    session_id: str
    agent_session: str
    user_id: str
    ingest_url: str
    token: str
    workdir: Path
    config: Path | None = None
    agent_bin: str | None = None
    version: str | None = None
    """Version the wrapper announces in ``hello`` instead of its own (tests of version pinning)."""
    extra_env: dict[str, str] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:
        # Specs end up in logs and tracebacks; the token must not.
        return (
            f"WrapperSpec(session_id={self.session_id!r}, agent_session={self.agent_session!r}, "
            f"user_id={self.user_id!r}, ingest_url={self.ingest_url!r}, token='***', "
            f"workdir={str(self.workdir)!r}, config={self.config and str(self.config)!r}, "
            f"agent_bin={self.agent_bin!r}, version={self.version!r}, "
            f"extra_env={sorted(self.extra_env)!r})"
        )


class OnNotice(Protocol):
    """``on_notice(session_id, kind, detail)``: something the runtime saw happen to a session's
    wrapper that is not an exit, e.g. ``oom``: the kernel killed a process in the container at
    its memory limit (a tool, or Kilo) while the container lives on. The session shows it; a
    message lost right after carries it as its error."""

    def __call__(self, session_id: str, kind: str, detail: str, /) -> None: ...


class RuntimePortError(Exception):
    """A runtime could not do what it was asked; the message names the session."""


class WrapperAlreadyRunningError(RuntimePortError):
    """``start`` for a session whose wrapper is still running: stop it first (or ``restart``)."""


class WrapperStartError(RuntimePortError):
    """The wrapper could not be started at all (bad command, unusable directory, bad spec)."""


class RuntimePort(Protocol):
    """Start, stop and watch wrappers; exits are reported through the ``on_exit`` callback."""

    async def start(self, spec: WrapperSpec) -> None:
        """Start the session's wrapper; returns once it is launched (not once it connected).

        Raises ``WrapperAlreadyRunningError`` if it is running, ``WrapperStartError`` if it cannot
        be launched.
        """
        ...

    async def stop(self, session_id: str, grace: float, *, asked: bool = False) -> int | None:
        """Ask the wrapper to exit, force it after ``grace`` seconds, return its exit code.

        ``asked``: the wrapper was already told to exit over its own socket (``shutdown`` or
        ``release``); it gets ``grace`` to do so on its own before it is signalled, so that a
        signal does not overtake the frame that explains why it should go.

        ``on_exit`` has been called by the time this returns. None if it was not running (and
        then ``on_exit`` is not called: nothing exited).
        """
        ...

    def running(self, session_id: str) -> bool:
        """True from a successful ``start`` until the exit is reported."""
        ...

    def adopt(self, session_id: str) -> int | None:
        """Take charge of the session's wrapper a previous control plane left running.

        Returns an identifier of it (a pid for local processes), or None if there is none; an
        adopted wrapper is ``running`` and its exit is reported like any other.
        """
        ...


async def stop_all(runtime: RuntimePort, session_ids: Iterable[str], grace: float) -> None:
    """Stop every one of ``session_ids`` at once, each with ``grace``, and wait for them all:
    what a runtime does when it is left. Shielded: the stops must finish even if the owner is
    cancelled meanwhile (nothing a runtime started may outlive it unasked)."""
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as stoppers:
            for session_id in list(session_ids):
                stoppers.start_soon(runtime.stop, session_id, grace)


async def restart(runtime: RuntimePort, spec: WrapperSpec, grace: float) -> int | None:
    """Stop the session's wrapper if it runs, then start it again; the old exit code.

    ``on_exit`` still reports the stop: the session machine sees every exit.
    """
    code = await runtime.stop(spec.session_id, grace)
    await runtime.start(spec)
    return code
