"""``just bench``: run every benchmark, print one table, write results.json and results.md.

A benchmark that breaks is reported as such in the table (with its error) and the others still
run: a broken benchmark must be visible, not hidden behind a crash of the whole run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

from bench.common import Figure

BENCHES = ("engine", "simulator", "relay", "control", "detection")
HERE = Path(__file__).parent


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(figures: list[Figure]) -> str:
    head = "| bench | figure | value | baseline | ratio | target | meets | note |"
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for f in figures:
        base = f"{f.baseline}: {_fmt(f.baseline_value)}" if f.baseline else ""
        meets = {True: "yes", False: "**no**", None: ""}[f.meets_target]
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        rows.append(
            f"| {f.bench} | {f.name} | {_fmt(f.value)} {f.unit} | {base} | {ratio} | "
            f"{f.target} | {meets} | {f.note} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", choices=BENCHES, help="run only these")
    args = parser.parse_args()
    figures: list[Figure] = []
    started = time.monotonic()
    for name in args.only or BENCHES:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            module = importlib.import_module(f"bench.{name}")
            got: list[Figure] = module.run()
        except Exception as exc:
            traceback.print_exc()
            got = [Figure(name, "benchmark failed", float("nan"), "", note=f"{exc!r}"[:200])]
        for figure in got:
            print(f"   {figure.name}: {_fmt(figure.value)} {figure.unit}", flush=True)
        figures.extend(got)
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    total = time.monotonic() - started
    text = table(figures)
    print()
    print(text)
    print(f"\ntotal {total:.0f} s")
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "seconds": round(total, 1),
    }
    (HERE / "results.json").write_text(
        json.dumps({"meta": meta, "figures": [f.as_dict() for f in figures]}, indent=2) + "\n"
    )
    (HERE / "results.md").write_text(
        f"# Benchmark results\n\n{meta['when']}, Python {meta['python']}, "
        f"{meta['machine']}, {meta['seconds']} s in all.\n\n{text}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
