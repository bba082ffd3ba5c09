"""``fsm-agent simulate`` and ``fsm-agent check``: the simulation harness on the command line.

Kept out of ``fsm/cli/app.py`` so that the harness can grow without touching the command line's
core;
``fsm/cli/app.py`` calls ``register(app)`` once. Exit codes follow the rest of the tool: 0 when
every
expectation and invariant holds, 1 when one does not, 2 for input that cannot be run (a scenario
error names the file, the line and the field).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from fsm.settings.config import ConfigError
from fsm.sim.scenario import Scenario, ScenarioError, load_scenario
from fsm.sim.timeline import clock_label, render_json, render_text


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
) -> None:
    """Run scenarios on the virtual clock: timeline, a pass/fail line per expectation."""
    if fuzz:
        _fuzz(fuzz, seed if seed is not None else 0, horizon, faults, as_json)
        return
    if not paths:
        typer.echo("error: give scenario files or folders (or --fuzz N)", err=True)
        raise typer.Exit(2)
    from fsm.sim.run import run_scenario

    scenarios = _load(_collect(paths))
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


def _fuzz(count: int, seed: int, horizon: str, faults: int, as_json: bool) -> None:
    from fsm.engine.durations import DurationError, parse_duration
    from fsm.sim.fuzz import fuzz_many

    try:
        span = parse_duration(horizon)
    except DurationError as exc:
        typer.echo(f"error: --horizon: {exc}", err=True)
        raise typer.Exit(2) from None
    report = fuzz_many(count, seed=seed, horizon=span, max_steps=faults)
    if as_json:
        typer.echo(msgspec.json.encode(report.summary()))
    else:
        typer.echo(report.render())
    if report.failure is not None:
        raise typer.Exit(1)


def check_command(
    depth: Annotated[int, typer.Option(help="Explore every schedule up to this many steps.")] = 5,
    prompts: Annotated[int, typer.Option(help="Most prompts a client sends.", min=0)] = 1,
    faults: Annotated[int, typer.Option(help="Most injected faults per schedule.", min=0)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object.")] = False,
) -> None:
    """Explore the composed machines' reachable states (timers may expire at any moment)."""
    from fsm.sim.explore import explore

    report = explore(depth=depth, prompts=prompts, faults=faults)
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
