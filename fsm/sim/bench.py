"""Simulator throughput: simulated seconds per wall second for many concurrent sessions.

A benchmark, not a test (``python -m fsm.sim.bench``): it prints figures and never fails on
timing. Each session of the world gets a prompt every few minutes (streamed text, reasoning,
tools) and now and then a fault (Kilo crash or hang, ingest drop); heartbeats run all the time
(the wrapper's every 5 s, Kilo's every 10 s), which is most of the work. Reported: virtual seconds
per wall second of the whole world, and the same times the number of sessions ("session-seconds
per wall second", the figure issue 6 targets).
"""

from __future__ import annotations

import argparse
import random
import resource
import time
import tracemalloc
from contextlib import nullcontext

import msgspec

from fsm.sim.fleet import batch_gc, fleet_actions
from fsm.sim.scenario import WorldConfig
from fsm.sim.world import World


class BenchResult(msgspec.Struct):
    sessions: int
    simulated: float
    wall: float
    callbacks: int
    peak_mib: float | None
    """Peak of Python allocations (tracemalloc), when asked for: it slows the run ~4x."""
    rss_mib: float = 0.0
    """Peak resident set of this process so far (``ru_maxrss``): the world's peak when the
    process ran nothing else, as ``bench.simulator`` arranges."""

    @property
    def speedup(self) -> float:
        return self.simulated / self.wall

    @property
    def session_speedup(self) -> float:
        return self.speedup * self.sessions

    def render(self) -> str:
        peak = f", peak {self.peak_mib:.0f} MiB" if self.peak_mib is not None else ""
        return (
            f"{self.sessions:>5} sessions x {self.simulated / 3600:g} h: {self.wall:7.2f} s wall, "
            f"{self.speedup:>10,.0f} simulated s per wall s, "
            f"{self.session_speedup:>12,.0f} session-s per wall s, "
            f"{self.callbacks:,} callbacks{peak}, max RSS {self.rss_mib:.0f} MiB"
        )


schedule = fleet_actions
"""The bench's script is the fleet run's (``fsm.sim.fleet``)."""


def bench(
    sessions: int,
    duration: float = 7200.0,
    *,
    seed: int = 0,
    memory: bool = False,
    tune_gc: bool = True,
) -> BenchResult:
    rng = random.Random(seed)
    actions = schedule(rng, sessions, duration)
    if memory:
        tracemalloc.start()
    world = World(
        WorldConfig(sessions=sessions, jitter=0.01),
        seed=seed,
        keep_timeline=False,
        check_states=False,
    )
    with batch_gc() if tune_gc else nullcontext():
        started = time.perf_counter()
        world.start()
        for action in actions:
            world.run_until(action.at)
            world.do(action)
        world.run_until(duration)
        wall = time.perf_counter() - started
    peak = None
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    clock = world.scheduler
    fired = int(getattr(clock, "fired", 0))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(sessions, duration, wall, fired, peak, rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--memory", action="store_true", help="also trace peak memory (slower)")
    parser.add_argument(
        "--default-gc", action="store_true", help="keep the collector's default thresholds"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    for n in args.sessions:
        result = bench(n, args.hours * 3600, memory=args.memory, tune_gc=not args.default_gc)
        if args.json:
            print(msgspec.json.encode(result).decode(), flush=True)
        else:
            print(result.render(), flush=True)


if __name__ == "__main__":
    main()
