"""Small hand-made declarations for testing the engine's rules one at a time.

The production machines mix every feature; a rule such as "a span timer survives moves inside its
span" reads best on a machine of three states built for it. Every toy handles ``fault`` (the
validator demands it) with one ``*`` transition to ``failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from fsm.engine.events import Event
from fsm.engine.model import Backoff, Budget, MachineDef, State, Transition, on
from fsm.engine.spec import EffectFn, Guard, MachineSpec
from fsm.machines.timers import TimerSetting, TimerTable

TOY_TIMERS = TimerTable(
    "toy",
    (
        TimerSetting("one", 1.0, "one second"),
        TimerSetting("ten", 10.0, "ten seconds"),
        TimerSetting("silence", 5.0, "a silence window"),
        TimerSetting("cap", 30.0, "a span cap"),
        TimerSetting("window", 10.0, "a budget window"),
        TimerSetting("backoff_initial", 1.0, "first backoff delay"),
        TimerSetting("backoff_max", 4.0, "largest backoff delay"),
    ),
)


class ToyContext(msgspec.Struct):
    allowed: bool = False
    count: int = 0


FAILED = State("failed", terminal=True)
FAULT = on("fault", "*", "failed")


def toy(
    states: tuple[State, ...],
    transitions: tuple[Transition, ...],
    *,
    initial: str | None = None,
    budgets: tuple[Budget, ...] = (),
    backoffs: tuple[Backoff, ...] = (),
    guards: Mapping[str, Guard[Any]] | None = None,
    effects: Mapping[str, EffectFn[Any]] | None = None,
    name: str = "toy",
) -> MachineSpec[ToyContext]:
    """A validated spec: ``failed`` and the fault transition are added for you."""
    definition = MachineDef(
        name=name,
        initial=initial or states[0].name,
        states=(*states, FAILED),
        transitions=(*transitions, FAULT),
        budgets=budgets,
        backoffs=backoffs,
    )
    return MachineSpec(definition, TOY_TIMERS, ToyContext, guards or {}, effects or {})


def nothing(_ctx: ToyContext, _event: Event) -> None:
    """An effect with no output, for effect names a test only wants to see recorded."""
    return None
