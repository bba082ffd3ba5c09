"""The ``fsm-agent`` command line.

Bad input exits 2 with a message that says what was wrong (typer/click's usage errors already
do); a failed ``--check`` exits 1 with the diff.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsm import catalog, graph
from fsm.config import ConfigError, timer_values
from fsm.durations import format_duration
from fsm.timers import TABLES, TimerValues

app = typer.Typer(
    name="fsm-agent",
    help=(
        "A control plane for sandboxed coding agents. Every lifecycle (wrapper, agent link, "
        "ingest link, turn, session) is a declarative state machine; this tool draws them and "
        "runs them."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file whose [timers] table overrides durations (e.g. stale_heartbeat = '90s').",
        exists=True,
        dir_okay=False,
    ),
]


def _values(config: Path | None) -> dict[str, TimerValues]:
    try:
        values = timer_values(config)
        for spec in catalog.ALL:
            spec.check(values[spec.table.side])
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return values


@app.command("graph")
def graph_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write the diagrams into.", file_okay=False)
    ] = Path("diagrams"),
    formats: Annotated[
        str,
        typer.Option(
            "--format",
            help="Comma-separated formats among mmd, dot, svg, md (the Markdown index).",
        ),
    ] = ",".join(graph.FORMATS),
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Write nothing; exit 1 with a diff if the files differ from the code."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Render every machine (Mermaid, DOT, SVG and a Markdown page with timer tables)."""
    chosen = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(graph.FORMATS))
    if unknown or not chosen:
        typer.echo(
            f"error: --format: unknown format(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(graph.FORMATS)}",
            err=True,
        )
        raise typer.Exit(2)
    result = graph.render(catalog.ALL, _values(config), chosen)
    if check:
        problems = graph.check(result, out)
        if problems:
            typer.echo("\n".join(problems))
            typer.echo(f"{out}/ is out of date with the code: run `fsm-agent graph`.", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out}/ matches the machine declarations ({len(catalog.ALL)} machines).")
        return
    for note in graph.write(result, out):
        typer.echo(f"note: {note}", err=True)
    written = sorted([*result.files, *result.svg_sources])
    typer.echo(f"wrote {len(written)} files to {out}/: {', '.join(written)}")


@app.command("timers")
def timers_command(config: ConfigOption = None) -> None:
    """Print every timer's effective duration, its default and what it is for."""
    values = _values(config)
    for side, table in TABLES.items():
        typer.echo(f"[{side}]")
        for setting in table.settings:
            effective = values[side][setting.key]
            shown = format_duration(effective)
            if effective != setting.default:
                shown += f" (default {format_duration(setting.default)})"
            typer.echo(f"  {setting.key:<30} {shown:<22} {setting.doc}")


def main() -> None:
    app()
