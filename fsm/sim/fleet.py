"""A fleet run: many sessions with prompts and faults for hours, in one process or in shards.

Theory of operation
-------------------
``fleet_actions`` writes the script (per session: a prompt every 2 to 15 minutes with one of three
plans, and after one prompt in ten a fault: Kilo crashed or hung, ingest dropped), from one seed.

Sessions of a world share nothing but the clock: every component's random stream is named after
its session, the store keeps each session's rows apart, and a session's timers only ever reach
its own machines. So a world can be cut into **shards** (``World(only=...)``), each run in a
process of its own, and each session's part of the run is the same as in the whole world: the
same lines with the same times, in the same order. What differs is only how sessions
*interleave* at one instant, which in one process follows the order callbacks were scheduled
in. The merge therefore puts lines in a canonical order, by time and then by session number,
each session's own order kept (a stable sort); ``canonical`` applies the same order to a
one-process run, so the two can be compared byte for byte (``tests/sim/test_fleet.py``) and the
same seed always merges to the same bytes, whatever the number of shards.

Shards are both the way to use every core (``shards``: processes at a time) and the way to keep
a world small enough to be fast (``batch``: most sessions per world; see ``BATCH``).
"""

from __future__ import annotations

import gc
import multiprocessing
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import msgspec

from fsm.engine.clock import VirtualClock
from fsm.engine.machine import without_internal_records
from fsm.sim.scenario import Action, Segment, WorldConfig
from fsm.sim.timeline import Line
from fsm.sim.world import Records, World

PLANS = (
    (Segment("text", 30.0),),
    (Segment("text", 5.0), Segment("tool", 120.0), Segment("text", 5.0)),
    (Segment("reasoning", 10.0), Segment("text", 20.0)),
)
FAULTS = ("agent.crash", "agent.hang", "ingest.drop")

Progress = Callable[[float], None]
"""Called with the virtual time reached, now and then (one-process runs only)."""


@contextmanager
def batch_gc() -> Iterator[None]:
    """The cyclic collector tuned for one long batch run, as the simulator is.

    A world of 1,000 sessions holds a few hundred thousand long-lived objects and makes little
    cyclic garbage; with the default thresholds the collector still walked them dozens of times
    (a quarter of the wall time). Objects alive at the start are frozen (never walked again) and
    young collections run every 20,000 allocations instead of 700.
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def fleet_actions(rng: random.Random, sessions: int, duration: float) -> list[Action]:
    """The script of a fleet run; every random choice comes from ``rng``, in session order."""
    actions: list[Action] = []
    for i in range(sessions):
        sid = f"s{i + 1}"
        at = rng.uniform(0, 300)
        n = 0
        while at < duration:
            n += 1
            plan = rng.choice(PLANS)
            actions.append(Action(at=at, do="prompt", session=sid, message=f"m{n}", plan=plan))
            if rng.random() < 0.1:
                fault = rng.choice(FAULTS)
                when = at + rng.uniform(1, 60)
                if when < duration:  # past the end it would never happen (and time can't go back)
                    actions.append(Action(at=when, do=fault, session=sid, duration=30.0))
            at += rng.uniform(120, 900)
    return sorted(actions, key=lambda a: a.at)


class SessionEnd(msgspec.Struct, frozen=True):
    """Where one session stood at the end: every machine's state, every message's state."""

    session: str
    machines: dict[str, str]
    messages: dict[str, str]


class FleetResult(msgspec.Struct):
    sessions: int
    duration: float
    seed: int
    shards: int
    """Worlds the sessions were dealt to."""
    processes: int
    """Worlds run at a time."""
    wall: float
    callbacks: int
    lines: list[Line]
    """Canonical order (see the module's docstring); empty for ``records="none"``."""
    ends: list[SessionEnd]
    violations: list[str]

    @property
    def session_speed(self) -> float:
        """Session-seconds simulated per wall second."""
        return self.sessions * self.duration / self.wall if self.wall > 0 else 0.0


class _Shard(msgspec.Struct):
    callbacks: int
    lines: list[Line]
    ends: list[SessionEnd]
    violations: list[tuple[float, str, str]]


def _number(session: str) -> int:
    return int(session[1:])


def canonical(lines: Iterable[Line]) -> list[Line]:
    """Lines by time, then session number; each session's own order kept."""
    return sorted(lines, key=lambda line: (line.at, _number(line.session)))


def _ends(world: World) -> list[SessionEnd]:
    out = []
    for sid in world.sessions:
        machines = {label: m.state for label, m in world.all_machines(sid)}
        messages = {m.id: m.state for m in world.controls[sid].core.messages.values()}
        out.append(SessionEnd(sid, machines, messages))
    return out


def run_world(
    config: WorldConfig,
    actions: Sequence[Action],
    duration: float,
    *,
    seed: int,
    only: Sequence[str] | None = None,
    records: Records = "transitions",
    progress: Progress | None = None,
    internal: bool = True,
    fast_forward: bool = False,
    scheduler: VirtualClock | None = None,
) -> tuple[World, int]:
    """Play ``actions`` on a world (or the ``only`` part of it) up to ``duration``.

    ``internal=False`` (benchmarks): machines make no records of internal transitions, which
    no timeline below ``records="all"`` keeps; the invariants then do not see them either (the
    one check they feed: a periodic timer fired in its own span)."""
    if internal is False and records == "all":
        raise ValueError('records="all" needs the internal transitions\' records')
    world = World(
        config,
        seed=seed,
        check_states=False,
        only=only,
        records=records,
        fast_forward=fast_forward,
        scheduler=scheduler,
    )
    wanted = set(world.sessions)
    world.plan(actions, duration)
    lean = nullcontext() if internal else without_internal_records()
    with batch_gc(), lean:
        world.start()
        step = max(duration / 100, 1.0)
        mark = step
        for action in actions:
            if action.session not in wanted:
                continue
            if progress is not None:
                while mark < action.at:
                    world.run_until(mark)
                    progress(mark)
                    mark += step
            world.run_until(action.at)
            world.do(action)
        if progress is not None:
            while mark < duration:
                world.run_until(mark)
                progress(mark)
                mark += step
        world.run_until(duration)
    fired = int(getattr(world.scheduler, "fired", 0))
    return world, fired


def _shard(
    config: WorldConfig,
    actions: list[Action],
    duration: float,
    seed: int,
    only: list[str],
    records: Records,
    internal: bool,
    fast_forward: bool,
) -> bytes:
    world, fired = run_world(
        config,
        actions,
        duration,
        seed=seed,
        only=only,
        records=records,
        internal=internal,
        fast_forward=fast_forward,
    )
    violations = [(v.at, v.session, str(v)) for v in world.invariants.violations]
    return msgspec.msgpack.encode(_Shard(fired, world.lines, _ends(world), violations))


BATCH = 200
"""Sessions per world when a fleet is cut into worlds (``run_fleet(batch=...)``). A callback
costs about twice as much in a world of 1,000 sessions as in one of 100 (measured: 22.9 against
10.7 us per callback, 1,000 and 100 sessions x 10 min, the same in a profile, so it is not any
one function: each callback touches another session's objects, and 1,000 sessions' do not fit
the CPU's caches). Worlds of 100 to 250 sessions, each in a fresh process, ran 1,000 sessions
1.5x faster on one core (13.0 s against 19.4 s, 10 min, a loaded machine)."""


def _run_task(task: tuple[Any, ...]) -> bytes:
    return _shard(*task)


def _pool(processes: int) -> Any:
    """One process per world (``maxtasksperchild=1``: each starts from a clean heap), forked on
    Linux: a world's process starts in milliseconds with the modules already imported."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(processes, maxtasksperchild=1)


def run_fleet(
    sessions: int,
    duration: float,
    *,
    seed: int = 0,
    shards: int = 1,
    batch: int | None = None,
    records: Records = "transitions",
    jitter: float = 0.01,
    progress: Progress | None = None,
    internal: bool = True,
    on_world: Callable[[int, int], None] | None = None,
    fast_forward: bool = False,
) -> FleetResult:
    """The fleet run: its sessions dealt round-robin to worlds of at most ``batch`` sessions
    (at least ``shards`` worlds), run by ``shards`` processes at a time. One world and one
    shard run in this process (the only case ``progress`` is told); otherwise ``on_world`` is
    told (worlds done, worlds) as they finish."""
    if sessions < 1:
        raise ValueError("a fleet needs at least one session")
    if shards < 1:
        raise ValueError("shards must be at least 1")
    if batch is not None and batch < 1:
        raise ValueError("batch must be at least 1")
    config = WorldConfig(sessions=sessions, jitter=jitter)
    actions = fleet_actions(random.Random(seed), sessions, duration)
    names = [f"s{i + 1}" for i in range(sessions)]
    worlds = min(sessions, max(shards, -(-sessions // batch) if batch is not None else 1))
    processes = min(shards, worlds)
    started = time.perf_counter()
    if worlds == 1:
        world, fired = run_world(
            config,
            actions,
            duration,
            seed=seed,
            records=records,
            progress=progress,
            internal=internal,
            fast_forward=fast_forward,
        )
        violations = [(v.at, v.session, str(v)) for v in world.invariants.violations]
        parts = [_Shard(fired, world.lines, _ends(world), violations)]
    else:
        tasks = [
            (config, actions, duration, seed, names[i::worlds], records, internal, fast_forward)
            for i in range(worlds)
        ]
        encoded: list[bytes] = []
        with _pool(processes) as pool:
            for data in pool.imap(_run_task, tasks, chunksize=1):  # in order: deterministic
                encoded.append(data)
                if on_world is not None:
                    on_world(len(encoded), worlds)
        parts = [msgspec.msgpack.decode(data, type=_Shard) for data in encoded]
    wall = time.perf_counter() - started
    lines = canonical(line for part in parts for line in part.lines)
    ends = sorted((e for part in parts for e in part.ends), key=lambda e: _number(e.session))
    found = sorted(
        (v for part in parts for v in part.violations), key=lambda v: (v[0], _number(v[1]))
    )
    return FleetResult(
        sessions=sessions,
        duration=duration,
        seed=seed,
        shards=worlds,
        processes=processes,
        wall=wall,
        callbacks=sum(part.callbacks for part in parts),
        lines=lines,
        ends=ends,
        violations=[v[2] for v in found],
    )
