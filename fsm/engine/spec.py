"""A declaration bound to its behaviour: the guard and effect functions and the context type.

The declaration (``fsm.engine.model``) is data; a machine module adds the few small functions its
names
refer to. Binding validates both together, so a guard named in a transition but never written
(or written and never used) fails at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

from fsm.engine.effects import Effect
from fsm.engine.events import Event
from fsm.engine.model import MachineDef
from fsm.engine.timer_table import TimerTable
from fsm.engine.validate import validate

Ctx = TypeVar("Ctx", bound=msgspec.Struct)

Guard = Callable[[Ctx, Event], bool]
EffectFn = Callable[[Ctx, Event], Effect | Iterable[Effect] | None]
"""Builds the effects of one declared effect name; may update the context (its only state)."""


@dataclass(frozen=True)
class MachineSpec(Generic[Ctx]):
    definition: MachineDef
    table: TimerTable
    context: type[Ctx]
    guards: Mapping[str, Guard[Ctx]] = field(default_factory=dict)
    effects: Mapping[str, EffectFn[Ctx]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self.definition, self.table, self.guards.keys(), self.effects.keys())

    @property
    def name(self) -> str:
        return self.definition.name

    def check(self, values: Mapping[str, float]) -> None:
        """Re-validate budgets and backoffs against configured durations (hosts, at start-up)."""
        validate(self.definition, self.table, values=values)


def emit(effect: Effect) -> Callable[[msgspec.Struct, Event], Effect]:
    """An effect function that always returns the same effect (most entries of a table)."""
    return lambda _ctx, _event: effect
