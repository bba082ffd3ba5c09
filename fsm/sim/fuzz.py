"""Fuzzing: random fault schedules against the invariants, with shrinking.

Theory of operation
-------------------
A schedule is a list of scenario steps — prompts with random plans, answers, stops, aborts, and
every fault the fakes know (Kilo crashes, hangs, silences, stream drops, refused ports, wrapper
crashes and hangs, ingest drops and partitions) — at random times within a horizon, on a world
whose channel also has jitter, rare frame loss and late frames from broken connections. The world
runs it with the invariants checked after every instant, then *settles* (every fault lifted, the
timers left to finish their work) and checks what must hold at rest: every accepted message ended
exactly once and both sides agree.

Schedule ``i`` of a run with seed ``S`` uses seed ``S + i`` for everything, so any failure is
re-run by ``fsm-agent simulate --fuzz 1 --seed S+i``. A failing schedule is shrunk — steps are
removed one at a time while the *same* invariant still fails — and printed as a scenario file
(``settle = true``) that ``fsm-agent simulate`` replays exactly.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence

import msgspec

from fsm.engine.durations import format_duration
from fsm.sim.invariants import Invariants, Violation
from fsm.sim.scenario import Action, Segment, WorldConfig
from fsm.sim.timeline import render_text
from fsm.sim.world import World

FUZZ_WORLD = WorldConfig(jitter=0.02, loss=0.0002, reorder=0.3, abort_drain=0.3)
"""Defaults plus channel noise: 0-20 ms jitter, one frame in 5,000 lost (a broken connection),
and three broken connections in ten still delivering their late frames to the control plane;
Kilo takes 300 ms to close an aborted turn (prompts sent meanwhile are dropped, as measured)."""


def _plan(rng: random.Random) -> tuple[Segment, ...]:
    def d(low: float, high: float) -> float:
        return round(rng.uniform(low, high), 1)

    choices: list[Callable[[], tuple[Segment, ...]]] = [
        lambda: (Segment("text", d(2, 60)),),
        lambda: (Segment("stall", d(1, 20)), Segment("text", d(2, 20))),
        lambda: (Segment("reasoning", d(2, 20)), Segment("text", d(2, 10))),
        lambda: (Segment("text", d(1, 5)), Segment("tool", d(10, 600)), Segment("text", d(1, 5))),
        lambda: (Segment("text", d(1, 5)), Segment("question"), Segment("text", d(1, 5))),
        lambda: (Segment("permission"), Segment("text", d(1, 5))),
        lambda: (Segment("text", d(1, 10)), Segment("error", text="APIError: fuzz")),
        lambda: (Segment("text", d(1, 10)), Segment("late_error", text="APIError: late")),
        lambda: (Segment("text", d(1, 5)), Segment("stall")),
    ]
    return rng.choice(choices)()


def generate(rng: random.Random, horizon: float, max_steps: int) -> list[Action]:
    """A random schedule: at least one prompt, then a mix of client actions and faults."""
    steps: list[Action] = []
    prompts = 0

    def at() -> float:
        return round(rng.uniform(0.0, horizon), 3)

    def span(low: float, high: float) -> float:
        return round(rng.uniform(low, high), 1)

    def prompt(when: float) -> Action:
        nonlocal prompts
        prompts += 1
        return Action(at=when, do="prompt", message=f"m{prompts}", plan=_plan(rng))

    steps.append(prompt(round(rng.uniform(0.0, horizon / 4), 3)))
    makers: list[tuple[int, Callable[[], Action]]] = [
        (5, lambda: prompt(at())),
        (3, lambda: Action(at=at(), do="answer", reply=rng.choice(["once", "reject", ""]))),
        (1, lambda: Action(at=at(), do="stop")),
        (1, lambda: Action(at=at(), do="abort")),
        (2, lambda: Action(at=at(), do="agent.crash")),
        (2, lambda: Action(at=at(), do="agent.hang", duration=span(5, 180))),
        (2, lambda: Action(at=at(), do="agent.silence")),
        (2, lambda: Action(at=at(), do="agent.drop_stream")),
        (1, lambda: Action(at=at(), do="agent.fail_turn", error="APIError: injected")),
        (1, lambda: Action(at=at(), do="agent.refuse_port", count=rng.randint(1, 2))),
        (1, lambda: Action(at=at(), do="wrapper.crash")),
        (1, lambda: Action(at=at(), do="wrapper.hang", duration=span(5, 240))),
        (2, lambda: Action(at=at(), do="ingest.drop", duration=span(1, 240))),
        (2, lambda: Action(at=at(), do="ingest.partition", duration=span(1, 180))),
    ]
    weights = [w for w, _ in makers]
    for _ in range(rng.randint(1, max(1, max_steps - 1))):
        steps.append(rng.choices(makers, weights)[0][1]())
    for abort in [a for a in steps if a.do == "abort"]:
        if rng.random() < 0.5:
            # The race random times rarely hit: a new prompt while Kilo drains the abort.
            steps.append(prompt(round(abort.at + rng.uniform(0.0, 0.3), 3)))
    steps.sort(key=lambda a: a.at)
    return steps


class ScheduleRun(msgspec.Struct):
    seed: int
    steps: list[Action]
    violations: list[Violation]
    simulated: float
    lines: int


def run_schedule(
    steps: Sequence[Action],
    seed: int,
    *,
    config: WorldConfig = FUZZ_WORLD,
    timers: dict[str, str] | None = None,
    keep_timeline: bool = False,
    fast_forward: bool = False,
) -> tuple[ScheduleRun, World]:
    """Play ``steps``, settle, and return the violations (the first one stops nothing: all are
    collected, the first is the one that matters)."""
    invariants = Invariants()
    world = World(
        config,
        timers,
        seed=seed,
        keep_timeline=keep_timeline,
        invariants=invariants,
        fast_forward=fast_forward,
    )
    world.plan(steps, max((a.at for a in steps), default=0.0))
    world.start()
    for action in sorted(steps, key=lambda a: a.at):
        world.run_until(action.at)
        world.do(action)
    world.settle()
    run = ScheduleRun(seed, list(steps), invariants.violations, world.now, len(world.lines))
    return run, world


def shrink(
    steps: Sequence[Action],
    seed: int,
    invariant: str,
    *,
    config: WorldConfig = FUZZ_WORLD,
    budget: int = 200,
) -> list[Action]:
    """Remove steps one at a time while ``invariant`` still fails (greedy, to a fixed point)."""
    current = list(steps)
    tries = 0
    changed = True
    while changed and tries < budget:
        changed = False
        for i in range(len(current) - 1, -1, -1):
            candidate = current[:i] + current[i + 1 :]
            if not candidate:
                continue
            tries += 1
            run, _ = run_schedule(candidate, seed, config=config)
            if any(v.invariant == invariant for v in run.violations):
                current = candidate
                changed = True
            if tries >= budget:
                break
    return current


def schedule_toml(steps: Sequence[Action], seed: int, config: WorldConfig = FUZZ_WORLD) -> str:
    """A scenario file that replays ``steps`` exactly (same seed, same world, settle)."""
    q = json.dumps
    out = [
        f"name = {q(f'fuzz schedule, seed {seed}')}",
        f"seed = {seed}",
        f'until = "{format_duration(max((a.at for a in steps), default=0.0) + 1)}"',
        "settle = true",
        "",
        "[world]",
        f'jitter = "{format_duration(config.jitter)}"',
        f"loss = {config.loss}",
        f"reorder = {config.reorder}",
        f'abort_drain = "{format_duration(config.abort_drain)}"',
    ]
    for a in steps:
        out += ["", "[[step]]", f'at = "{format_duration(a.at)}"', f"do = {q(a.do)}"]
        if a.message:
            out.append(f"message = {q(a.message)}")
        if a.plan is not None:
            out.append("plan = [" + ", ".join(q(s.label()) for s in a.plan) + "]")
        if a.duration is not None:
            out.append(f'for = "{format_duration(a.duration)}"')
        if a.do == "agent.fail_turn" and a.error:
            out.append(f"error = {q(a.error)}")
        if a.do == "answer" and a.reply:
            out.append(f"reply = {q(a.reply)}")
        if a.do == "agent.refuse_port":
            out.append(f"count = {a.count}")
    return "\n".join(out) + "\n"


class Failure(msgspec.Struct):
    seed: int
    violation: Violation
    steps: list[Action]
    shrunk: list[Action]
    timeline: str


class FuzzReport(msgspec.Struct):
    count: int
    seed: int
    wall: float
    simulated: float
    failure: Failure | None = None
    violations_seen: int = 0

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "schedules": self.count,
            "seed": self.seed,
            "wall_seconds": round(self.wall, 3),
            "simulated_seconds": round(self.simulated, 1),
            "passed": self.failure is None,
        }
        if self.failure is not None:
            f = self.failure
            out["failure"] = {
                "seed": f.seed,
                "violation": str(f.violation),
                "schedule": schedule_toml(f.shrunk, f.seed),
            }
        return out

    def render(self) -> str:
        head = (
            f"fuzz: {self.count} schedules from seed {self.seed}: "
            f"{format_duration(round(self.simulated))} simulated in {self.wall:.1f} s"
        )
        if self.failure is None:
            return head + " - no invariant violated"
        f = self.failure
        return "\n".join(
            [
                head,
                f"FAIL seed {f.seed}: {f.violation}",
                f"  {len(f.steps)} steps, shrunk to {len(f.shrunk)}; re-run the schedule with "
                f"`fsm-agent simulate --fuzz 1 --seed {f.seed}` or save this as a .toml file:",
                "",
                schedule_toml(f.shrunk, f.seed),
                f"timeline of the shrunk schedule (the violation is at {f.violation.at:.3f} s):",
                f.timeline,
            ]
        )


def fuzz_many(
    count: int,
    *,
    seed: int = 0,
    horizon: float = 1200.0,
    max_steps: int = 12,
    config: WorldConfig = FUZZ_WORLD,
    progress: Callable[[int], None] | None = None,
) -> FuzzReport:
    """``progress`` is told how many schedules have run, before each one."""
    started = time.perf_counter()
    simulated = 0.0
    for i in range(count):
        if progress is not None:
            progress(i)
        run_seed = seed + i
        steps = generate(random.Random(run_seed), horizon, max_steps)
        run, _world = run_schedule(steps, run_seed, config=config)
        simulated += run.simulated
        if run.violations:
            first = run.violations[0]
            shrunk = shrink(steps, run_seed, first.invariant, config=config)
            replay, world = run_schedule(shrunk, run_seed, config=config, keep_timeline=True)
            shown = next((v for v in replay.violations if v.invariant == first.invariant), first)
            # Ignored events explain most violations ("turn_ended ignored in running"); the
            # internal re-arms (heartbeats, progress) would only bury them.
            lines = [
                line
                for line in world.lines
                if line.at <= shown.at + 1.0 and line.kind != "internal"
            ]
            return FuzzReport(
                count=i + 1,
                seed=seed,
                wall=time.perf_counter() - started,
                simulated=simulated,
                failure=Failure(run_seed, shown, steps, shrunk, render_text(lines, verbose=True)),
                violations_seen=len(run.violations),
            )
    return FuzzReport(count, seed, time.perf_counter() - started, simulated)
