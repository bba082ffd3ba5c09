"""The fast-forward of quiet stretches is exact (issue 19): the same seed run step by step and
fast-forwarded gives the same bytes — every timeline line (heartbeat re-arms included:
``records="all"``), every machine's snapshot and history, every armed timer's clock entry, the
channel's random stream, Kilo's event ids, the store, the invariants' findings — for the whole
scenario library, fuzzed worlds (with frame loss and reordering) and fleets.

Lines are compared in the canonical order (by time, then session, each session's own order
kept: ``fsm.sim.fleet.canonical``): a jump makes a session's lines ahead of the other sessions'
in the list, never out of its own order.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import msgspec.structs
import pytest

from fsm.sim.fleet import canonical, run_fleet
from fsm.sim.fuzz import FUZZ_WORLD, generate, run_schedule
from fsm.sim.run import run_scenario
from fsm.sim.scenario import load_scenario
from fsm.sim.world import World
from tests.paths import ROOT

SCENARIOS = sorted((ROOT / "tests" / "scenarios").glob("*.toml"))


def _entry(armed: Any) -> list[Any]:
    return [armed.key, armed.deadline, armed.token, armed.scheduled_for]


def state_of(world: World) -> bytes:
    """Everything a session's run leaves behind, as bytes."""
    out: dict[str, Any] = {
        "now": world.now,
        "violations": [str(v) for v in world.invariants.violations],
    }
    for sid in world.sessions:
        control = world.controls[sid]
        session: dict[str, Any] = {
            "machines": {
                label: [machine.snapshot(world.now), machine.history]
                for label, machine in world.all_machines(sid)
            },
            "control_timers": sorted(_entry(a) for a in control.core.group._armed.values()),
            "messages": control.core.messages,
            "last_seq": control.core.last_seq,
            "rows": [world.store.messages(sid), world.store.events(sid, limit=10**9)],
            "channel": repr(world.channels[sid].rng.getstate()),
            "actions": [(a.at, a.name, a.detail) for a in world.actions if a.session == sid],
        }
        wrapper = world.wrapper(sid)
        if wrapper is not None:
            session["wrapper_timers"] = sorted(
                _entry(a) for a in wrapper.core.group._armed.values()
            )
            session["outbox"] = len(wrapper.core.outbox)
        process = world.agents[sid].process
        if process is not None:
            session["kilo_ids"] = repr(process._event_ids)
        out[sid] = session
    return msgspec.json.encode(out)


def _lines(world: World) -> bytes:
    return msgspec.json.encode(canonical(world.lines))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_scenario_is_the_same_fast_forwarded(path: Path) -> None:
    scenario = load_scenario(path)
    worlds: list[World] = []
    results = []
    for fast in (False, True):
        run = run_scenario(scenario, fast_forward=fast)
        results.append(
            (
                msgspec.json.encode(canonical(run.lines)),
                [(r.index, r.passed) for r in run.results],
                [str(v) for v in run.violations],
            )
        )
        assert run.world is not None
        worlds.append(run.world)
    assert results[1] == results[0]
    assert state_of(worlds[1]) == state_of(worlds[0])


def test_the_library_is_fast_forwarded_somewhere() -> None:
    """The comparison above is of jumps actually made, not of two step-by-step runs."""
    jumps = 0
    for path in SCENARIOS:
        run = run_scenario(load_scenario(path), fast_forward=True)
        assert run.world is not None and run.world.fast_forward is not None
        jumps += run.world.fast_forward.jumps
    assert jumps >= len(SCENARIOS)


@pytest.mark.parametrize(
    ("seed", "jitter"), [(seed, None) for seed in range(12)] + [(seed, 0.0) for seed in range(4)]
)
def test_fuzzed_worlds_are_the_same_fast_forwarded(seed: int, jitter: float | None) -> None:
    """Fuzzed schedules on the fuzzer's noisy channel (jitter, frame loss, late frames on
    broken connections), with long quiet stretches between steps; and without jitter, where
    beats, arrivals and windows fall on round sums and ties are likeliest."""
    steps = generate(random.Random(seed), 3600.0, 10)
    config = FUZZ_WORLD if jitter is None else msgspec.structs.replace(FUZZ_WORLD, jitter=jitter)
    runs = [
        run_schedule(steps, seed, config=config, keep_timeline=True, fast_forward=fast)
        for fast in (False, True)
    ]
    (step, step_world), (fast, fast_world) = runs
    assert fast_world.fast_forward is not None and fast_world.fast_forward.jumps > 0
    assert [str(v) for v in fast.violations] == [str(v) for v in step.violations]
    assert _lines(fast_world) == _lines(step_world)
    assert state_of(fast_world) == state_of(step_world)


def test_a_fleet_is_the_same_fast_forwarded_and_runs_fewer_callbacks() -> None:
    step = run_fleet(12, 7200.0, seed=3, records="all")
    fast = run_fleet(12, 7200.0, seed=3, records="all", fast_forward=True)
    assert any(line.kind == "do" and line.trigger != "prompt" for line in step.lines)
    assert msgspec.json.encode([fast.lines, fast.ends, fast.violations]) == msgspec.json.encode(
        [step.lines, step.ends, step.violations]
    )
    assert fast.callbacks < step.callbacks * 0.6, (fast.callbacks, step.callbacks)
