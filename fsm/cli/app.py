"""The ``fsm-agent`` command line.

Bad input exits 2 with one line that says what was wrong (typer/click's usage errors already
do); a failed ``--check`` exits 1 with the diff. Every command that takes ``--config`` loads it
through ``fsm.settings.file.load_config``, the one strict loader, so no command accepts a file
another refuses. Help text is plain (no rich markup): the help strings name TOML tables such as
``[timers]``, which rich would read as markup and swallow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from adapters.agents.registry import AGENTS, DEFAULT_AGENT, flag_aliases
from fsm.engine import graph
from fsm.engine.durations import format_duration
from fsm.machines import catalog
from fsm.machines.timers import TABLES, TimerValues
from fsm.settings.config import ConfigError
from fsm.settings.file import Config, load_config

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
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fsm-agent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fsm-agent {_version()}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Options of the tool itself (``--version``); each command has its own."""


AGENT_NAMES = " or ".join(AGENTS)
AGENT_BIN_FLAGS = ("--agent-bin", *flag_aliases())
"""``--agent-bin`` and the older spellings the agents declare (``AgentSpec.flag_aliases``)."""
BIN_ENVS = " or ".join(f"${spec.bin_env}" for spec in AGENTS.values())

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file whose [timers] table overrides durations (e.g. stale_heartbeat = '90s'); "
        "also [limits], [runtime], [agent], [outbox]. An unknown table or key is an error.",
        show_default=False,
    ),
]


ImageOption = Annotated[
    str | None,
    typer.Option(
        help="Wrapper image for --runtime docker (else [runtime] image, else the project's own, "
        "built by `just image` if missing).",
        show_default=False,
    ),
]


def _check_runtime(runtime: str, image: str | None, allowed: tuple[str, ...]) -> None:
    if runtime not in allowed:
        choices = ", ".join(repr(r) for r in allowed)
        typer.echo(f"error: --runtime must be one of {choices}, not {runtime!r}", err=True)
        raise typer.Exit(2)
    if image is not None and runtime != "docker":
        typer.echo("error: --image is for --runtime docker", err=True)
        raise typer.Exit(2)


def _config(path: Path | None) -> Config:
    """``--config`` loaded and checked whole, or one line and exit 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _values(config: Path | None) -> dict[str, TimerValues]:
    values = _config(config).timers
    try:
        for spec in catalog.ALL:
            spec.check(values[spec.table.side])
    except ValueError as exc:
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


@app.command("limits")
def limits_command(config: ConfigOption = None) -> None:
    """Print every input bound's effective value, its default, who enforces it and why."""
    from fsm.settings import limits

    values = _config(config).limits
    for setting in limits.SETTINGS:
        effective = values[setting.key]
        shown = limits.format_limit(setting, effective)
        if effective != setting.default:
            shown += f" (default {limits.format_limit(setting, setting.default)})"
        typer.echo(f"  {setting.key:<22} {shown:<24} {setting.side:<8} {setting.doc}")


@app.command("openapi")
def openapi_command(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write the documents into.", file_okay=False)
    ] = Path("docs/openapi"),
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the files differ from the code."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Write the OpenAPI 3.1 documents of the control plane's and the wrapper's HTTP APIs."""
    from fsm.cli import openapi_files

    _config(config)
    documents = openapi_files.render(config)
    if check:
        stale = openapi_files.stale(documents, out)
        if stale:
            typer.echo(
                f"{out}/ is out of date with the code ({', '.join(stale)}): run "
                "`fsm-agent openapi`.",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(f"{out}/ matches the API declarations ({len(documents)} documents).")
        return
    openapi_files.write(documents, out)
    typer.echo(f"wrote {', '.join(sorted(documents))} to {out}/")


@app.command("serve")
def serve_command(
    agent_session: Annotated[
        str, typer.Option(help="The agent's session id to resume or a name for a new one.")
    ],
    user_id: Annotated[str, typer.Option(help="The user this wrapper works for (fixed).")],
    session_id: Annotated[str, typer.Option(help="The control plane's session id (fixed).")],
    ingest_url: Annotated[
        str, typer.Option(help="ws:// or wss:// URL of the control plane's ingest endpoint.")
    ],
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the bearer token for the job API and ingest: ours, mode 0600 or "
            "stricter, single-use (removed once read). Else --token-fd, else $FSM_AGENT_TOKEN.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    token_fd: Annotated[
        int | None,
        typer.Option(
            help="Inherited descriptor (a pipe) to read the token from, to EOF; closed after.",
            min=0,
            show_default=False,
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(hidden=True, help="Refused: argv is public.")] = None,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT of the job API (port 0 picks a free one).")
    ] = "127.0.0.1:0",
    workdir: Annotated[
        Path, typer.Option(help="The agent's project directory.", file_okay=False)
    ] = Path("."),
    config: ConfigOption = None,
    agent: Annotated[
        str | None,
        typer.Option(
            help=f"The agent server: {AGENT_NAMES} (else the config's [agent] name, else "
            f"{DEFAULT_AGENT})."
        ),
    ] = None,
    agent_bin: Annotated[
        str | None,
        typer.Option(
            *AGENT_BIN_FLAGS,
            help=f"Path of the agent's binary (else {BIN_ENVS}, the project's install, PATH).",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the agent keeps its state, outside the workspace (default "
            "$XDG_STATE_HOME/fsm-agent/SESSION_ID, or ~/.local/state/fsm-agent/SESSION_ID).",
            file_okay=False,
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="Version to announce in hello (testing version pinning).", hidden=True),
    ] = None,
) -> None:
    """Run the wrapper: own an agent server, relay its events to the control plane, serve jobs."""
    from fsm.serve.main import read_token, run_serve

    code = run_serve(
        agent_session=agent_session,
        user_id=user_id,
        session_id=session_id,
        ingest_url=ingest_url,
        token=read_token(token_file=token_file, token_fd=token_fd, argv_value=token),
        listen=listen,
        workdir=workdir,
        config=config,
        agent_bin=agent_bin,
        state_dir=state_dir,
        version=version,
        agent=agent,
    )
    raise typer.Exit(code)


@app.command("control")
def control_command(
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the bearer key clients must present (ours, mode 0600 or "
            "stricter; kept). Else $FSM_AGENT_API_KEY.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(hidden=True, help="Refused: argv is public.")
    ] = None,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT for the API and ingest.")
    ] = "127.0.0.1:8700",
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="The control plane's own state (database, created 0700), never holding a "
            "workspace (default .fsm-agent/control, or beside --db if only --db is given).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    workspaces: Annotated[
        Path | None,
        typer.Option(
            help="Where sessions' workspaces (and, for now, wrapper logs) live (default "
            ".fsm-agent/workspaces; DB_DIR/sessions if only --db is given).",
            file_okay=False,
            show_default=False,
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="SQLite file (created if missing; default STATE_DIR/control.db), or a "
            "PostgreSQL URL/conninfo shared by replicas (postgresql://user@host/db; the "
            "password from a libpq passfile or $PGPASSWORD, never here).",
            show_default=False,
        ),
    ] = None,
    replica_id: Annotated[
        str | None,
        typer.Option(
            help="This replica's name on PostgreSQL (default HOSTNAME-PID).", show_default=False
        ),
    ] = None,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            help="http://HOST:PORT other replicas forward this one's sessions' requests to "
            "(default from --listen).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    base_dir: Annotated[
        Path | None,
        typer.Option(help="Older name of --workspaces.", file_okay=False, show_default=False),
    ] = None,
    agent_bin: Annotated[
        str | None, typer.Option(*AGENT_BIN_FLAGS, help="The agent's binary handed to wrappers.")
    ] = None,
    runtime: Annotated[
        str,
        typer.Option(
            help="Who starts wrappers: 'local' (child process groups), 'docker' (a container "
            "per session through the Docker Engine API; [runtime] in --config) or 'external' "
            "(someone else, with the ingest URL and token returned when a session is created)."
        ),
    ] = "local",
    image: ImageOption = None,
) -> None:
    """Run the control plane: sessions, their wrappers (local runtime), SQLite, REST/SSE API."""
    _check_runtime(runtime, image, ("local", "external", "docker"))
    from fsm.control.main import read_api_key, run_control

    if workspaces is not None and base_dir is not None and workspaces != base_dir:
        typer.echo("error: --base-dir is the older name of --workspaces: give one", err=True)
        raise typer.Exit(2)
    raise typer.Exit(
        run_control(
            listen=listen,
            db=db,
            api_key=read_api_key(api_key_file=api_key_file, argv_value=api_key),
            config=config,
            base_dir=workspaces or base_dir,
            state_dir=state_dir,
            # alias for fsm/sim and fsm/control until they are renamed (issue 17)
            agent_bin=agent_bin,
            runtime=runtime,
            image=image,
            replica_id=replica_id,
            advertise_url=advertise_url,
        )
    )


@app.command("demo")
def demo_command(
    prompt: Annotated[str, typer.Option(help="The prompt to send.")] = (
        "Say hello and tell me what this workspace contains."
    ),
    model_url: Annotated[
        str | None,
        typer.Option(
            envvar="FSM_AGENT_MODEL_URL",
            help="OpenAI-compatible base URL of a real model (else a scripted one).",
        ),
    ] = None,
    model_key: Annotated[
        str | None,
        typer.Option(
            envvar="FSM_AGENT_MODEL_KEY", help="API key for --model-url.", show_default=False
        ),
    ] = None,
    model_name: Annotated[str, typer.Option(help="Model id at --model-url.")] = "gpt-4o-mini",
    agent: Annotated[
        str, typer.Option(help=f"The agent server the wrapper runs: {AGENT_NAMES}.")
    ] = DEFAULT_AGENT,
    agent_bin: Annotated[
        str | None,
        typer.Option(*AGENT_BIN_FLAGS, help="Path of the agent's binary."),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the temporary folder (logs, database).")] = False,
    color: Annotated[
        bool | None, typer.Option(help="Color the timeline (default: when stdout is a terminal).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the outcome.")] = 90.0,
    runtime: Annotated[
        str,
        typer.Option(
            help="'local' (the wrapper as a child process) or 'docker' (in a container of the "
            "wrapper image, built first if missing)."
        ),
    ] = "local",
    image: ImageOption = None,
) -> None:
    """Bring the whole loop up locally (control plane, wrapper, agent, model) and run one prompt."""
    import anyio

    from fsm.demo.run import run_demo

    if bool(model_url) != bool(model_key):
        typer.echo("error: give both --model-url and --model-key, or neither", err=True)
        raise typer.Exit(2)
    if model_url and not model_url.startswith(("http://", "https://")):
        typer.echo(f"error: --model-url: expected an http(s):// URL, got {model_url!r}", err=True)
        raise typer.Exit(2)
    if timeout <= 0:
        typer.echo(
            f"error: --timeout must be a positive number of seconds, got {timeout:g}", err=True
        )
        raise typer.Exit(2)
    _check_runtime(runtime, image, ("local", "docker"))
    if agent not in AGENTS:
        typer.echo(f"error: --agent: {agent!r} is not one of {', '.join(AGENTS)}", err=True)
        raise typer.Exit(2)
    code = anyio.run(
        lambda: run_demo(
            agent=agent,
            prompt=prompt,
            model_url=model_url,
            model_key=model_key,
            model_name=model_name,
            agent_bin=agent_bin,
            keep=keep,
            color=sys.stdout.isatty() if color is None else color,
            timeout=timeout,
            runtime=runtime,
            image=image,
        )
    )
    raise typer.Exit(code)


def main() -> None:
    app()


from fsm.cli.reference import register as _register_docs  # noqa: E402
from fsm.cli.simulate import register as _register_simulate  # noqa: E402

_register_simulate(app)
_register_docs(app)
