"""What every benchmark returns, and the statistics they share.

Benchmarks are programs, not tests: they never fail on timing. Each module in ``bench/`` has
``run() -> list[Figure]``; ``python -m bench.run`` (``just bench``) runs them all, prints one
table and writes ``bench/results.json`` and ``bench/results.md``. Every figure is a median of
several runs; a comparison is a ratio measured side by side in the same run, because this
machine is shared and noisy.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    bench: str
    """Which benchmark (engine, simulator, relay, control, detection, container)."""
    name: str
    value: float
    unit: str
    baseline: str = ""
    """What the figure is compared with, measured in the same run."""
    baseline_value: float | None = None
    ratio: float | None = None
    """value / baseline_value (for costs: lower is better; the target says which way)."""
    target: str = ""
    """The issue's target, in words, e.g. '<= 1.5x bare transitions'."""
    meets_target: bool | None = None
    runs: int = 1
    note: str = ""
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


def repeat(fn: Callable[[], float], runs: int) -> list[float]:
    """Call ``fn`` (which returns one measurement) ``runs`` times."""
    return [fn() for _ in range(runs)]


def interleaved(fns: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    """Run several measurements round-robin, so a noisy moment hits all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            out[name].append(fn())
    return out


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB, from /proc (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
