"""Checks a declaration before anything runs it.

Every mistake a declaration can hold is reported at build time with the machine, state and
trigger in the message, so that a typo in a machine module fails the import (and every test), not
a production session hours later.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping

from fsm.engine.model import ANY_STATE, MachineDef, Timer, TimerKind
from fsm.engine.timer_table import TimerTable


class DeclarationError(ValueError):
    """A machine declaration that cannot run; ``problems`` lists every finding."""

    def __init__(self, machine: str, problems: list[str]) -> None:
        self.machine = machine
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"machine {machine!r} is not valid:\n{lines}")


def timer_span(state: str, timer: Timer) -> frozenset[str]:
    """The states a timer lives in: its declaring state plus its declared span."""
    return frozenset((state, *timer.span))


def validate(
    machine: MachineDef,
    table: TimerTable | None = None,
    guards: Iterable[str] | None = None,
    effects: Iterable[str] | None = None,
    values: Mapping[str, float] | None = None,
) -> None:
    """Raise ``DeclarationError`` listing every problem; return quietly when the machine is sound.

    ``table`` checks duration keys; ``guards``/``effects`` (the names a machine module binds)
    check that every name the declaration uses has an implementation and vice versa. Budgets are
    checked against ``values`` (effective durations after configuration), else the defaults.
    """
    problems: list[str] = []
    m = machine.name
    names = machine.state_names

    for name, count in Counter(names).items():
        if count > 1:
            problems.append(f"duplicate state {name!r}")
    known = set(names)
    if machine.initial not in known:
        problems.append(f"initial state {machine.initial!r} is not a declared state")

    def check_state(ref: str, where: str) -> bool:
        if ref not in known:
            problems.append(f"{where} names unknown state {ref!r}")
            return False
        return True

    budgets = {b.name for b in machine.budgets}
    backoffs = {b.name for b in machine.backoffs}
    for kind, items in (("budget", machine.budgets), ("backoff", machine.backoffs)):
        for name, count in Counter(i.name for i in items).items():
            if count > 1:
                problems.append(f"duplicate {kind} {name!r}")

    # Transitions: known states, known budgets, no duplicates (same trigger, source and guard).
    handled: dict[str, set[str]] = {s: set() for s in names}
    seen: Counter[tuple[str, str, str | None, str | None]] = Counter()
    for t in machine.transitions:
        where = f"transition {t.trigger!r}"
        for src in t.source:
            if src != ANY_STATE:
                check_state(src, f"{where} source")
        if t.dest is not None:
            check_state(t.dest, f"{where} destination")
        if t.consumes is not None and t.consumes not in budgets:
            problems.append(f"{where} consumes unknown budget {t.consumes!r}")
        for src in machine.sources(t):
            if src in known and machine.state(src).terminal:
                problems.append(f"terminal state {src!r} has an outgoing transition {t.trigger!r}")
            handled.setdefault(src, set()).add(t.trigger)
            key = (t.trigger, src, t.guard, t.consumes)
            seen[key] += 1
            if seen[key] == 2:
                problems.append(
                    f"duplicate transition {t.trigger!r} from state {src!r}"
                    + (f" with guard {t.guard!r}" if t.guard else "")
                )

    # Timers: unique names, known keys, a transition for the trigger in every state they live in.
    timer_names: Counter[str] = Counter()
    for state, timer in machine.timers():
        timer_names[timer.name] += 1
        where = f"timer {timer.name!r} of state {state.name!r}"
        if (timer.after is None) == (timer.backoff is None):
            problems.append(f"{where} needs exactly one of 'after' and 'backoff'")
        if timer.after is not None and table is not None and timer.after not in table:
            problems.append(f"{where}: {table.unknown_key_message(timer.after)}")
        if timer.backoff is not None and timer.backoff not in backoffs | {
            b.name for b in machine.budgets if b.backoff_initial
        }:
            problems.append(f"{where} uses unknown backoff {timer.backoff!r}")
        if timer.kind is TimerKind.STATE and timer.span:
            problems.append(f"{where} is a state timer and cannot have a span")
        if timer.kind is not TimerKind.SILENCE and timer.rearmed_by:
            problems.append(f"{where} has rearmed_by but only silence timers are re-armed")
        if timer.kind is TimerKind.SILENCE and not timer.rearmed_by:
            problems.append(f"{where} is a silence timer with no rearmed_by triggers")
        for s in timer.span:
            check_state(s, f"{where} span")
        if state.terminal:
            problems.append(f"{where}: terminal states cannot own timers")
        for s in sorted(timer_span(state.name, timer) & known):
            if timer.fires not in handled.get(s, set()):
                problems.append(
                    f"{where} fires {timer.fires!r} but state {s!r} has no transition for it"
                )
    for name, count in timer_names.items():
        if count > 1:
            problems.append(f"duplicate timer name {name!r}")

    # Reachability from the initial state, and a way out of every non-terminal state.
    if machine.initial in known:
        reached = {machine.initial}
        queue = deque([machine.initial])
        while queue:
            src = queue.popleft()
            for t in machine.transitions:
                if t.dest is not None and src in machine.sources(t) and t.dest not in reached:
                    reached.add(t.dest)
                    queue.append(t.dest)
        for name in names:
            if name not in reached:
                problems.append(f"state {name!r} is unreachable from {machine.initial!r}")
    for state in machine.states:
        if state.terminal:
            continue
        exits = [
            t
            for t in machine.transitions
            if t.dest not in (None, state.name) and state.name in machine.sources(t)
        ]
        if not exits:
            problems.append(f"non-terminal state {state.name!r} has no way out")
    if machine.fault_trigger is not None:
        for state in machine.states:
            if not state.terminal and machine.fault_trigger not in handled.get(state.name, set()):
                problems.append(
                    f"state {state.name!r} does not handle the fault trigger "
                    f"{machine.fault_trigger!r} (declare a '*' transition to a failure state)"
                )

    # Budgets and backoffs: keys exist, and pacing and budget make sense together.
    if table is not None:
        if values is None:
            values = table.defaults()
        for b in machine.budgets:
            where = f"budget {b.name!r}"
            for bkey in (b.window, b.backoff_initial, b.backoff_maximum):
                if bkey is not None and bkey not in table:
                    problems.append(f"{where}: {table.unknown_key_message(bkey)}")
            if b.limit < 1:
                problems.append(f"{where} has limit {b.limit}; it must allow at least one use")
            if (b.backoff_initial is None) != (b.backoff_maximum is None):
                problems.append(f"{where} needs both backoff_initial and backoff_maximum")
            if (
                b.backoff_initial
                and b.backoff_maximum
                and all(k in table for k in (b.window, b.backoff_initial, b.backoff_maximum))
            ):
                problems.extend(
                    _budget_backoff_problems(
                        where,
                        b.limit,
                        values[b.window],
                        values[b.backoff_initial],
                        values[b.backoff_maximum],
                        b.backoff_factor,
                    )
                )
        for bo in machine.backoffs:
            where = f"backoff {bo.name!r}"
            for bokey in (bo.initial, bo.maximum):
                if bokey not in table:
                    problems.append(f"{where}: {table.unknown_key_message(bokey)}")
            if (
                bo.initial in table
                and bo.maximum in table
                and values[bo.maximum] < values[bo.initial]
            ):
                problems.append(f"{where} has maximum below its initial delay")
            if bo.factor < 1:
                problems.append(f"{where} has factor {bo.factor} < 1: delays would shrink")
            if not 0 <= bo.jitter <= 1:
                problems.append(f"{where} has jitter {bo.jitter}; use a fraction in [0, 1]")
            for s in bo.resets_in:
                check_state(s, f"{where} resets_in")

    if guards is not None:
        problems.extend(_binding_problems("guard", {t.guard for t in machine.transitions}, guards))
    if effects is not None:
        used = {e for t in machine.transitions for e in t.effects}
        used |= {e for s in machine.states for e in s.on_enter}
        problems.extend(_binding_problems("effect", used, effects))

    if problems:
        raise DeclarationError(m, problems)


def _budget_backoff_problems(
    where: str, limit: int, window: float, initial: float, maximum: float, factor: float
) -> list[str]:
    problems: list[str] = []
    if maximum < initial:
        problems.append(f"{where} has backoff maximum below its initial delay")
    if limit < 2:
        problems.append(
            f"{where} allows {limit} use in its window, so its backoff never grows "
            "(a budget that makes the backoff meaningless)"
        )
    # The budget blocks a failure only if ``limit`` uses are still in the window when it comes.
    # The engine waits ``initial * factor**k`` after the (k+1)-th use in the window, so the
    # earliest such failure comes after the sum of the delays following all ``limit`` uses.
    spacing = sum(min(initial * factor**i, maximum) for i in range(limit))
    if spacing >= window:
        problems.append(
            f"{where}: its backoff spaces {limit} uses and the next failure over {spacing:g}s, "
            f"not less than the {window:g}s window, so the budget can never be exhausted"
        )
    return problems


def _binding_problems(kind: str, used: Iterable[str | None], bound: Iterable[str]) -> list[str]:
    used_names = {u for u in used if u is not None}

    bound_names = set(bound)
    out = [
        f"{kind} {n!r} is declared but has no implementation"
        for n in sorted(used_names - bound_names)
    ]
    out += [
        f"{kind} {n!r} is implemented but no transition uses it"
        for n in sorted(bound_names - used_names)
    ]
    return out
