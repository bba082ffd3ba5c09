"""How the engine treats events: guards, events it cannot take, faults, and the record it keeps.

A lifecycle engine earns trust by what it does with the unexpected: an event in the wrong state
is recorded with its reason (never raised, never silently lost), and a bug inside a guard or effect
moves the machine to its declared failure state instead of killing a task nobody watches.
"""

from __future__ import annotations

from typing import Any

import pytest

from fsm.engine.effects import ArmTimer, CancelTimer, Effect, SendHello
from fsm.engine.events import Event
from fsm.engine.machine import Record, StateMachine
from fsm.engine.model import MachineDef, State, on, state_timer
from fsm.engine.spec import MachineSpec
from tests.engine.harness import Driver
from tests.engine.toy import TOY_TIMERS, ToyContext, nothing, toy


def _boom(_ctx: ToyContext, _event: Event) -> Any:
    raise RuntimeError("boom")


def _hello(_ctx: ToyContext, _event: Event) -> Effect:
    return SendHello()


def door(**overrides: Any) -> MachineSpec[ToyContext]:
    """``closed`` --open [allowed]--> ``open``; the effects can be swapped for failing ones."""
    effects: dict[str, Any] = {"greet": _hello, "log": nothing}
    effects.update(overrides.pop("effects", {}))
    guards: dict[str, Any] = {"allowed": lambda ctx, _e: ctx.allowed}
    guards.update(overrides.pop("guards", {}))
    return toy(
        (
            State("closed", timers=(state_timer("auto", "ten", "timeout"),)),
            State("open", on_enter=("log",)),
        ),
        (
            on("open", "closed", "open", guard="allowed", effects="greet"),
            on("shut", "open", "closed"),
            on("timeout", "closed", "failed"),
        ),
        guards=guards,
        effects=effects,
    )


def test_a_guard_blocks_and_the_block_is_recorded() -> None:
    d = Driver(door())
    d.start()
    assert d.send("open") == []
    assert d.state == "closed"
    rec = d.history[-1]
    assert (rec.kind, rec.trigger, rec.source, rec.dest) == ("ignored", "open", "closed", "closed")
    assert rec.reason == "blocked in 'closed' by allowed"
    d.machine.context.allowed = True
    assert d.send("open") == [SendHello()]
    assert d.state == "open"


def test_a_guard_sees_the_event_payload() -> None:
    spec = door(guards={"allowed": lambda _ctx, event: event.data.get("key") == "yes"})
    d = Driver(spec)
    d.start()
    d.send("open", key="no")
    assert d.state == "closed"
    d.send("open", key="yes")
    assert d.state == "open"


def test_an_invalid_event_is_ignored_and_recorded_with_its_reason() -> None:
    d = Driver(door())
    d.start()
    d.advance(3.0)
    assert d.send("shut") == []
    assert d.state == "closed"
    rec = d.history[-1]
    assert rec == Record(
        at=3.0,
        machine="toy",
        machine_id="toy",
        kind="ignored",
        trigger="shut",
        source="closed",
        dest="closed",
        reason="no transition for 'shut' in state 'closed'",
    )
    assert d.machine.deadlines() == {"auto": 10.0}, "an ignored event touches no timer"


def test_a_terminal_machine_ignores_everything() -> None:
    d = Driver(door())
    d.start()
    d.advance(10.0)
    assert d.state == "failed"
    assert d.send("open") == []
    assert d.history[-1].reason == "machine is terminal"


def test_every_transition_is_recorded_with_time_ids_states_and_effects() -> None:
    seen: list[Record] = []
    machine = StateMachine(door(), machine_id="door-7", on_record=seen.append)
    machine.context.allowed = True
    machine.start(1.0)
    machine.handle(Event("open"), 2.5)
    assert machine.history == seen
    start, opened = machine.history
    assert (start.kind, start.trigger, start.dest, start.at) == ("start", "start", "closed", 1.0)
    assert opened == Record(
        at=2.5,
        machine="toy",
        machine_id="door-7",
        kind="transition",
        trigger="open",
        source="closed",
        dest="open",
        effects=("greet", "log"),
    )


def test_history_limit_keeps_the_newest_records() -> None:
    machine = StateMachine(door(), history_limit=3)
    machine.context.allowed = True
    machine.start(0.0)
    for t in range(1, 6):
        machine.handle(Event("open" if t % 2 else "shut"), float(t))
    assert [r.at for r in machine.history] == [3.0, 4.0, 5.0]


def test_effects_come_back_typed_with_the_timer_effects_for_the_host() -> None:
    machine = StateMachine(door(), machine_id="d1")
    machine.context.allowed = True
    assert machine.start(0.0) == [ArmTimer("d1", "auto", 1, 10.0, 10.0)]
    assert machine.handle(Event("open"), 4.0) == [SendHello(), CancelTimer("d1", "auto", 1)]
    assert machine.handle(Event("shut"), 5.0) == [ArmTimer("d1", "auto", 2, 15.0, 10.0)]


# -- faults ----------------------------------------------------------------------------------


def test_an_exception_in_a_guard_becomes_the_fault_transition() -> None:
    d = Driver(door(guards={"allowed": _boom}))
    d.start()
    d.advance(2.0)
    d.send("open")
    assert d.state == "failed"
    fault, failed = d.history[-2:]
    assert fault.kind == "fault"
    assert fault.reason == "RuntimeError: boom (while handling 'open' in 'closed')"
    assert (failed.trigger, failed.source, failed.dest) == ("fault", "closed", "failed")
    assert d.machine.timers == {}, "the failure state's entry cancelled the state timer"
    d.advance(100.0)
    assert d.timer_records() == []


def test_an_exception_in_an_effect_becomes_the_fault_transition_after_the_move() -> None:
    d = Driver(door(effects={"greet": _boom}))
    d.machine.context.allowed = True
    d.start()
    d.send("open")
    assert d.state == "failed"
    kinds = [(r.kind, r.trigger, r.source, r.dest) for r in d.history[1:]]
    assert kinds == [
        ("transition", "open", "closed", "open"),
        ("fault", "open", "open", "open"),
        ("transition", "fault", "open", "failed"),
    ]


def test_an_exception_in_an_entry_effect_becomes_the_fault_transition() -> None:
    d = Driver(door(effects={"log": _boom}))
    d.machine.context.allowed = True
    d.start()
    d.send("open")
    assert d.state == "failed"
    assert any(r.kind == "fault" and "boom" in r.reason for r in d.history)


def test_the_fault_payload_names_the_error() -> None:
    seen: list[Event] = []

    def note(_ctx: ToyContext, event: Event) -> None:
        seen.append(event)

    spec = MachineSpec(
        MachineDef(
            name="noted",
            initial="a",
            states=(State("a"), State("failed", terminal=True, on_enter=("note",))),
            transitions=(on("go", "a", "a", guard="bad"), on("fault", "*", "failed")),
        ),
        TOY_TIMERS,
        ToyContext,
        guards={"bad": lambda _c, _e: 1 / 0 == 0},
        effects={"note": note},
    )
    d = Driver(spec)
    d.start()
    d.send("go")
    assert seen[-1].trigger == "fault"
    assert seen[-1].data["error"].startswith("ZeroDivisionError: division by zero")


def test_a_fault_inside_the_fault_transition_raises_instead_of_looping() -> None:
    spec = MachineSpec(
        MachineDef(
            name="doomed",
            initial="a",
            states=(State("a"), State("failed", terminal=True, on_enter=("explode",))),
            transitions=(on("go", "a", "a", effects="explode"), on("fault", "*", "failed")),
        ),
        TOY_TIMERS,
        ToyContext,
        effects={"explode": _boom},
    )
    machine = StateMachine(spec)
    machine.start(0.0)
    with pytest.raises(RuntimeError, match=r"machine 'doomed': RuntimeError: boom"):
        machine.handle(Event("go"), 1.0)


def test_a_machine_without_a_fault_trigger_raises_the_error_with_context() -> None:
    spec = MachineSpec(
        MachineDef(
            name="strict",
            initial="a",
            states=(State("a"), State("b", terminal=True)),
            transitions=(on("go", "a", "b", effects="explode"),),
            fault_trigger=None,
        ),
        TOY_TIMERS,
        ToyContext,
        effects={"explode": _boom},
    )
    machine = StateMachine(spec)
    machine.start(0.0)
    with pytest.raises(RuntimeError, match=r"boom \(while handling 'go' in 'b'\)"):
        machine.handle(Event("go"), 1.0)


def test_an_exception_in_the_initial_states_entry_effect_becomes_the_fault_transition() -> None:
    """Regression: ``start()`` let the error escape, killing the host that added the machine."""
    spec = toy(
        (State("a", on_enter=("greet",), timers=(state_timer("auto", "ten", "timeout"),)),),
        (on("timeout", "a", "failed"),),
        effects={"greet": _boom},
    )
    d = Driver(spec)
    d.start()
    assert d.state == "failed"
    assert [(r.kind, r.trigger, r.dest) for r in d.history] == [
        ("start", "start", "a"),
        ("fault", "start", "a"),
        ("transition", "fault", "failed"),
    ]
    assert d.history[1].reason == "RuntimeError: boom (while handling 'start' in 'a')"
