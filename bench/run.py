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

BENCHES = ("engine", "simulator", "relay", "control", "detection", "container", "store", "failover")
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
    ran: dict[str, str] = {}
    started = time.monotonic()
    for name in args.only or BENCHES:
        print(f"== {name}", flush=True)
        ran[name] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
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
    figures, ran = _merge_earlier(figures, ran)
    text = table(figures)
    print()
    print(text)
    print(f"\ntotal {total:.0f} s")
    meta = {
        "when": ran,
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "seconds": round(total, 1),
    }
    (HERE / "results.json").write_text(
        json.dumps({"meta": meta, "figures": [f.as_dict() for f in figures]}, indent=2) + "\n"
    )
    when = ", ".join(f"{name} {at}" for name, at in ran.items())
    (HERE / "results.md").write_text(
        f"# Benchmark results\n\nPython {meta['python']}, {meta['machine']}; "
        f"this run took {meta['seconds']} s. Measured: {when}.\n\n{text}\n"
    )
    return 0


def _merge_earlier(
    figures: list[Figure], ran: dict[str, str]
) -> tuple[list[Figure], dict[str, str]]:
    """A partial run (``--only``) replaces its benches' figures and keeps the others' earlier
    figures, each bench with the time it was measured: rerunning one bench must not wipe the
    table the last full run wrote."""
    earlier_file = HERE / "results.json"
    if set(ran) == set(BENCHES) or not earlier_file.exists():
        return figures, ran
    try:
        earlier = json.loads(earlier_file.read_text())
        kept = [Figure(**f) for f in earlier["figures"] if f["bench"] not in ran]
        when = earlier["meta"]["when"]
    except (ValueError, KeyError, TypeError):
        return figures, ran  # unreadable or from an older layout: this run's figures only
    if isinstance(when, str):  # written by a full run before per-bench times were kept
        when = {f.bench: when for f in kept}
    merged = {**{b: when[b] for b in BENCHES if b in when and b not in ran}, **ran}
    order = {name: i for i, name in enumerate(BENCHES)}
    everything = sorted([*kept, *figures], key=lambda f: order.get(f.bench, len(order)))
    return everything, {b: merged[b] for b in sorted(merged, key=lambda b: order.get(b, 99))}


if __name__ == "__main__":
    raise SystemExit(main())
