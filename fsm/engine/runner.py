"""Runs sans-I/O machines on a clock: the one place timer effects become scheduled callbacks.

Every host (the wrapper, the control plane, the simulator) executes ``ArmTimer``/``CancelTimer``
and ``Signal`` identically, so that logic lives here once. Everything else a machine returns is
handed to the host's ``on_effect``.

Events are queued per group and handled one at a time: an effect handler that feeds another event
(to the same or a sibling machine) never re-enters a machine in the middle of a transition.

A timer re-armed to a later deadline keeps its place on the clock (see ``TimerEntry``): a silence
window pushed back by every heartbeat or every streamed delta costs two assignments per event, not
a cancelled clock entry and a new one, and only when the entry comes due while the deadline has
moved on is it scheduled again, at the deadline then current. Expiry still reaches the machine at
the last deadline armed, carrying the last token armed. That needs a clock that runs callbacks in
deadline order; a clock that says otherwise (``runs_in_deadline_order = False``: the explorer's,
where any pending callback may run next) gets a fresh entry for every arm, so that one step of
its search is one expiry.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from fsm.engine.clock import Clock, TimerHandle
from fsm.engine.effects import ArmTimer, CancelTimer, Effect, Signal
from fsm.engine.events import Event, TimerFired
from fsm.engine.machine import StateMachine

EffectHandler = Callable[[str, Effect], None]
"""``(machine_id, effect)``: executes a domain effect through the host's adapters."""


class MachineGroup:
    """Machines of one host that signal each other, sharing one clock and one event queue."""

    def __init__(self, clock: Clock, on_effect: EffectHandler) -> None:
        self.clock = clock
        self.on_effect = on_effect
        self.machines: dict[str, StateMachine[Any]] = {}
        self._armed: dict[tuple[str, str], TimerEntry] = {}
        self._lazy = bool(getattr(clock, "runs_in_deadline_order", True))
        self._queue: deque[tuple[str, Event | TimerFired | None]] = deque()
        self._busy = False

    def add(self, machine: StateMachine[Any], *, start: bool = True) -> StateMachine[Any]:
        if machine.machine_id in self.machines:
            raise ValueError(f"a machine with id {machine.machine_id!r} is already in the group")
        self.machines[machine.machine_id] = machine
        if start:
            self._enqueue(machine.machine_id, None)
        return machine

    def adopt(self, machine: StateMachine[Any], effects: list[Effect]) -> None:
        """Add a restored machine and schedule the timers its ``restore`` returned."""
        self.machines[machine.machine_id] = machine
        self._execute(machine.machine_id, effects)

    def remove(self, machine_id: str) -> None:
        self.machines.pop(machine_id, None)
        for key in [k for k in self._armed if k[0] == machine_id]:
            self._armed.pop(key).cancel()

    def send(self, machine_id: str, event: Event | TimerFired) -> None:
        self._enqueue(machine_id, event)

    def _enqueue(self, machine_id: str, event: Event | TimerFired | None) -> None:
        self._queue.append((machine_id, event))
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                target, ev = self._queue.popleft()
                machine = self.machines.get(target)
                if machine is None:
                    continue
                now = self.clock.now()
                effects = machine.start(now) if ev is None else machine.handle(ev, now)
                self._execute(target, effects)
        finally:
            self._busy = False

    def _execute(self, machine_id: str, effects: list[Effect]) -> None:
        # The engine re-arms a timer as CancelTimer then ArmTimer: a cancelled timer keeps its
        # clock entry until the list is done, for an ArmTimer further on to take it over.
        cancelled: dict[tuple[str, str], TimerEntry] | None = None
        for effect in effects:
            if isinstance(effect, ArmTimer):
                key = (effect.machine_id, effect.timer)
                armed = self._armed.pop(key, None)
                if armed is None and cancelled is not None:
                    armed = cancelled.pop(key, None)
                self._arm(key, armed, effect)
            elif isinstance(effect, CancelTimer):
                armed = self._armed.pop((machine_id, effect.timer), None)
                if armed is not None:
                    if cancelled is None:
                        cancelled = {}
                    cancelled[armed.key] = armed
            elif isinstance(effect, Signal):
                self._queue.append((effect.target, Event(effect.trigger, effect.data)))
            else:
                self.on_effect(machine_id, effect)
        if cancelled:
            for armed in cancelled.values():
                armed.cancel()

    def _arm(self, key: tuple[str, str], armed: TimerEntry | None, effect: ArmTimer) -> None:
        if armed is not None:
            if self._lazy and armed.scheduled_for <= effect.deadline:  # pushed back
                armed.deadline = effect.deadline
                armed.token = effect.token
                self._armed[key] = armed
                return
            armed.cancel()  # brought forward: its clock entry would come due too late
        self._armed[key] = TimerEntry(self, key, effect.deadline, effect.token)

    def _due(self, armed: TimerEntry) -> None:
        if self._armed.get(armed.key) is not armed:  # pragma: no cover - cancel() unhooks it
            return
        if armed.deadline > self.clock.now():  # pushed back since it was scheduled
            armed.schedule()
            return
        del self._armed[armed.key]
        armed.handle = None  # the clock entry that just ran holds this object: no cycle left
        self.send(armed.key[0], TimerFired(armed.key[1], armed.token))


class TimerEntry:
    """One armed timer of one machine: the deadline and token armed last, and the clock entry
    serving it, scheduled for ``scheduled_for`` (never later than ``deadline``)."""

    __slots__ = ("deadline", "group", "handle", "key", "scheduled_for", "token")

    def __init__(
        self, group: MachineGroup, key: tuple[str, str], deadline: float, token: int
    ) -> None:
        self.group = group
        self.key = key
        self.deadline = deadline
        self.token = token
        self.scheduled_for = deadline
        self.handle: TimerHandle | None = group.clock.call_at(deadline, self._due)

    def schedule(self) -> None:
        self.scheduled_for = self.deadline
        self.handle = self.group.clock.call_at(self.deadline, self._due)

    def _due(self) -> None:
        self.group._due(self)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
