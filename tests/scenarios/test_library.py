"""Every scenario file of the library is a test, and so is every mutant it declares.

A scenario passes when all its expectations and every invariant hold; each of its mutants (a timer
changed, a transition removed) must make at least one expectation fail — a scenario that cannot
fail proves nothing.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import msgspec.structs
import pytest

from fsm.sim.run import run_scenario
from fsm.sim.scenario import SIMULATED_AGENTS, Scenario, load_scenario

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.toml"))


def _report(result: object) -> str:
    from fsm.sim.run import RunResult

    assert isinstance(result, RunResult)
    lines = [r.render(result.scenario.path) for r in result.results if not r.passed]
    lines += [f"invariant {v}" for v in result.violations]
    return "\n".join(lines)


def test_the_library_covers_the_issue() -> None:
    assert len(FILES) >= 20


def _as(scenario: Scenario, agent: str) -> Scenario:
    return msgspec.structs.replace(
        scenario, world=msgspec.structs.replace(scenario.world, agent=agent)
    )


@pytest.mark.parametrize("agent", SIMULATED_AGENTS)
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path, agent: str) -> None:
    """Every scenario holds for both agents' dialects: what the library asserts (outcomes,
    states, restarts, timers) is behaviour the two share; the fake speaks each dialect
    (``fsm.sim.agent``) and the wrapper reads it with that agent's ``Dialect``."""
    result = run_scenario(_as(load_scenario(path), agent))
    assert result.passed, _report(result)


def test_the_opencode_world_speaks_opencode() -> None:
    """Without brackets from the fake, every turn bracket the control plane stores was
    synthesised by the wrapper's dialect; with Kilo's, none was."""
    scenario = load_scenario(HERE / "follow_up_during_turn.toml")
    for agent, synthetic in (("kilo", False), ("opencode", True)):
        result = run_scenario(_as(scenario, agent))
        assert result.passed and result.world is not None
        events = [
            msgspec.json.decode(row.data)["event"]
            for row in result.world.store.events("s1", limit=10**6)
            if b'"event"' in row.data
        ]
        brackets = [e for e in events if e["type"].startswith("session.turn.")]
        reasons = [e["properties"].get("reason") for e in brackets]
        assert reasons == [None, "superseded", None, "completed"], (agent, reasons)
        assert {bool(e["properties"].get("synthetic")) for e in brackets} == {synthetic}


MUTANTS = [(path, index) for path in FILES for index in range(len(load_scenario(path).mutants))]


@pytest.mark.parametrize(
    ("path", "index"), MUTANTS, ids=[f"{p.stem}-mutant{i}" for p, i in MUTANTS]
)
def test_mutant_is_noticed(path: Path, index: int) -> None:
    scenario = load_scenario(path)
    mutant = scenario.mutants[index]
    result = run_scenario(scenario, mutant=mutant)
    assert not result.passed, f"no expectation noticed: {mutant.why}"


def test_every_scenario_has_a_mutant() -> None:
    missing = [p.name for p in FILES if not load_scenario(p).mutants]
    assert not missing
