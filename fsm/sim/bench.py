"""Simulator throughput: simulated seconds per wall second for many concurrent sessions.

A benchmark, not a test (``python -m fsm.sim.bench``): it prints figures and never fails on
timing. The world is ``fsm.sim.fleet``'s: each session gets a prompt every few minutes (streamed
text, reasoning, tools) and now and then a fault (Kilo crash or hang, ingest drop); heartbeats run
all the time (the wrapper's every 5 s, Kilo's every 10 s), which is most of the work. Reported:
virtual seconds per wall second of the whole world, and the same times the number of sessions
("session-seconds per wall second", the figure issues 6 and 19 target).

The levers, each a flag, so one run can measure each against the same world: ``--lean``
(machines make no records of internal transitions, which no bench timeline keeps) and
``--batch N`` (worlds of at most N sessions, each in a fresh process: a smaller world fits the
CPU's caches) and ``--shards K`` (K processes at a time). ``--census`` counts what the
callbacks are, for the fast-forward's ceiling (see ``census``).
"""

from __future__ import annotations

import argparse
import random
import resource
import tracemalloc

import msgspec

from fsm.sim.fleet import fleet_actions, run_fleet, run_world
from fsm.sim.scenario import WorldConfig

schedule = fleet_actions
"""The bench's script is the fleet run's (``fsm.sim.fleet``)."""


class BenchResult(msgspec.Struct):
    sessions: int
    simulated: float
    wall: float
    callbacks: int
    peak_mib: float | None
    """Peak of Python allocations (tracemalloc), when asked for: it slows the run ~4x."""
    rss_mib: float = 0.0
    """Peak resident set of this process so far (``ru_maxrss``; with shards, the largest
    shard's): the world's peak when the process ran nothing else, as ``bench.simulator``
    arranges."""
    shards: int = 1
    """Worlds the sessions were dealt to."""
    lean: bool = False
    processes: int = 1

    @property
    def speedup(self) -> float:
        return self.simulated / self.wall

    @property
    def session_speedup(self) -> float:
        return self.speedup * self.sessions

    def render(self) -> str:
        peak = f", peak {self.peak_mib:.0f} MiB" if self.peak_mib is not None else ""
        how = f"{self.shards} world(s), {self.processes} at a time" + (
            ", lean" if self.lean else ""
        )
        return (
            f"{self.sessions:>5} sessions x {self.simulated / 3600:g} h ({how}): "
            f"{self.wall:7.2f} s wall, {self.speedup:>10,.0f} simulated s per wall s, "
            f"{self.session_speedup:>12,.0f} session-s per wall s, "
            f"{self.callbacks:,} callbacks{peak}, max RSS {self.rss_mib:.0f} MiB"
        )


def bench(
    sessions: int,
    duration: float = 7200.0,
    *,
    seed: int = 0,
    memory: bool = False,
    shards: int = 1,
    lean: bool = False,
    batch: int | None = None,
) -> BenchResult:
    if memory:
        if shards != 1 or batch is not None:
            raise ValueError("--memory traces this process: it needs --shards 1")
        tracemalloc.start()
    result = run_fleet(
        sessions,
        duration,
        seed=seed,
        shards=shards,
        batch=batch,
        records="none",
        internal=not lean,
    )
    peak = None
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rss = max(own, children) / 1024
    return BenchResult(
        sessions,
        duration,
        result.wall,
        result.callbacks,
        peak,
        rss,
        result.shards,
        lean,
        result.processes,
    )


class Census(msgspec.Struct):
    """What a world's callbacks are: the ceiling of a fast-forward of quiet stretches.

    A fast-forward may jump only heartbeats "whose sole effect is re-arming silence timers"
    (issue 19). The wrapper's ingest heartbeat is one: its timer (``heartbeat_due``) and the
    frame's arrival re-arm the session's stale window, nothing else. Kilo's ``server.heartbeat`` is
    not: the wrapper forwards it as an event frame with a sequence number, the control plane stores
    it as an event row and acknowledges it. And every session has a Kilo heartbeat every 10 s,
    so a session's quiet stretch is never longer than that."""

    callbacks: int
    wrapper_beats: int
    """Each is two callbacks (the wrapper's timer, the frame's arrival)."""
    kilo_beats: int
    """Each is at least four (Kilo's timer, the wrapper's read, the frame up, the ack down)."""
    session_seconds: float

    @property
    def ceiling(self) -> float:
        """The most a fast-forward of the wrapper's heartbeats could gain (if it cost nothing)."""
        return self.callbacks / (self.callbacks - 2 * self.wrapper_beats)


def census(sessions: int = 100, duration: float = 1200.0, seed: int = 0) -> Census:
    actions = fleet_actions(random.Random(seed), sessions, duration)
    world, fired = run_world(
        WorldConfig(sessions=sessions, jitter=0.01), actions, duration, seed=seed, records="all"
    )
    wrapper = sum(1 for line in world.lines if line.trigger == "heartbeat_due")
    kilo = sum(
        1
        for sid in world.sessions
        for row in world.store.events(sid, limit=10**9)
        if b'"server.heartbeat"' in row.data  # each one stored: not a pure re-arm
    )
    return Census(fired, wrapper, kilo, sessions * duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--memory", action="store_true", help="also trace peak memory (slower)")
    parser.add_argument("--shards", type=int, default=1, help="processes (one per core)")
    parser.add_argument("--batch", type=int, default=None, help="most sessions per world")
    parser.add_argument("--lean", action="store_true", help="no internal-transition records")
    parser.add_argument("--census", action="store_true", help="count what the callbacks are")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    if args.census:
        found = census(args.sessions[0], args.hours * 3600)
        if args.json:
            summary = {**msgspec.to_builtins(found), "ceiling": found.ceiling}
            print(msgspec.json.encode(summary).decode())
        else:
            print(f"{found}, fast-forward ceiling {found.ceiling:.2f}x")
        return
    for n in args.sessions:
        result = bench(
            n,
            args.hours * 3600,
            memory=args.memory,
            shards=args.shards,
            lean=args.lean,
            batch=args.batch,
        )
        if args.json:
            print(msgspec.json.encode(result).decode(), flush=True)
        else:
            print(result.render(), flush=True)


if __name__ == "__main__":
    main()
