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
CPU's caches), ``--shards K`` (K processes at a time) and ``--fast-forward`` (quiet stretches
jumped, ``fsm.sim.fastforward``). ``--census`` counts the callbacks by function, step by step or
fast-forwarded: the profile that says what is left to gain (see ``Census``).
"""

from __future__ import annotations

import argparse
import random
import resource
import tracemalloc
from collections import Counter
from collections.abc import Callable

import msgspec

from fsm.engine.clock import TimerHandle, VirtualClock
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
    fast_forward: bool = False

    @property
    def speedup(self) -> float:
        return self.simulated / self.wall

    @property
    def session_speedup(self) -> float:
        return self.speedup * self.sessions

    def render(self) -> str:
        peak = f", peak {self.peak_mib:.0f} MiB" if self.peak_mib is not None else ""
        how = (
            f"{self.shards} world(s), {self.processes} at a time"
            + (", lean" if self.lean else "")
            + (", fast-forward" if self.fast_forward else "")
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
    fast_forward: bool = False,
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
        fast_forward=fast_forward,
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
        fast_forward,
    )


class Census(msgspec.Struct):
    """What a world's callbacks are, by the function the clock ran: the profile that says what
    a lever can still gain. Step by step about half are heartbeats (the wrapper's beat, its
    arrival, Kilo's beat, its delivery, the windows' wake-ups); fast-forwarded, what is left is
    the turns' own work (streamed events, their frames and acks)."""

    fast_forward: bool
    callbacks: int
    session_seconds: float
    by_callback: dict[str, int]
    """Callbacks by qualified name (``_Handle``'s and ``_Beat``'s unwrapped), most first."""


def _callback_name(callback: Callable[[], None]) -> str:
    seen = callback
    while True:
        inner = getattr(seen, "sim_inner", None) or getattr(seen, "handle", None)
        if inner is None or inner is seen or not callable(inner):
            break
        seen = inner
    function = getattr(seen, "__func__", seen)
    return str(getattr(function, "__qualname__", type(seen).__qualname__))


class CountingClock(VirtualClock):
    """The virtual clock, counting what it runs by name (slower: for the census only)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        name = _callback_name(callback)
        counts = self.counts

        def counted() -> None:
            counts[name] += 1
            callback()

        return super().call_at(deadline, counted)


def census(
    sessions: int = 100, duration: float = 1200.0, seed: int = 0, *, fast_forward: bool = False
) -> Census:
    actions = fleet_actions(random.Random(seed), sessions, duration)
    clock = CountingClock()
    run_world(
        WorldConfig(sessions=sessions, jitter=0.01),
        actions,
        duration,
        seed=seed,
        records="none",
        fast_forward=fast_forward,
        scheduler=clock,
    )
    counts = dict(clock.counts.most_common())
    return Census(fast_forward, sum(counts.values()), sessions * duration, counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--memory", action="store_true", help="also trace peak memory (slower)")
    parser.add_argument("--shards", type=int, default=1, help="processes (one per core)")
    parser.add_argument("--batch", type=int, default=None, help="most sessions per world")
    parser.add_argument("--lean", action="store_true", help="no internal-transition records")
    parser.add_argument("--census", action="store_true", help="count what the callbacks are")
    parser.add_argument(
        "--fast-forward", action="store_true", help="jump quiet stretches (fsm.sim.fastforward)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    if args.census:
        found = census(args.sessions[0], args.hours * 3600, fast_forward=args.fast_forward)
        if args.json:
            print(msgspec.json.encode(found).decode())
        else:
            print(f"{found.callbacks:,} callbacks for {found.session_seconds:,.0f} session-s")
            for name, count in list(found.by_callback.items())[:12]:
                print(f"  {count:>9,} {count / found.callbacks:6.1%}  {name}")
        return
    for n in args.sessions:
        result = bench(
            n,
            args.hours * 3600,
            memory=args.memory,
            shards=args.shards,
            lean=args.lean,
            batch=args.batch,
            fast_forward=args.fast_forward,
        )
        if args.json:
            print(msgspec.json.encode(result).decode(), flush=True)
        else:
            print(result.render(), flush=True)


if __name__ == "__main__":
    main()
