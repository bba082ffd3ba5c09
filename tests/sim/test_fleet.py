"""Fleet runs: sharded over processes they are the one-process run, byte for byte."""

from __future__ import annotations

import msgspec
import pytest

from fsm.sim.fleet import FleetResult, canonical, run_fleet
from fsm.sim.scenario import WorldConfig
from fsm.sim.world import World

SPAN = 1800.0  # half an hour: every session starts, prompts several times, some get faults


def _bytes(result: FleetResult) -> bytes:
    return msgspec.json.encode([result.lines, result.ends, result.violations, result.callbacks])


@pytest.fixture(scope="module")
def one_process() -> dict[int, FleetResult]:
    return {seed: run_fleet(6, SPAN, seed=seed, records="all") for seed in (1, 7)}


@pytest.mark.parametrize("seed", [1, 7])
def test_shards_merge_to_the_one_process_run(
    one_process: dict[int, FleetResult], seed: int
) -> None:
    whole = one_process[seed]
    sharded = run_fleet(6, SPAN, seed=seed, shards=3, records="all")
    assert sharded.shards == 3
    # Faults were injected and sessions did work, so the comparison is not of empty runs.
    assert any(line.kind == "do" and line.trigger != "prompt" for line in whole.lines)
    assert {line.session for line in whole.lines} == {f"s{i}" for i in range(1, 7)}
    assert _bytes(sharded) == _bytes(whole)


def test_the_same_seed_merges_to_the_same_bytes(one_process: dict[int, FleetResult]) -> None:
    first = run_fleet(6, SPAN, seed=1, shards=2, records="all")
    again = run_fleet(6, SPAN, seed=1, shards=2, records="all")
    assert _bytes(first) == _bytes(again)
    assert _bytes(first) != _bytes(one_process[7])  # another seed: another run


def test_canonical_order_is_time_then_session_number_keeping_each_sessions_order(
    one_process: dict[int, FleetResult],
) -> None:
    lines = one_process[1].lines
    keys = [(line.at, int(line.session[1:])) for line in lines]
    assert keys == sorted(keys)
    assert len(set(keys)) < len(keys)  # ties within a session exist, and keep their order:
    assert canonical(lines[::-1])[::-1] != lines
    assert canonical(lines) == lines


def test_transitions_records_keep_only_what_the_text_timeline_shows(
    one_process: dict[int, FleetResult],
) -> None:
    lean = run_fleet(6, SPAN, seed=1, records="transitions")
    full = one_process[1]
    assert lean.ends == full.ends
    assert [x for x in full.lines if x.kind not in ("internal", "ignored", "timer_dropped")] == (
        lean.lines
    )
    assert len(lean.lines) < len(full.lines) / 2
    assert run_fleet(6, 600.0, seed=1, records="none").lines == []


def test_a_shard_names_only_sessions_of_its_world() -> None:
    with pytest.raises(ValueError, match="s9"):
        World(WorldConfig(sessions=2), only=["s1", "s9"])


def test_without_internal_records_the_run_is_the_same(one_process: dict[int, FleetResult]) -> None:
    lean = run_fleet(6, SPAN, seed=1, records="transitions", internal=False, shards=2)
    kept = run_fleet(6, SPAN, seed=1, records="transitions")
    assert _bytes(lean) == _bytes(kept)
    assert lean.ends == one_process[1].ends
    with pytest.raises(ValueError, match="internal"):
        run_fleet(2, 60.0, records="all", internal=False)


def test_small_worlds_run_a_few_at_a_time_merge_to_the_same_run(
    one_process: dict[int, FleetResult],
) -> None:
    small = run_fleet(6, SPAN, seed=7, shards=2, batch=2, records="all")
    assert (small.shards, small.processes) == (3, 2)
    assert _bytes(small) == _bytes(one_process[7])
