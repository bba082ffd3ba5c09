"""One compiled ``transitions.Machine`` serves every instance of a declaration.

Instances of one declaration share the compiled machine (it holds no per-instance state), so a
turn machine costs a couple of KiB instead of a whole ``transitions.Machine``. These tests pin
down that sharing never leaks state between instances: each has its own state, guards see their
own context, budgets count their own uses, and a declaration dropped by everyone is compiled
afresh rather than served stale.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest

from fsm.engine import machine as engine
from fsm.engine.events import Event
from fsm.engine.machine import StateMachine
from fsm.engine.model import Budget, State, on, state_timer
from fsm.engine.spec import MachineSpec
from tests.engine.toy import ToyContext, toy


def gate() -> MachineSpec[ToyContext]:
    return toy(
        (
            State("closed", timers=(state_timer("auto", "ten", "timeout"),)),
            State("open"),
        ),
        (
            on("open", "closed", "open", guard="allowed"),
            on("open", "closed", "open", consumes="opens"),
            on("shut", "open", "closed"),
            on("timeout", "closed", "failed"),
        ),
        budgets=(Budget("opens", limit=1, window="window"),),
        guards={"allowed": lambda ctx, _e: ctx.allowed},
    )


def test_instances_share_one_compiled_machine_but_not_their_state() -> None:
    spec = gate()
    a = StateMachine(spec, machine_id="a", context=ToyContext(allowed=True))
    b = StateMachine(spec, machine_id="b")
    assert a._compiled is b._compiled
    a.start(0.0)
    b.start(0.0)
    a.handle(Event("open"), 1.0)
    assert (a.state, b.state) == ("open", "closed")
    # b's guard reads b's context (not allowed), so only its budget lets it through, once
    b.handle(Event("open"), 1.0)
    assert b.state == "open" and b.budget_remaining("opens") == 0
    assert a.budget_remaining("opens") == 1
    b.handle(Event("shut"), 2.0)
    b.handle(Event("open"), 3.0)
    assert b.state == "closed"
    assert b.history[-1].reason == "blocked in 'closed' by allowed, budget opens"
    assert a.state == "open"


def test_a_dropped_declaration_is_forgotten() -> None:
    spec: Any = gate()
    key = id(spec)
    StateMachine(spec).start(0.0)
    assert key in engine._COMPILED
    del spec
    gc.collect()
    assert key not in engine._COMPILED


def test_an_unknown_initial_state_is_refused() -> None:
    with pytest.raises(ValueError, match="has no state 'ajar'"):
        StateMachine(gate(), initial="ajar")
