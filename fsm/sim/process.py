"""Simulated processes: what SIGSTOP, SIGCONT and SIGKILL mean on a virtual clock.

A real process that is stopped runs nothing (no timer, no socket read) and catches up at once when
continued; a killed one runs nothing ever again. Faults of the agent and the wrapper are exactly
these, so every callback a fake schedules for a process goes through ``SimProcess``: it runs now
if the process runs, waits in order if the process is stopped, and is dropped if it is dead.

``SimProcess`` implements the core's ``Clock`` port, so a ``WrapperCore`` handed one gets its
timers frozen by a SIGSTOP exactly as the real wrapper's would be.

``Scheduler`` is the one thing the fakes need from time: ``VirtualClock`` in simulation, the
explorer's ``ChoiceClock`` (every pending callback is a possible next step) in exhaustive search.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from fsm.engine.clock import TimerHandle

ProcessState = Literal["running", "paused", "dead"]


class Scheduler(Protocol):
    def now(self) -> float: ...

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class _Handle:
    """A process's timer: the scheduler runs the handle itself, which delivers ``sim_inner``.

    Being the scheduled callback (not a closure over the handle, which the handle's scheduler
    entry held in turn) the handle leaves no reference cycle once it has run or been cancelled:
    cycles of these were most of the simulator's garbage, and collecting them cost as much as
    the simulation itself at 1,000 sessions."""

    __slots__ = ("cancelled", "inner", "owner", "sim_inner")

    def __init__(self, owner: SimProcess, callback: Callable[[], None]) -> None:
        self.owner = owner
        self.sim_inner: Callable[[], None] | None = callback
        """What the process runs when the timer is due (the explorer reads it to label it)."""
        self.cancelled = False
        self.inner: TimerHandle | None = None

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.sim_inner = None
            self.owner._live.pop(id(self), None)
            if self.inner is not None:
                self.inner.cancel()
                self.inner = None

    def __call__(self) -> None:
        callback = self.sim_inner
        if self.cancelled or callback is None:
            return
        self.inner = None
        self.sim_inner = None
        self.owner._live.pop(id(self), None)
        self.owner.deliver(callback)


class SimProcess:
    """One simulated OS process sharing the world's scheduler."""

    def __init__(self, scheduler: Scheduler, name: str) -> None:
        self.scheduler = scheduler
        self.name = name
        self.state: ProcessState = "running"
        self.exit_code: int | None = None
        self._deferred: list[Callable[[], None]] = []
        self._live: dict[int, _Handle] = {}

    @property
    def alive(self) -> bool:
        return self.state != "dead"

    # -- the Clock port ----------------------------------------------------------------------

    @property
    def runs_in_deadline_order(self) -> bool:
        """As its scheduler does (see ``fsm.engine.runner``)."""
        return bool(getattr(self.scheduler, "runs_in_deadline_order", True))

    def now(self) -> float:
        return self.scheduler.now()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        handle = _Handle(self, callback)
        if self.state == "dead":
            handle.cancelled = True
            handle.sim_inner = None
            return handle
        self._live[id(handle)] = handle
        handle.inner = self.scheduler.call_at(deadline, handle)
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self.scheduler.now() + delay, callback)

    # -- signals -----------------------------------------------------------------------------

    def deliver(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` in this process: now, after SIGCONT, or never."""
        if self.state == "running":
            callback()
        elif self.state == "paused":
            self._deferred.append(callback)

    def pause(self) -> None:
        if self.state == "running":
            self.state = "paused"

    def resume(self) -> None:
        """SIGCONT: everything that came due while stopped runs now, in the order it came."""
        if self.state != "paused":
            return
        self.state = "running"
        pending, self._deferred = self._deferred, []
        for index, callback in enumerate(pending):
            if self.state != "running":  # a callback stopped or killed the process again
                if self.state == "paused":
                    self._deferred = pending[index:] + self._deferred
                return
            callback()

    def kill(self, code: int | None = -9) -> None:
        if self.state == "dead":
            return
        self.state = "dead"
        self.exit_code = code
        self._deferred.clear()
        for handle in list(self._live.values()):
            handle.cancel()
