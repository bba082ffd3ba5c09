"""Simulator bench: session-seconds per wall second, 1 session and 1,000 sessions x 2 h.

Wraps ``fsm.sim.bench`` (``fsm.sim.fleet``'s world: N sessions with prompts streaming text,
reasoning and tools, heartbeats all the time and random faults: Kilo crashes and hangs, ingest
drops). Each run is a fresh process, so its peak RSS is the world's own (plus the interpreter's
~20 MiB).

Issue 19's goal is 1,000 sessions x 2 simulated hours in 10 s: 720,000 session-seconds per wall
second. The 1,000-session world runs the full 2 hours once per lever, in the same run, so each
lever's figure is against the same world on the same machine:

* **step by step**: one process, every record made (as ``fsm-agent simulate`` runs);
* **lean records**: machines make no records of internal transitions (no bench timeline keeps
  them; the timelines that remain are byte for byte the same);
* **fast-forward**: quiet stretches jumped (``fsm.sim.fastforward``; exact:
  ``tests/sim/test_fast_forward.py``);
* **worlds of 200**: the sessions dealt to worlds of 200, one after the other, each in a fresh
  process (a callback costs twice as much in a world of 1,000 sessions: their objects do not
  fit the CPU's caches; ``fsm.sim.fleet.BATCH``);
* **+ shards**: those worlds run one per core.

The census (``fsm.sim.bench.census``, 100 sessions x 20 min) counts the callbacks by function
both ways: the profile of what is left once the quiet stretches are jumped. The 2-core machine is
shared: figures move with the others' load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.common import Figure, median

TARGET = 720_000.0
HOURS = 2.0
ONE_RUNS = 3
CORES = str(max(2, os.cpu_count() or 2))
LEVERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("step by step", ()),
    ("lean records", ("--lean",)),
    ("fast-forward", ("--fast-forward",)),
    ("fast-forward + lean records + worlds of 200", ("--fast-forward", "--lean", "--batch", "200")),
    ("lean records + worlds of 200 + shards", ("--lean", "--batch", "200", "--shards", CORES)),
    (
        "fast-forward + lean records + worlds of 200 + shards",
        ("--fast-forward", "--lean", "--batch", "200", "--shards", CORES),
    ),
)


def _one(sessions: int, hours: float, extra: tuple[str, ...] = ()) -> dict[str, float]:
    command = [sys.executable, "-m", "fsm.sim.bench", "--json", *extra]
    out = subprocess.run(
        [*command, "--sessions", str(sessions), "--hours", str(hours)],
        check=True,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {' '.join(extra) or 'step by step'}: {result}", file=sys.stderr, flush=True)
    return result


def _speed(r: dict[str, float]) -> float:
    return r["sessions"] * r["simulated"] / r["wall"]


def run() -> list[Figure]:
    figures: list[Figure] = []
    ones = [_one(1, HOURS) for _ in range(ONE_RUNS)]
    speeds = [_speed(r) for r in ones]
    figures.append(
        Figure(
            "simulator",
            "1 session x 2 h simulated",
            median(speeds),
            "session-s/s",
            baseline="real time",
            baseline_value=1.0,
            ratio=median(speeds),
            runs=ONE_RUNS,
            note=f"{median([r['wall'] for r in ones]):.2f} s wall; {int(ones[0]['callbacks']):,} "
            "callbacks",
            samples=speeds,
        )
    )
    step: float | None = None
    for label, extra in LEVERS:
        r = _one(1000, HOURS, extra)
        speed = _speed(r)
        step = speed if step is None else step
        figures.append(
            Figure(
                "simulator",
                f"1,000 sessions x 2 h simulated ({label})",
                speed,
                "session-s/s",
                baseline="step by step",
                baseline_value=step,
                ratio=speed / step,
                target=">= 720,000 session-s/s",
                meets_target=speed >= TARGET,
                note=(
                    f"{r['wall']:.1f} s wall; {int(r['callbacks']):,} callbacks; "
                    f"{int(r['shards'])} world(s), {int(r['processes'])} at a time; peak RSS "
                    f"{r['rss_mib']:.0f} MiB; machine shared with other engineers' tests"
                ),
                samples=[speed],
            )
        )
    censuses = {}
    for extra in ((), ("--fast-forward",)):
        counting = ("--json", "--census", "--sessions", "100", "--hours", str(1 / 3), *extra)
        censuses[bool(extra)] = json.loads(
            subprocess.run(
                [sys.executable, "-m", "fsm.sim.bench", *counting],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            ).stdout.splitlines()[-1]
        )
    step_count, fast = censuses[False], censuses[True]
    top = ", ".join(
        f"{name} {count / fast['callbacks']:.0%}"
        for name, count in list(fast["by_callback"].items())[:4]
    )
    figures.append(
        Figure(
            "simulator",
            "callbacks per session-second, fast-forwarded (census)",
            fast["callbacks"] / fast["session_seconds"],
            "callbacks/session-s",
            baseline="step by step",
            baseline_value=step_count["callbacks"] / step_count["session_seconds"],
            ratio=fast["callbacks"] / step_count["callbacks"],
            note=(
                f"100 sessions x 20 min: {step_count['callbacks']:,} callbacks step by step, "
                f"{fast['callbacks']:,} fast-forwarded; what is left: {top} (the turns' "
                "streamed events up, their acks down, Kilo's deliveries)"
            ),
        )
    )
    return figures


if __name__ == "__main__":
    for figure in run():
        print(f"{figure.name}: {figure.value:,.1f} {figure.unit}  ({figure.note})")
