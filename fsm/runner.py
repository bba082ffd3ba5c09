"""Runs sans-I/O machines on a clock: the one place timer effects become scheduled callbacks.

Every host (the wrapper, the control plane, the simulator) executes ``ArmTimer``/``CancelTimer``
and ``Signal`` identically, so that logic lives here once. Everything else a machine returns is
handed to the host's ``on_effect``.

Events are queued per group and handled one at a time: an effect handler that feeds another event
(to the same or a sibling machine) never re-enters a machine in the middle of a transition.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from fsm.clock import Clock, TimerHandle
from fsm.effects import ArmTimer, CancelTimer, Effect, Signal
from fsm.engine import StateMachine
from fsm.events import Event, TimerFired

EffectHandler = Callable[[str, Effect], None]
"""``(machine_id, effect)``: executes a domain effect through the host's adapters."""


class MachineGroup:
    """Machines of one host that signal each other, sharing one clock and one event queue."""

    def __init__(self, clock: Clock, on_effect: EffectHandler) -> None:
        self.clock = clock
        self.on_effect = on_effect
        self.machines: dict[str, StateMachine[Any]] = {}
        self._handles: dict[tuple[str, str], TimerHandle] = {}
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
        for key in [k for k in self._handles if k[0] == machine_id]:
            self._handles.pop(key).cancel()

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
        for effect in effects:
            if isinstance(effect, ArmTimer):
                self._arm(effect)
            elif isinstance(effect, CancelTimer):
                handle = self._handles.pop((machine_id, effect.timer), None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(effect, Signal):
                self._queue.append((effect.target, Event(effect.trigger, effect.data)))
            else:
                self.on_effect(machine_id, effect)

    def _arm(self, effect: ArmTimer) -> None:
        key = (effect.machine_id, effect.timer)
        old = self._handles.pop(key, None)
        if old is not None:
            old.cancel()
        fired = TimerFired(effect.timer, effect.token)

        def fire() -> None:
            self._handles.pop(key, None)
            self.send(effect.machine_id, fired)

        self._handles[key] = self.clock.call_at(effect.deadline, fire)
