"""A fake runtime (``RuntimePort``) on virtual time: one wrapper process per session.

It keeps the real port's contract (``adapters/runtime/base.py``) in callback form: ``start``
refuses a session whose wrapper still runs, ``stop`` sends SIGTERM and SIGKILLs after the grace,
``running`` is true from start until the exit is reported, and every exit — asked for or not — is
reported exactly once through ``on_exit``. The control side of the simulator drives it the way
``fsm.control.host`` drives the local runtime, so the session machine sees the same sequence of
``wrapper_exited`` events it sees in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from adapters.runtime.base import WrapperAlreadyRunningError


class WrapperProcess(Protocol):
    on_exit: Callable[[int | None], None] | None

    def boot(self) -> None: ...

    def terminate(self, grace: float) -> None: ...

    def kill(self, code: int | None = -9) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


Launch = Callable[[str, str | None], WrapperProcess]
"""``launch(session_id, version)``: a new wrapper process, not yet booted."""


class FakeRuntime:
    def __init__(
        self,
        launch: Launch,
        on_exit: Callable[[str, int | None], None],
        note: Callable[[str, str, str], None],
    ) -> None:
        self.launch = launch
        self.on_exit = on_exit
        self.note = note
        self.wrappers: dict[str, WrapperProcess] = {}
        self._waiters: dict[str, list[Callable[[int | None], None]]] = {}

    def start(self, session_id: str, version: str | None) -> None:
        if session_id in self.wrappers:
            raise WrapperAlreadyRunningError(f"session {session_id!r}: a wrapper is running")
        wrapper = self.launch(session_id, version)
        self.wrappers[session_id] = wrapper
        wrapper.on_exit = lambda code: self._exited(session_id, wrapper, code)
        self.note(session_id, "runtime.start", f"version {version}" if version else "")
        wrapper.boot()

    def stop(
        self, session_id: str, grace: float, then: Callable[[int | None], None] | None = None
    ) -> None:
        """SIGTERM, SIGKILL after ``grace``; ``then(code)`` after the exit was reported."""
        wrapper = self.wrappers.get(session_id)
        if wrapper is None:
            if then is not None:
                then(None)
            return
        if then is not None:
            self._waiters.setdefault(session_id, []).append(then)
        self.note(session_id, "runtime.stop", "")
        wrapper.terminate(grace)

    def running(self, session_id: str) -> bool:
        return session_id in self.wrappers

    def crash(self, session_id: str) -> None:
        wrapper = self.wrappers.get(session_id)
        if wrapper is not None:
            wrapper.kill(-9)

    def _exited(self, session_id: str, wrapper: WrapperProcess, code: int | None) -> None:
        if self.wrappers.get(session_id) is not wrapper:
            return
        del self.wrappers[session_id]
        self.note(session_id, "runtime.exit", f"code {code}")
        self.on_exit(session_id, code)
        for then in self._waiters.pop(session_id, []):
            then(code)
