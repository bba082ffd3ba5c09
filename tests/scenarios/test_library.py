"""Every scenario file of the library is a test, and so is every mutant it declares.

A scenario passes when all its expectations and every invariant hold; each of its mutants (a timer
changed, a transition removed) must make at least one expectation fail — a scenario that cannot
fail proves nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fsm.sim.run import run_scenario
from fsm.sim.scenario import load_scenario

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


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_scenario(path: Path) -> None:
    result = run_scenario(load_scenario(path))
    assert result.passed, _report(result)


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
