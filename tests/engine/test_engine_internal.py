"""Internal transitions are chosen exactly as ``transitions`` would choose them.

The engine takes an event whose candidates in the current state are all internal (heartbeats,
stream events, progress) without going through ``transitions``: they change no state. These
tests hold that shortcut to the same rules as every other transition: candidates in declaration
order, guard before budget, a blocked event recorded with its guards, a raising guard a fault,
and a silence timer re-armed by the event.
"""

from __future__ import annotations

from typing import Any

from fsm.engine.effects import ArmTimer, CancelTimer
from fsm.engine.events import Event
from fsm.engine.machine import StateMachine
from fsm.engine.model import Budget, State, on, silence_timer
from fsm.engine.spec import MachineSpec
from tests.engine.toy import ToyContext, toy


def _count(ctx: ToyContext, _event: Event) -> None:
    ctx.count += 1


def _raise(_ctx: ToyContext, _event: Event) -> bool:
    raise RuntimeError("guard broke")


def watcher(guards: dict[str, Any] | None = None) -> MachineSpec[ToyContext]:
    return toy(
        (
            State(
                "watching",
                timers=(silence_timer("quiet", "silence", "quiet_elapsed", rearmed_by=("ping",)),),
            ),
        ),
        (
            on("ping", "watching", None, guard="allowed", effects="count"),
            on("ping", "watching", None, consumes="pings"),
            on("quiet_elapsed", "watching", "failed"),
        ),
        budgets=(Budget("pings", limit=1, window="window"),),
        guards=guards or {"allowed": lambda ctx, _e: ctx.allowed},
        effects={"count": _count},
    )


def test_the_first_candidate_whose_guard_holds_is_taken_and_re_arms_its_timer() -> None:
    m = StateMachine(watcher(), context=ToyContext(allowed=True))
    m.start(0.0)
    effects = m.handle(Event("ping"), 2.0)
    assert [type(e) for e in effects] == [CancelTimer, ArmTimer]
    assert isinstance(effects[1], ArmTimer) and effects[1].deadline == 7.0
    assert m.context.count == 1
    assert m.budget_remaining("pings") == 1  # the budgeted candidate was not reached
    rec = m.history[-1]
    assert (rec.kind, rec.trigger, rec.effects) == ("internal", "ping", ("count",))


def test_a_blocked_guard_falls_through_to_the_budget_and_then_blocks() -> None:
    m = StateMachine(watcher())
    m.start(0.0)
    assert m.handle(Event("ping"), 1.0) != []  # the budget lets one through
    assert m.budget_remaining("pings") == 0
    assert m.handle(Event("ping"), 2.0) == []
    rec = m.history[-1]
    assert rec.kind == "ignored"
    assert rec.reason == "blocked in 'watching' by allowed, budget pings"
    assert m.context.count == 0


def test_a_guard_that_raises_is_a_fault() -> None:
    m = StateMachine(watcher({"allowed": _raise}))
    m.start(0.0)
    m.handle(Event("ping"), 1.0)
    assert m.state == "failed"
    assert [r.kind for r in m.history] == ["start", "fault", "transition"]
    assert "RuntimeError: guard broke" in m.history[1].reason
