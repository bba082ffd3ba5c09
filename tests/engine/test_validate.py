"""Declaration checks: one test per kind of mistake, with the message a developer will read.

A declaration is checked when its module is imported (``MachineSpec`` validates itself), so each of
these mistakes fails every test at once with a message naming the machine, the state and the
trigger — instead of a session stuck in production hours later.
"""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from fsm.engine.model import Backoff, Budget, MachineDef, State, Timer, TimerKind, on, state_timer
from fsm.engine.spec import MachineSpec
from fsm.engine.validate import DeclarationError, validate
from fsm.machines import session
from fsm.machines.timers import CONTROL_TIMERS
from tests.engine.harness import Driver
from tests.engine.toy import TOY_TIMERS, ToyContext

BASE = MachineDef(
    name="door",
    initial="closed",
    states=(
        State("closed", timers=(state_timer("auto_open", "ten", "timeout"),)),
        State("open"),
        State("broken", terminal=True),
    ),
    transitions=(
        on("open", "closed", "open"),
        on("shut", "open", "closed"),
        on("timeout", "closed", "open"),
        on("fault", "*", "broken"),
    ),
)


def problems(machine: MachineDef, **kwargs: object) -> list[str]:
    with pytest.raises(DeclarationError) as info:
        validate(machine, TOY_TIMERS, **kwargs)  # type: ignore[arg-type]
    assert info.value.machine == machine.name
    assert str(info.value).startswith(f"machine {machine.name!r} is not valid:\n  - ")
    return info.value.problems


def test_the_base_declaration_is_valid() -> None:
    validate(BASE, TOY_TIMERS)


def with_states(*extra: State) -> tuple[State, ...]:
    return (*BASE.states, *extra)


def with_transitions(*extra: object) -> tuple[object, ...]:
    return (*BASE.transitions, *extra)


# -- states ----------------------------------------------------------------------------------


def test_unknown_states_in_transitions() -> None:
    machine = replace(
        BASE, transitions=with_transitions(on("kick", "opne", "open"), on("jam", "open", "stuk"))
    )
    assert problems(machine) == [
        "transition 'kick' source names unknown state 'opne'",
        "transition 'jam' destination names unknown state 'stuk'",
    ]


def test_unknown_initial_state() -> None:
    assert "initial state 'ajar' is not a declared state" in problems(replace(BASE, initial="ajar"))


def test_unreachable_state() -> None:
    machine = replace(
        BASE,
        states=with_states(State("attic")),
        transitions=with_transitions(on("x", "attic", "open")),
    )
    assert problems(machine) == ["state 'attic' is unreachable from 'closed'"]


def test_non_terminal_state_with_no_way_out() -> None:
    machine = replace(
        BASE,
        states=with_states(State("trap")),
        transitions=(
            *BASE.transitions[:3],
            on("fall", "open", "trap"),
            on("fault", "open", "broken"),
            on("fault", "closed", "broken"),
            on("poke", "trap", None),
        ),
    )
    found = problems(machine)
    assert "non-terminal state 'trap' has no way out" in found


def test_a_non_terminal_state_must_handle_the_fault_trigger() -> None:
    machine = replace(BASE, transitions=(*BASE.transitions[:3], on("fault", "open", "broken")))
    assert problems(machine) == [
        "state 'closed' does not handle the fault trigger 'fault' "
        "(declare a '*' transition to a failure state)"
    ]


def test_a_terminal_state_cannot_have_a_way_out_or_timers() -> None:
    machine = replace(
        BASE,
        states=(
            *BASE.states[:2],
            State("broken", terminal=True, timers=(state_timer("t", "one", "repair"),)),
        ),
        transitions=with_transitions(on("repair", "broken", "closed")),
    )
    assert problems(machine) == [
        "terminal state 'broken' has an outgoing transition 'repair'",
        "timer 't' of state 'broken': terminal states cannot own timers",
    ]


# -- timers ----------------------------------------------------------------------------------


def test_a_timer_whose_trigger_has_no_transition_from_its_state() -> None:
    machine = replace(
        BASE,
        states=(
            State("closed", timers=(state_timer("auto_open", "ten", "tiemout"),)),
            *BASE.states[1:],
        ),
    )
    assert problems(machine) == [
        "timer 'auto_open' of state 'closed' fires 'tiemout' but state 'closed' has no "
        "transition for it"
    ]


def test_a_span_timer_needs_its_trigger_in_every_state_of_its_span() -> None:
    cap = Timer("cap", "capped", after="cap", kind=TimerKind.SPAN, span=("open",))
    machine = replace(
        BASE,
        states=(State("closed", timers=(cap,)), *BASE.states[1:]),
        transitions=with_transitions(on("capped", "closed", "broken")),
    )
    assert problems(machine) == [
        "timer 'cap' of state 'closed' fires 'capped' but state 'open' has no transition for it"
    ]


def test_a_timer_with_an_unknown_duration_key_names_the_nearest_one() -> None:
    machine = replace(
        BASE,
        states=(
            State("closed", timers=(state_timer("auto_open", "tne", "timeout"),)),
            *BASE.states[1:],
        ),
    )
    (problem,) = problems(machine)
    assert problem.startswith(
        "timer 'auto_open' of state 'closed': unknown toy timer 'tne'; did you mean 'ten'?"
    )


@pytest.mark.parametrize(
    ("timer", "message"),
    [
        (
            Timer("t", "timeout"),
            "timer 't' of state 'closed' needs exactly one of 'after' and 'backoff'",
        ),
        (
            Timer("t", "timeout", after="one", backoff="nope"),
            "timer 't' of state 'closed' needs exactly one of 'after' and 'backoff'",
        ),
        (
            Timer("t", "timeout", backoff="nope"),
            "timer 't' of state 'closed' uses unknown backoff 'nope'",
        ),
        (
            Timer("t", "timeout", after="one", span=("open",)),
            "timer 't' of state 'closed' is a state timer and cannot have a span",
        ),
        (
            Timer("t", "timeout", after="one", kind=TimerKind.SPAN, rearmed_by=("open",)),
            "timer 't' of state 'closed' has rearmed_by but only silence timers are re-armed",
        ),
        (
            Timer("t", "timeout", after="one", kind=TimerKind.SILENCE),
            "timer 't' of state 'closed' is a silence timer with no rearmed_by triggers",
        ),
        (
            Timer("t", "timeout", after="one", kind=TimerKind.SPAN, span=("garage",)),
            "timer 't' of state 'closed' span names unknown state 'garage'",
        ),
    ],
)
def test_malformed_timers(timer: Timer, message: str) -> None:
    machine = replace(BASE, states=(State("closed", timers=(timer,)), *BASE.states[1:]))
    assert message in problems(machine)


# -- budgets and backoffs ----------------------------------------------------------------------


def with_budget(budget: Budget) -> MachineDef:
    return replace(
        BASE,
        budgets=(budget,),
        transitions=(
            *BASE.transitions[:2],
            on("timeout", "closed", "open", consumes=budget.name),
            on("timeout", "closed", "broken"),
            BASE.transitions[3],
        ),
    )


def test_a_backoff_that_can_never_exhaust_its_budget_window() -> None:
    # After 3 uses the engine waits 10, 20 then 30 s: a 4th failure comes 60 s after the first
    # use at the earliest, long after it left the 10 s window, so the budget never blocks one.
    machine = with_budget(
        Budget(
            "retries", 3, "window", backoff_initial="ten", backoff_maximum="cap", backoff_factor=2.0
        )
    )
    assert problems(machine) == [
        "budget 'retries': its backoff spaces 3 uses and the next failure over 60s, not less "
        "than the 10s window, so the budget can never be exhausted"
    ]


def test_a_budget_that_makes_its_backoff_meaningless() -> None:
    machine = with_budget(
        Budget("retries", 1, "window", backoff_initial="one", backoff_maximum="backoff_max")
    )
    assert problems(machine) == [
        "budget 'retries' allows 1 use in its window, so its backoff never grows "
        "(a budget that makes the backoff meaningless)"
    ]


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (
            Budget("retries", 0, "window"),
            "budget 'retries' has limit 0; it must allow at least one use",
        ),
        (
            Budget("retries", 3, "window", backoff_initial="one"),
            "budget 'retries' needs both backoff_initial and backoff_maximum",
        ),
        (
            Budget("retries", 3, "window", backoff_initial="ten", backoff_maximum="one"),
            "budget 'retries' has backoff maximum below its initial delay",
        ),
        (
            Budget("retries", 3, "windw"),
            "budget 'retries': unknown toy timer 'windw'; did you mean 'window'?",
        ),
    ],
)
def test_malformed_budgets(budget: Budget, message: str) -> None:
    assert any(p.startswith(message) for p in problems(with_budget(budget)))


def test_a_transition_consuming_an_unknown_budget() -> None:
    machine = replace(
        BASE, transitions=with_transitions(on("kick", "open", "closed", consumes="kicks"))
    )
    assert problems(machine) == ["transition 'kick' consumes unknown budget 'kicks'"]


@pytest.mark.parametrize(
    ("backoff", "message"),
    [
        (
            Backoff("b", initial="ten", maximum="one"),
            "backoff 'b' has maximum below its initial delay",
        ),
        (
            Backoff("b", initial="one", maximum="ten", factor=0.5),
            "backoff 'b' has factor 0.5 < 1: delays would shrink",
        ),
        (
            Backoff("b", initial="one", maximum="ten", jitter=1.5),
            "backoff 'b' has jitter 1.5; use a fraction in [0, 1]",
        ),
        (
            Backoff("b", initial="one", maximum="ten", resets_in=("opne",)),
            "backoff 'b' resets_in names unknown state 'opne'",
        ),
    ],
)
def test_malformed_backoffs(backoff: Backoff, message: str) -> None:
    assert problems(replace(BASE, backoffs=(backoff,))) == [message]


# -- duplicates --------------------------------------------------------------------------------


def test_duplicate_names() -> None:
    machine = replace(
        BASE,
        states=(
            *BASE.states,
            State("open", timers=(state_timer("auto_open", "one", "shut"),)),
        ),
        transitions=with_transitions(on("open", "closed", "open")),
        budgets=(Budget("b", 2, "window"), Budget("b", 2, "window")),
        backoffs=(Backoff("k", "one", "ten"), Backoff("k", "one", "ten")),
    )
    found = problems(machine)
    for message in (
        "duplicate state 'open'",
        "duplicate budget 'b'",
        "duplicate backoff 'k'",
        "duplicate transition 'open' from state 'closed'",
        "duplicate timer name 'auto_open'",
    ):
        assert message in found


def test_a_duplicate_guarded_transition_names_its_guard() -> None:
    machine = replace(
        BASE,
        transitions=with_transitions(
            on("kick", "open", "closed", guard="hard"), on("kick", "open", "broken", guard="hard")
        ),
    )
    assert "duplicate transition 'kick' from state 'open' with guard 'hard'" in problems(
        machine, guards=["hard"]
    )


# -- bindings and reporting ------------------------------------------------------------------


def test_guard_and_effect_names_must_match_their_implementations() -> None:
    machine = replace(
        BASE,
        transitions=with_transitions(on("kick", "open", "closed", guard="hard", effects="bang")),
    )
    assert problems(machine, guards=["soft"], effects=["bang", "boom"]) == [
        "guard 'hard' is declared but has no implementation",
        "guard 'soft' is implemented but no transition uses it",
        "effect 'boom' is implemented but no transition uses it",
    ]


def test_every_problem_is_reported_at_once() -> None:
    machine = replace(
        BASE, initial="ajar", transitions=with_transitions(on("x", "nowhere", "open"))
    )
    found = problems(machine)
    assert "initial state 'ajar' is not a declared state" in found
    assert "transition 'x' source names unknown state 'nowhere'" in found


def test_a_spec_validates_its_declaration_when_built() -> None:
    with pytest.raises(DeclarationError, match="state 'attic' is unreachable from 'closed'"):
        MachineSpec(
            replace(
                BASE,
                states=with_states(State("attic")),
                transitions=with_transitions(on("x", "attic", "open")),
            ),
            TOY_TIMERS,
            ToyContext,
        )


def test_configured_durations_are_checked_against_budgets_at_start_up() -> None:
    """A config that shrinks a restart window below the backoff's pacing is refused by name."""
    values = CONTROL_TIMERS.resolve({"wrapper_restart_window": "10s"})
    with pytest.raises(DeclarationError) as info:
        session.SPEC.check(values)
    assert info.value.problems == [
        "budget 'wrapper_restarts': its backoff spaces 5 uses and the next failure over 31s, "
        "not less than the 10s window, so the budget can never be exhausted"
    ]
    session.SPEC.check(CONTROL_TIMERS.defaults())


def fastest_failures(window: str) -> str:
    """A wrapper that dies the instant it is started: does the budget ever stop the restarts?"""
    d = Driver(session.SPEC, CONTROL_TIMERS.resolve({"wrapper_restart_window": window}))
    d.start()
    for _ in range(50):
        d.send("wrapper_exited")
        if d.state == "failed":
            break
        d.advance(d.machine.deadlines()["restart_delay"])
    return d.state


@pytest.mark.parametrize(
    ("window", "exhaustible"), [("30.5s", False), ("31s", False), ("31.5s", True)]
)
def test_the_budget_check_agrees_with_the_engine(window: str, exhaustible: bool) -> None:
    """Regression: the check left out the first backoff delay (1 s), so a 30.5 s window passed
    although the engine's 1+2+4+8+16 s pacing means five restarts never fill it."""
    values = CONTROL_TIMERS.resolve({"wrapper_restart_window": window})
    if exhaustible:
        session.SPEC.check(values)
    else:
        with pytest.raises(DeclarationError, match="can never be exhausted"):
            session.SPEC.check(values)
    assert (fastest_failures(window) == "failed") is exhaustible
