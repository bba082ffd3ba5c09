"""Playing a scenario: the world, its script, its expectations, and deliberate mutants.

The runner stops at every instant a step or a ``state`` expectation names: it runs the world up
to that instant, performs the steps, lets whatever they triggered *at that same instant* happen,
and only then samples the states — so ``state of wrapper at 40s`` sees the effect of a fault
injected at 40 s that acts at once, and nothing later. Invariants are checked after every instant
in between (see ``fsm.sim.invariants``); a violation fails the run like an expectation.

A *mutant* re-runs the scenario with a timer changed or a transition removed from a machine; the
scenario earns its place only if some expectation then fails (``mutant_survivors``). Removing a
transition swaps the machine module's ``SPEC`` for the duration of the run: the cores look their
specs up when they build machines, exactly as they do in production.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from fsm.engine.model import Transition
from fsm.engine.spec import MachineSpec
from fsm.sim.expect import ExpectResult, judge
from fsm.sim.invariants import Invariants, Violation
from fsm.sim.scenario import Mutant, Removal, Scenario
from fsm.sim.timeline import Line
from fsm.sim.world import World


class RunResult(msgspec.Struct):
    scenario: Scenario
    seed: int
    lines: list[Line]
    results: list[ExpectResult]
    violations: list[Violation]
    wall: float
    mutant: Mutant | None = None
    world: World | None = None
    """The world as the run left it (never encoded: for tests that compare final states)."""

    @property
    def passed(self) -> bool:
        return not self.violations and all(r.passed for r in self.results)


def run_scenario(
    scenario: Scenario,
    *,
    seed: int | None = None,
    mutant: Mutant | None = None,
    keep_timeline: bool = True,
    fast_forward: bool = False,
) -> RunResult:
    started = time.perf_counter()
    chosen = scenario.seed if seed is None else seed
    timers = {**scenario.timers, **(mutant.timers if mutant else {})}
    with mutated(mutant.remove if mutant else ()):
        invariants = Invariants()
        world = World(
            scenario.world,
            timers,
            seed=chosen,
            keep_timeline=keep_timeline,
            invariants=invariants,
            fast_forward=fast_forward,
        )
        world.plan([a for a in scenario.actions if a.at <= scenario.until], scenario.until)
        world.start()
        states: dict[int, str] = {}
        stops = sorted(
            {a.at for a in scenario.actions}
            | {e.at for e in scenario.expectations if e.kind == "state" and e.at is not None}
        )
        for at in stops:
            if at > scenario.until:
                break
            world.run_until(at)
            for action in scenario.actions:
                if action.at == at:
                    world.do(action)
            world.run_until(at)
            for e in scenario.expectations:
                if e.kind == "state" and e.at == at and e.machine is not None:
                    states[e.index] = world.state_of(e.session, e.machine)
        world.run_until(scenario.until)
        if scenario.settle:
            world.settle()
        results = [judge(e, world, states) for e in scenario.expectations]
    return RunResult(
        scenario=scenario,
        seed=chosen,
        lines=world.lines,
        results=results,
        violations=invariants.violations,
        wall=time.perf_counter() - started,
        mutant=mutant,
        world=world,
    )


def mutant_survivors(scenario: Scenario, seed: int | None = None) -> list[Mutant]:
    """The scenario's mutants that no expectation noticed (should be none)."""
    return [m for m in scenario.mutants if run_scenario(scenario, seed=seed, mutant=m).passed]


# -- removing transitions ----------------------------------------------------------------------


def _without(spec: MachineSpec[Any], removals: list[Removal]) -> MachineSpec[Any]:
    d = spec.definition
    kept: list[Transition] = []
    for t in d.transitions:
        sources = d.sources(t)
        for r in removals:
            if r.trigger == t.trigger and r.dest == t.dest:
                sources = () if r.source == "*" else tuple(s for s in sources if s != r.source)
        if sources:
            kept.append(
                t if sources == d.sources(t) else msgspec.structs.replace(t, source=sources)
            )
    definition = msgspec.structs.replace(d, transitions=tuple(kept))
    used_guards = {t.guard for t in kept if t.guard}
    used_effects = {e for t in kept for e in t.effects} | {
        e for s in definition.states for e in s.on_enter
    }
    # Built without ``MachineSpec``'s validation: a mutant may well leave a state unreachable,
    # which the validator rightly refuses in production; here the question is only whether the
    # scenario notices the change.
    mutant: MachineSpec[Any] = object.__new__(MachineSpec)
    for name, value in (
        ("definition", definition),
        ("table", spec.table),
        ("context", spec.context),
        ("guards", {k: v for k, v in spec.guards.items() if k in used_guards}),
        ("effects", {k: v for k, v in spec.effects.items() if k in used_effects}),
    ):
        object.__setattr__(mutant, name, value)
    return mutant


@contextmanager
def mutated(removals: tuple[Removal, ...] | list[Removal]) -> Iterator[None]:
    """Swap the named machines' ``SPEC`` for ones without the removed transitions."""
    by_machine: dict[str, list[Removal]] = {}
    for r in removals:
        by_machine.setdefault(r.machine, []).append(r)
    saved: dict[str, Any] = {}
    try:
        for machine, items in by_machine.items():
            module = importlib.import_module(f"fsm.machines.{machine}")
            saved[machine] = module.SPEC
            module.SPEC = _without(module.SPEC, items)  # type: ignore[attr-defined]
        yield
    finally:
        for machine, spec in saved.items():
            importlib.import_module(f"fsm.machines.{machine}").SPEC = spec  # type: ignore[attr-defined]
