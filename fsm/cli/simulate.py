"""``fsm-agent simulate`` and ``fsm-agent check``: the simulation harness on the command line.

Kept out of ``fsm/cli/app.py`` so that the harness can grow without touching the command line's
core; ``fsm/cli/app.py`` calls ``register(app)`` once. Exit codes follow the rest of the tool: 0
when every expectation and invariant holds, 1 when one does not, 2 for input that cannot be run
(a scenario error names the file, the line and the field; a number out of range names the option
and its range, on one line).

Runs that take more than a moment (``check``, a fleet run, a fuzz run) show their progress on one
rewritten line of stderr when stderr is a terminal, and print nothing extra otherwise (a pipe or a
CI log gets only the results).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, TextIO

import msgspec
import typer

from fsm.settings.config import ConfigError
from fsm.sim.scenario import Scenario, ScenarioError, load_scenario
from fsm.sim.timeline import Line, clock_label, render_json, render_text


class Progress:
    """One line on stderr, rewritten at most every ``every`` seconds, only on a terminal."""

    def __init__(self, stream: TextIO | None = None, every: float = 0.2) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.on = self.stream.isatty()
        self.every = every
        self._last = 0.0
        self._shown = False

    def show(self, text: str) -> None:
        if not self.on:
            return
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.stream.write(f"\r\x1b[K{text}")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


def _in_range(option: str, value: int, low: int, high: int, why: str = "") -> int:
    """A number option checked by hand: one line naming it and its range, exit code 2."""
    if not low <= value <= high:
        reason = f" ({why})" if why else ""
        typer.echo(f"error: {option} must be {low} to {high}, not {value}{reason}", err=True)
        raise typer.Exit(2)
    return value


def _collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                typer.echo(f"error: {path}: no *.toml scenario files in this folder", err=True)
                raise typer.Exit(2)
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            typer.echo(f"error: {path}: no such file or folder", err=True)
            raise typer.Exit(2)
    return files


def _load(files: list[Path]) -> list[Scenario]:
    scenarios: list[Scenario] = []
    for file in files:
        try:
            scenarios.append(load_scenario(file))
        except ScenarioError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    return scenarios


def simulate_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="Scenario files (.toml) or folders of them.", show_default=False),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for every random choice (default: each scenario's own seed)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines: timeline, expectations, results.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also internal transitions and ignored events.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No timeline; only the expectation lines.")
    ] = False,
    mutants: Annotated[
        bool,
        typer.Option(
            "--mutants", help="Also run each scenario's mutants; each must fail an expectation."
        ),
    ] = False,
    fuzz: Annotated[
        int,
        typer.Option(help="Run N random fault schedules instead of scenario files.", min=0),
    ] = 0,
    horizon: Annotated[
        str, typer.Option(help="Fuzz: faults and prompts happen within this virtual time.")
    ] = "20m",
    faults: Annotated[int, typer.Option(help="Fuzz: most steps per schedule.", min=1)] = 12,
    fleet: Annotated[
        int,
        typer.Option(
            help="Run a fleet of N sessions (prompts and faults from the seed) instead of files."
        ),
    ] = 0,
    span: Annotated[str, typer.Option(help="Fleet: virtual time to simulate.")] = "2h",
    shards: Annotated[int, typer.Option(help="Fleet: processes at a time (one per core).")] = 1,
    batch: Annotated[
        int,
        typer.Option(
            help="Fleet: most sessions per world (small worlds are faster: they fit the caches)."
        ),
    ] = 200,
    fast_forward: Annotated[
        bool,
        typer.Option(
            "--fast-forward/--step-by-step",
            help="Fleet: jump each session's quiet stretches (exact: the same timeline, fewer "
            "callbacks; docs/simulator.md).",
        ),
    ] = True,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Draw the run: sessions per state over time, faults, one session's lanes "
            "(.html or .svg, self-contained).",
            show_default=False,
        ),
    ] = None,
    report_session: Annotated[
        str, typer.Option(help="The session whose machines the report draws lane by lane.")
    ] = "s1",
) -> None:
    """Run scenarios on the virtual clock: timeline, a pass/fail line per expectation."""
    if report is not None and report.suffix.lower() not in (".html", ".svg"):
        typer.echo(f"error: --report: {report} must end in .html or .svg", err=True)
        raise typer.Exit(2)
    if fleet:
        _fleet(fleet, span, shards, batch, seed or 0, report, report_session, as_json, fast_forward)
        return
    if fuzz:
        if report is not None:
            typer.echo("error: --report draws one run; --fuzz runs many", err=True)
            raise typer.Exit(2)
        _fuzz(fuzz, seed if seed is not None else 0, horizon, faults, as_json)
        return
    if not paths:
        typer.echo("error: give scenario files or folders (or --fuzz N)", err=True)
        raise typer.Exit(2)
    from fsm.sim.run import run_scenario

    scenarios = _load(_collect(paths))
    if report is not None and len(scenarios) != 1:
        typer.echo(f"error: --report draws one run; {len(scenarios)} scenarios given", err=True)
        raise typer.Exit(2)
    failed = 0
    started = time.perf_counter()
    for scenario in scenarios:
        try:
            result = run_scenario(scenario, seed=seed)
        except ConfigError as exc:
            typer.echo(f"error: {scenario.path}: {exc}", err=True)
            raise typer.Exit(2) from None
        survivors = []
        caught = ""
        if mutants:
            from fsm.sim.run import mutant_survivors

            survivors = mutant_survivors(scenario, seed)
            n = len(scenario.mutants)
            caught = f", {n - len(survivors)}/{n} mutants caught"
        ok = result.passed and not survivors
        failed += not ok
        if report is not None:
            _write_report(
                report,
                result.lines,
                scenario.until,
                scenario.world.sessions,
                report_session,
                f"{scenario.name} (seed {result.seed})",
            )
        if as_json:
            if not quiet:
                typer.echo(render_json(result.lines, verbose=verbose))
            for r in result.results:
                typer.echo(msgspec.json.encode({"type": "expect", **msgspec.to_builtins(r)}))
            typer.echo(
                msgspec.json.encode(
                    {
                        "type": "result",
                        "scenario": scenario.path,
                        "name": scenario.name,
                        "seed": result.seed,
                        "passed": ok,
                        "violations": [str(v) for v in result.violations],
                        "mutant_survivors": [m.why for m in survivors],
                    }
                )
            )
            continue
        typer.echo(f"== {scenario.path}: {scenario.name} (seed {result.seed})")
        if not quiet:
            text = render_text(result.lines, verbose=verbose, sessions=scenario.world.sessions)
            typer.echo(text)
        for r in result.results:
            typer.echo(r.render(scenario.path))
        for v in result.violations:
            typer.echo(f"  FAIL  invariant {v}")
        for m in survivors:
            typer.echo(f"  FAIL  mutant survived (no expectation noticed): {m.why}")
        verdict = "PASS" if ok else "FAIL"
        typer.echo(
            f"-- {verdict}: {sum(r.passed for r in result.results)}/{len(result.results)} "
            f"expectations, {len(result.violations)} invariant violations{caught}, "
            f"{clock_label(scenario.until)} simulated in {result.wall * 1000:.0f} ms"
        )
    if not as_json:
        elapsed = time.perf_counter() - started
        typer.echo(
            f"{len(scenarios) - failed}/{len(scenarios)} scenarios passed in {elapsed:.2f} s"
        )
    if failed:
        raise typer.Exit(1)


def _duration(option: str, text: str) -> float:
    from fsm.engine.durations import DurationError, parse_duration

    try:
        return parse_duration(text)
    except DurationError as exc:
        typer.echo(f"error: {option}: {exc}", err=True)
        raise typer.Exit(2) from None


def _write_report(
    path: Path, lines: list[Line], span: float, sessions: int, session: str, title: str
) -> None:
    from fsm.sim.report import render_html, render_svg

    names = {f"s{i + 1}" for i in range(sessions)}
    if session not in names:
        typer.echo(
            f"error: --report-session: no session {session!r} in this run (s1 to s{sessions})",
            err=True,
        )
        raise typer.Exit(2)
    if path.suffix.lower() == ".svg":
        text = render_svg(lines, span, sessions, session)
    else:
        text = render_html(lines, span, sessions, session, title)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        typer.echo(f"error: --report: {path}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None


FLEET_MAX = 100_000
"""More sessions than one machine holds in memory (about 0.25 MiB each)."""


def _fleet(
    sessions: int,
    span_text: str,
    shards: int,
    batch: int,
    seed: int,
    report: Path | None,
    report_session: str,
    as_json: bool,
    fast_forward: bool,
) -> None:
    from fsm.sim.fleet import run_fleet

    _in_range("--fleet", sessions, 1, FLEET_MAX)
    _in_range("--shards", shards, 1, 64)
    _in_range("--batch", batch, 1, FLEET_MAX)
    span = _duration("--span", span_text)
    if span <= 0:
        typer.echo("error: --span must be more than 0", err=True)
        raise typer.Exit(2)
    if report is not None and report_session not in {f"s{i + 1}" for i in range(sessions)}:
        typer.echo(
            f"error: --report-session: no session {report_session!r} in this run "
            f"(s1 to s{sessions})",
            err=True,
        )
        raise typer.Exit(2)
    progress = Progress()
    result = run_fleet(
        sessions,
        span,
        seed=seed,
        shards=shards,
        batch=batch,
        on_world=lambda done, worlds: progress.show(f"fleet: {done}/{worlds} worlds run"),
        records="transitions" if report is not None else "none",
        progress=lambda at: progress.show(
            f"fleet: {clock_label(at)} of {clock_label(span)} simulated"
        ),
        fast_forward=fast_forward,
    )
    progress.done()
    if report is not None:
        title = f"fleet of {sessions:,} sessions, seed {seed}"
        _write_report(report, result.lines, span, sessions, report_session, title)
    faults = sum(1 for line in result.lines if line.kind == "do" and line.trigger != "prompt")
    if as_json:
        typer.echo(
            msgspec.json.encode(
                {
                    "type": "fleet",
                    "sessions": sessions,
                    "span": span,
                    "seed": seed,
                    "shards": result.shards,
                    "fast_forward": fast_forward,
                    "wall": result.wall,
                    "session_seconds_per_second": result.session_speed,
                    "callbacks": result.callbacks,
                    "violations": result.violations,
                }
            )
        )
    else:
        for v in result.violations:
            typer.echo(f"  FAIL  invariant {v}")
        drawn = f", {faults} faults drawn in {report}" if report is not None else ""
        typer.echo(
            f"fleet: {sessions:,} sessions x {clock_label(span)} in {result.wall:.2f} s "
            f"({result.session_speed:,.0f} session-s/s, {result.shards} world(s), "
            f"{result.processes} at a time), {result.callbacks:,} callbacks, "
            f"{len(result.violations)} invariant violations{drawn}"
        )
    if result.violations:
        raise typer.Exit(1)


def _fuzz(count: int, seed: int, horizon: str, faults: int, as_json: bool) -> None:
    from fsm.sim.fuzz import fuzz_many

    span = _duration("--horizon", horizon)
    progress = Progress()
    report = fuzz_many(
        count,
        seed=seed,
        horizon=span,
        max_steps=faults,
        progress=lambda done: progress.show(f"fuzz: {done}/{count} schedules"),
    )
    progress.done()
    if as_json:
        typer.echo(msgspec.json.encode(report.summary()))
    else:
        typer.echo(report.render())
    if report.failure is not None:
        raise typer.Exit(1)


DEPTH_MAX = 20
"""The search is breadth-first and its frontier grows about fourfold per step: past 20 steps it
would not end in a day."""
CHOICE_MAX = 5
"""Most prompts or faults a schedule may hold: each multiplies the choices at every step."""


def check_command(
    depth: Annotated[
        int, typer.Option(help=f"Explore every schedule up to this many steps (0 to {DEPTH_MAX}).")
    ] = 5,
    prompts: Annotated[
        int, typer.Option(help=f"Most prompts a client sends (0 to {CHOICE_MAX}).")
    ] = 1,
    faults: Annotated[
        int, typer.Option(help=f"Most injected faults per schedule (0 to {CHOICE_MAX}).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object.")] = False,
) -> None:
    """Explore the composed machines' reachable states (timers may expire at any moment)."""
    from fsm.sim.explore import explore

    _in_range("--depth", depth, 0, DEPTH_MAX, "steps of the breadth-first search")
    _in_range("--prompts", prompts, 0, CHOICE_MAX)
    _in_range("--faults", faults, 0, CHOICE_MAX)
    progress = Progress()
    report = explore(
        depth=depth,
        prompts=prompts,
        faults=faults,
        progress=lambda moves, states, deepest: progress.show(
            f"check: {states:,} states, {moves:,} transitions, depth {deepest}/{depth}"
        ),
    )
    progress.done()
    if as_json:
        typer.echo(msgspec.json.encode(report.summary()))
    else:
        typer.echo(report.render())
    if report.violation is not None:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``check`` to the ``fsm-agent`` command line."""
    app.command("simulate")(simulate_command)
    app.command("check")(check_command)


if __name__ == "__main__":  # ``python -m fsm.cli.simulate`` before the hook is in fsm/cli/app.py
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(_app)
    _app()
