"""Every declared transition and every declared timer of every machine, driven on the virtual clock.

The cases are generated from the declarations in ``fsm.machines.catalog``, so a transition or timer
added to
a machine module is tested by this file without anyone writing a line. Each transition case puts
the machine in the source state (``StateMachine.restore`` from a hand-made ``Snapshot`` holding the
timers that live in that state), chooses a context in which the transition is the one the engine
must take (its guard holds, earlier alternatives for the same trigger are blocked by their guard or
a spent budget), delivers the trigger — by letting the timer expire on the clock when a timer of the
state fires it, else as an event — and checks the destination, the declared effects (transition
effects, then the destination's entry effects, in order) and the timers armed afterwards against
the rules written in ``fsm.engine.model``.

The per-machine modules (``test_machine_*.py``) tell each machine's main story by hand, with
concrete effect values; this file makes sure nothing declared is left untested.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from fsm.engine.effects import ArmTimer, CancelTimer, Effect
from fsm.engine.events import Event
from fsm.engine.machine import ArmedTimer, Snapshot, StateMachine
from fsm.engine.model import Timer, TimerKind, Transition
from fsm.engine.spec import MachineSpec
from fsm.engine.validate import timer_span
from fsm.machines import catalog
from tests.engine.harness import Driver, timers_living_in

T0 = 1000.0
"""Restore time: far from zero so that a test mixing up absolute and relative time fails."""

# Contexts (and event payloads) to choose from: the first one that makes the case's guards come
# out right is used. A case no candidate can set up fails, naming itself.
_TURN = [
    {
        "message_id": "m1",
        "progressed": progressed,
        "resubmitted": resubmitted,
        "tools_running": tools,
        "close_reason": close,
        "error": error,
    }
    for progressed, resubmitted, tools, close, error in itertools.product(
        (False, True),
        (False, True),
        ([], ["part-1"]),
        ("", "completed", "interrupted", "error"),
        ("", "boom"),
    )
]
CANDIDATES: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {
    "wrapper": [({"active_turns": n}, {}) for n in (0, 1, 2)],
    "session": [({"active_messages": n}, {}) for n in (0, 1, 2)],
    "agent_link": [
        ({"generation": 2, "subscriptions": 2}, {}),
        ({"generation": 2, "subscriptions": 2}, {"generation": 1}),
    ],
    "ingest_link": [({}, {})],
    "turn": [(ctx, {}) for ctx in _TURN],
    "supervisor": [({}, {"code": code}) for code in (0, 1, 2)],
}


@dataclass(frozen=True)
class Case:
    spec: MachineSpec[Any]
    index: int
    source: str

    @property
    def transition(self) -> Transition:
        return self.spec.definition.transitions[self.index]

    @property
    def id(self) -> str:
        t = self.transition
        guard = f"[{t.guard or ''}{'|' if t.guard and t.consumes else ''}{t.consumes or ''}]"
        dest = t.dest or "(internal)"
        return (
            f"{self.spec.name}:{self.source}--{t.trigger}{guard if guard != '[]' else ''}->{dest}"
        )


def _cases() -> Iterator[Case]:
    for spec in catalog.ALL:
        for index, t in enumerate(spec.definition.transitions):
            for source in spec.definition.sources(t):
                yield Case(spec, index, source)


CASES = list(_cases())


def _timer_firing(spec: MachineSpec[Any], state: str, trigger: str) -> Timer | None:
    for _declaring, timer in timers_living_in(spec, state):
        if timer.fires == trigger:
            return timer
    return None


def _delay(spec: MachineSpec[Any], timer: Timer) -> float:
    return spec.table.defaults()[timer.after] if timer.after is not None else 1.0


def _setup(
    case: Case, event: Event, fire_at: float
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[float]]]:
    """(context, event data, budget uses) under which ``case.transition`` is the one taken."""
    spec, t, src = case.spec, case.transition, case.source
    earlier = [
        e
        for e in spec.definition.transitions[: case.index]
        if e.trigger == t.trigger and src in spec.definition.sources(e)
    ]
    spent: set[str] = set()
    must_fail: list[str] = []
    for e in earlier:
        if e.consumes is not None and e.consumes != t.consumes:
            spent.add(e.consumes)  # blocked by its budget, whatever its guard says
        elif e.guard is not None:
            must_fail.append(e.guard)
        else:
            pytest.fail(f"{case.id}: shadowed by an unconditional earlier transition {e}")
    for ctx_fields, data in CANDIDATES[spec.name]:
        ctx = msgspec.convert(ctx_fields, spec.context)
        ev = Event(event.trigger, data if not event.data else event.data)
        if t.guard is not None and not spec.guards[t.guard](ctx, ev):
            continue
        if any(spec.guards[g](ctx, ev) for g in must_fail):
            continue
        budgets = {
            b.name: [fire_at] * b.limit if b.name in spent else [] for b in spec.definition.budgets
        }
        return ctx_fields, ev.data, budgets
    pytest.fail(f"{case.id}: no candidate context makes this transition the one taken")


def _restore(
    spec: MachineSpec[Any],
    state: str,
    context: dict[str, Any],
    budgets: dict[str, list[float]],
    timers: list[ArmedTimer],
) -> Driver:
    snapshot = Snapshot(
        machine=spec.name,
        machine_id=spec.name,
        state=state,
        taken_at=T0,
        timers=timers,
        budgets=budgets,
        backoffs={b.name: 0 for b in spec.definition.backoffs},
        context=context,
        next_token=len(timers) + 1,
    )
    machine, effects = StateMachine.restore(spec, snapshot, T0)
    d = Driver(spec, machine=machine, start_at=T0)
    d.adopt(effects)
    return d


def _expected_effects(
    spec: MachineSpec[Any], context: dict[str, Any], names: tuple[str, ...], event: Event
) -> list[Effect]:
    ctx = msgspec.convert(copy.deepcopy(context), spec.context)
    out: list[Effect] = []
    for name in names:
        produced = spec.effects[name](ctx, event)
        if produced is None:
            continue
        out.extend([produced] if isinstance(produced, Effect) else produced)
    return out


def _expected_timers(
    spec: MachineSpec[Any], case: Case, before: dict[str, float], fired: Timer | None, now: float
) -> dict[str, float | None]:
    """Timer name → deadline after the transition (``None``: freshly armed, any delay).

    The rules of ``fsm.engine.model``: a state timer lives in its state only and is armed on every
    entry;
    span and silence timers live across their span, are kept by moves inside it and cancelled on
    leaving it; a silence timer is armed on entering its span from outside and re-armed by its
    ``rearmed_by`` triggers (a periodic one by its own expiry)."""
    t, src = case.transition, case.source
    decl = {timer.name: (s.name, timer) for s, timer in spec.definition.timers()}
    values = spec.table.defaults()

    def fresh(timer: Timer) -> float | None:
        return now + values[timer.after] if timer.after is not None else None

    after: dict[str, float | None] = {}
    if t.dest is None:
        after.update(before)
        dest = src
    else:
        dest = t.dest
        for name, deadline in before.items():
            declaring, timer = decl[name]
            if timer.kind is not TimerKind.STATE and dest in timer_span(declaring, timer):
                after[name] = deadline
        for declaring, timer in decl.values():
            span = timer_span(declaring, timer)
            own = declaring == dest and (timer.kind is TimerKind.STATE or timer.name not in after)
            silence_entered = timer.kind is TimerKind.SILENCE and dest in span and src not in span
            if own or (silence_entered and timer.name not in after):
                after[timer.name] = fresh(timer)
    rearm = [decl[name][1] for name in after]
    if fired is not None and fired.name not in after:
        declaring, timer = decl[fired.name]
        if dest in timer_span(declaring, timer):
            rearm.append(timer)
    for timer in rearm:
        if t.trigger in timer.rearmed_by:
            after[timer.name] = fresh(timer)
    return after


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_transition(case: Case) -> None:
    spec, t, src = case.spec, case.transition, case.source
    fired = _timer_firing(spec, src, t.trigger)
    fire_at = T0 + (_delay(spec, fired) if fired is not None else 0.0)
    event = Event(t.trigger, {"timer": fired.name} if fired is not None else {})
    context, data, budgets = _setup(case, event, fire_at)
    # The timers that live in the source state; the one that fires this trigger expires first.
    armed: list[ArmedTimer] = []
    for token, (_declaring, timer) in enumerate(timers_living_in(spec, src), start=1):
        deadline = fire_at if timer is fired else fire_at + _delay(spec, timer)
        armed.append(ArmedTimer(timer.name, deadline, token))
    d = _restore(spec, src, context, budgets, armed)
    before = {a.name: a.deadline for a in armed if fired is None or a.name != fired.name}

    if fired is not None:
        d.advance(fire_at - 0.001)
        assert d.state == src and len(d.history) == 1, "nothing fires before the deadline"
        d.advance(fire_at)
        event = Event(t.trigger, {"timer": fired.name})
    else:
        event = Event(t.trigger, data)
        d.send(t.trigger, **data)

    dest = t.dest if t.dest is not None else src
    entry = spec.definition.state(t.dest).on_enter if t.dest is not None else ()
    assert len(d.history) == 2, [r for r in d.history]
    rec = d.history[1]
    assert (rec.kind, rec.at, rec.trigger, rec.source, rec.dest) == (
        "internal" if t.dest is None else "transition",
        fire_at,
        t.trigger,
        src,
        dest,
    )
    assert rec.timer == (fired.name if fired is not None else "")
    assert rec.effects == (*t.effects, *entry)
    assert d.state == dest
    assert d.effects == _expected_effects(spec, context, (*t.effects, *entry), event)
    if t.consumes is not None:
        assert d.machine.budget_uses[t.consumes] == [fire_at]
    expected = _expected_timers(spec, case, before, fired, fire_at)
    assert set(d.machine.deadlines()) == set(expected)
    for name, deadline in expected.items():
        if deadline is not None:
            assert d.machine.deadlines()[name] == pytest.approx(deadline), name
    for name in set(before) - set(expected):
        assert any(isinstance(e, CancelTimer) and e.timer == name for e in d.raw), name
    if spec.definition.state(dest).terminal:
        assert d.machine.timers == {}, "a terminal state keeps no timer"


# -- every timer ------------------------------------------------------------------------------

TIMERS = [
    (spec, state.name, timer) for spec in catalog.ALL for state, timer in spec.definition.timers()
]


def _entry(spec: MachineSpec[Any], state: str, timer: Timer) -> Transition | None:
    """A transition into ``state`` from outside the timer's span (None: the initial state)."""
    if state == spec.definition.initial:
        return None
    span = timer_span(state, timer)
    for t in spec.definition.transitions:
        if t.dest == state and any(s not in span for s in spec.definition.sources(t)):
            return t
    pytest.fail(f"{spec.name}: no way into {state!r} from outside the span of {timer.name!r}")


def _keys(spec: MachineSpec[Any], timer: Timer) -> set[str]:
    if timer.after is not None:
        return {timer.after}
    names = {b.name: (b.backoff_initial, b.backoff_maximum) for b in spec.definition.budgets}
    names |= {b.name: (b.initial, b.maximum) for b in spec.definition.backoffs}
    assert timer.backoff is not None
    return {k for k in names[timer.backoff] if k}


@pytest.mark.parametrize(
    ("spec", "state", "timer"), TIMERS, ids=[f"{s.name}:{st}:{t.name}" for s, st, t in TIMERS]
)
def test_every_timer_fires_at_its_delay_after_entering_its_state(
    spec: MachineSpec[Any], state: str, timer: Timer
) -> None:
    # Every other duration is pushed out of the way so that this timer is the first to expire.
    values = spec.table.resolve({k: 10**6 for k in spec.table if k not in _keys(spec, timer)})
    entry = _entry(spec, state, timer)
    if entry is None:
        d = Driver(spec, values, start_at=T0)
        d.start()
    else:
        source = next(
            s for s in spec.definition.sources(entry) if s not in timer_span(state, timer)
        )
        index = spec.definition.transitions.index(entry)
        context, data, budgets = _setup(Case(spec, index, source), Event(entry.trigger), T0)
        snapshot = Snapshot(
            machine=spec.name,
            machine_id=spec.name,
            state=source,
            taken_at=T0,
            timers=[],
            budgets=budgets,
            backoffs={b.name: 0 for b in spec.definition.backoffs},
            context=context,
            next_token=1,
        )
        machine, _ = StateMachine.restore(spec, snapshot, T0, values)
        d = Driver(spec, machine=machine, start_at=T0)
        d.send(entry.trigger, **data)
    assert d.state == state
    arm = next(a for a in d.arms if a.timer == timer.name)
    if timer.after is not None:
        assert arm == ArmTimer(
            spec.name, timer.name, arm.token, T0 + values[timer.after], arm.delay
        )
        assert arm.delay == values[timer.after]
    else:
        low = min(values[k] for k in _keys(spec, timer))
        assert low <= arm.delay <= low * 1.2, "the first backoff delay is the initial one (+jitter)"
    d.advance(arm.deadline - 0.001)
    assert d.timer_records() == []
    d.advance(arm.deadline)
    rec = d.timer_records()[0]
    assert (rec.timer, rec.trigger, rec.at, rec.source) == (
        timer.name,
        timer.fires,
        arm.deadline,
        state,
    )
    assert rec.kind in ("transition", "internal"), rec
