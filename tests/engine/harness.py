"""A tiny host for one machine on the virtual clock, shared by the core tests.

``fsm.engine.runner.MachineGroup`` is the production host; it routes ``Signal`` effects to sibling
machines, which hides them from a test of one machine. ``Driver`` does the same timer work (each
``ArmTimer`` becomes a clock callback that feeds ``TimerFired`` back, each ``CancelTimer`` cancels
it) and keeps every other effect in ``effects`` so a test can assert on it.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

from fsm.engine.clock import TimerHandle, VirtualClock
from fsm.engine.effects import ArmTimer, CancelTimer, Effect
from fsm.engine.events import Event, TimerFired
from fsm.engine.machine import Record, Snapshot, StateMachine
from fsm.engine.model import Timer, TimerKind
from fsm.engine.spec import MachineSpec
from fsm.machines.timers import TimerValues


class Driver:
    """One machine, one virtual clock, and the domain effects it produced, in order."""

    def __init__(
        self,
        spec: MachineSpec[Any],
        values: TimerValues | None = None,
        *,
        context: msgspec.Struct | None = None,
        rng: random.Random | None = None,
        start_at: float = 0.0,
        machine: StateMachine[Any] | None = None,
        clock: VirtualClock | None = None,
    ) -> None:
        self.clock = clock or VirtualClock(start_at)
        self.machine: StateMachine[Any] = machine or StateMachine(
            spec, values, context=context, rng=rng
        )
        self.effects: list[Effect] = []
        self.arms: list[ArmTimer] = []
        self.raw: list[Effect] = []
        """Every effect, timer effects included, in order."""
        self._handles: dict[str, TimerHandle] = {}

    # -- driving -------------------------------------------------------------------------------

    def start(self) -> list[Effect]:
        return self._execute(self.machine.start(self.clock.now()))

    def send(self, trigger: str, **data: Any) -> list[Effect]:
        return self._execute(self.machine.handle(Event(trigger, data), self.clock.now()))

    def fire(self, timer: str, token: int) -> list[Effect]:
        """Deliver an expiry by hand, as a clock that missed a cancel would."""
        return self._execute(self.machine.handle(TimerFired(timer, token), self.clock.now()))

    def advance(self, to: float) -> None:
        self.clock.advance(to)

    def advance_by(self, delta: float) -> None:
        self.clock.advance_by(delta)

    def adopt(self, effects: list[Effect]) -> list[Effect]:
        """Schedule the ``ArmTimer`` effects a ``restore`` returned."""
        return self._execute(effects)

    # -- looking -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.machine.state

    @property
    def history(self) -> list[Record]:
        return self.machine.history

    def timer_records(self) -> list[Record]:
        """Records caused by a timer expiry (taken or not), oldest first."""
        return [r for r in self.machine.history if r.timer]

    def moves(self) -> list[tuple[float, str, str, str]]:
        """``(at, trigger, source, dest)`` of every transition taken, for compact asserts."""
        return [
            (r.at, r.trigger, r.source, r.dest)
            for r in self.machine.history
            if r.kind in ("transition", "internal")
        ]

    def take_effects(self) -> list[Effect]:
        out, self.effects = self.effects, []
        return out

    def snapshot(self) -> Snapshot:
        return self.machine.snapshot(self.clock.now())

    # -- timer plumbing ------------------------------------------------------------------------

    def _execute(self, effects: list[Effect]) -> list[Effect]:
        domain: list[Effect] = []
        self.raw.extend(effects)
        for effect in effects:
            if isinstance(effect, ArmTimer):
                self.arms.append(effect)
                old = self._handles.pop(effect.timer, None)
                if old is not None:
                    old.cancel()
                self._handles[effect.timer] = self.clock.call_at(
                    effect.deadline, self._expiry(effect.timer, effect.token)
                )
            elif isinstance(effect, CancelTimer):
                handle = self._handles.pop(effect.timer, None)
                if handle is not None:
                    handle.cancel()
            else:
                domain.append(effect)
        self.effects.extend(domain)
        return domain

    def _expiry(self, timer: str, token: int) -> Any:
        def fire() -> None:
            self._handles.pop(timer, None)
            self.fire(timer, token)

        return fire


def timers_living_in(spec: MachineSpec[Any], state: str) -> list[tuple[str, Timer]]:
    """``(declaring state, timer)`` for every timer that can be armed while in ``state``."""
    return [
        (s.name, t)
        for s, t in spec.definition.timers()
        if state == s.name or (t.kind is not TimerKind.STATE and state in t.span)
    ]
