"""Entry point of ``fsm-agent control``: validate the command line, then run the host.

Layout on disk. The control plane's own state (the database that holds every session's token)
lives in a state directory created 0700, ``.fsm-agent/control`` by default; sessions' workspaces
live elsewhere, ``.fsm-agent/workspaces`` by default, so no workspace is inside the state
directory and nothing under a workspace is the control plane's. Given only ``--db`` (the older
form), the workspaces stay beside it in ``DB_DIR/sessions``, as before.

This separates the trees; it is not a boundary. Under one uid an agent can read any file the
control plane can (``../../../control/control.db`` is one path away). The boundary is running the
agent as another user in its container (issue 14); until then, this layout only keeps the
database out of the tree the agent is told is its own.

PostgreSQL (``--db postgresql://…`` or any libpq conninfo with ``host=``/``dbname=``): the
store is shared with other replicas (``fsm.control.replicas``); ``--replica-id`` names this
one (default ``HOSTNAME-PID``). The database password never comes from argv either: a DSN that
carries one is refused (exit 2); libpq reads it from a password file (``passfile=`` in the DSN,
``PGPASSFILE``, ``~/.pgpass``), or from ``PGPASSWORD``, which is removed from the environment
once read so no wrapper or agent inherits it.

The API key never comes from argv: ``--api-key-file`` or ``FSM_AGENT_API_KEY``, which is removed
from the environment once read (``fsm.settings.secrets``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Literal

import anyio

from adapters.store.rows import StoreError
from fsm.control.api import build_app
from fsm.control.host import ControlHost, ControlSettings
from fsm.control.replicas import route
from fsm.hosting.logs import JsonLog
from fsm.settings.config import ConfigError
from fsm.settings.file import load_config
from fsm.settings.listen import bind_error, bind_error_message, parse_listen, warn_if_exposed
from fsm.settings.runtime import RuntimeSettings
from fsm.settings.secrets import API_KEY_ENV, SecretInputError, control_api_key

DEFAULT_STATE_DIR = Path(".fsm-agent/control")
DEFAULT_WORKSPACES = Path(".fsm-agent/workspaces")
DB_NAME = "control.db"
RUNTIMES: dict[str, Literal["local", "external", "docker"]] = {
    "local": "local",
    "external": "external",
    "docker": "docker",
}


def read_api_key(*, api_key_file: Path | None, argv_value: str | None) -> str:
    """The API key from ``--api-key-file`` or ``FSM_AGENT_API_KEY``; exit 2 naming the flag.

    ``argv_value`` is what an ``--api-key VALUE`` carried: refused, since argv is public.
    """
    try:
        if argv_value is not None:
            raise SecretInputError(
                "--api-key takes no value on the command line: argv is visible to every local "
                f"user (ps, /proc/<pid>/cmdline); use --api-key-file PATH (0600) or the "
                f"{API_KEY_ENV} environment variable"
            )
        return control_api_key(api_key_file=api_key_file)
    except SecretInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


PASSWORD_ENV = "PGPASSWORD"


def is_postgres(db: str | Path | None) -> bool:
    """Whether ``--db`` names a PostgreSQL database (a URL or a libpq conninfo), not a file."""
    if db is None or isinstance(db, Path):
        return False
    text = db.strip()
    return text.startswith(("postgresql://", "postgres://")) or bool(
        re.match(r"^\s*(host|hostaddr|dbname|service|port|user)\s*=", text)
    )


def postgres_dsn(db: str) -> str:
    """The DSN to connect with: ``db`` as given (never with a password: ValueError saying
    how to give one), plus ``PGPASSWORD``'s value, taken out of the environment."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(db)
    except ProgrammingError as exc:
        raise ValueError(
            f"--db is not a valid PostgreSQL DSN: {str(exc).splitlines()[0]}"
        ) from None
    if params.get("password"):
        raise ValueError(
            "--db must not carry the database password: argv is visible to every local user "
            "(ps, /proc/<pid>/cmdline); put it in a libpq password file (passfile=PATH in the "
            f"DSN, PGPASSFILE or ~/.pgpass, mode 0600) or in the {PASSWORD_ENV} environment "
            "variable (removed once read)"
        )
    password = os.environ.pop(PASSWORD_ENV, None)
    return make_conninfo(db, password=password) if password else db


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def layout(
    *, db: Path | None, state_dir: Path | None, workspaces: Path | None
) -> tuple[Path, Path, Path]:
    """``(state_dir, db, workspaces)``, resolved, from what was given (see the module docstring).

    Raises ValueError when a workspace would be inside the state directory (or the reverse).
    """
    if db is not None and state_dir is None and workspaces is None:
        db = db.resolve()
        return db.parent, db, db.parent / "sessions"  # the older layout, as it was
    state = (state_dir or DEFAULT_STATE_DIR).resolve()
    db = (db or state / DB_NAME).resolve()
    spaces = (workspaces or DEFAULT_WORKSPACES).resolve()
    if spaces == state or spaces.is_relative_to(state):
        raise ValueError(
            f"--workspaces {spaces} is inside --state-dir {state}: an agent's workspace would hold "
            "the control plane's state"
        )
    if state.is_relative_to(spaces):
        raise ValueError(
            f"--state-dir {state} is inside --workspaces {spaces}: the control plane's state "
            "would sit among the agents' workspaces"
        )
    return state, db, spaces


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) with the leaf 0700 if it is missing: the database holds
    every session's token. An existing directory is left as the operator made it."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def docker_settings(settings: RuntimeSettings, image: str | None) -> RuntimeSettings:
    """``[runtime]`` with the image to use, once the daemon is known to answer.

    ``RuntimeError`` saying what is missing: no daemon at the socket, or no image given and none
    could be built (``just image`` builds the project's, as ``adapters/runtime/image.py`` does
    here when neither ``--image`` nor ``[runtime] image`` names one).
    """
    import msgspec

    from adapters.runtime.docker_api import DockerError, check_daemon

    try:
        check_daemon(settings.socket)
    except DockerError as exc:
        raise RuntimeError(f"--runtime docker: {exc}") from None
    chosen = image or settings.image
    if not chosen:
        from adapters.runtime.image import ensure_image

        try:
            chosen = ensure_image()
        except Exception as exc:
            raise RuntimeError(
                f"--runtime docker: no image given (--image or [runtime] image) and building "
                f"the project's failed: {exc}"
            ) from None
    return msgspec.structs.replace(settings, image=chosen)


def run_control(
    *,
    listen: str,
    db: Path | str | None,
    api_key: str,
    config: Path | None,
    base_dir: Path | None,
    agent_bin: str | None,
    runtime: str = "local",
    state_dir: Path | None = None,
    image: str | None = None,
    replica_id: str | None = None,
    advertise_url: str | None = None,
) -> int:
    """``base_dir`` is where workspaces go (``--workspaces``/``--base-dir``); ``image`` is the
    wrapper image of ``runtime="docker"`` (else ``[runtime] image``, else the project's own)."""
    if not api_key:
        print(
            f"error: the API key (--api-key-file or {API_KEY_ENV}) must not be empty",
            file=sys.stderr,
        )
        return 2
    db_url: str | None = None
    try:
        if is_postgres(db):
            assert isinstance(db, str)
            db_url, db = postgres_dsn(db), None
        elif replica_id is not None or advertise_url is not None:
            raise ValueError("--replica-id and --advertise-url need --db postgresql://…")
        elif isinstance(db, str):
            db = Path(db)
        if replica_id is not None and not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", replica_id):
            raise ValueError(
                f"--replica-id must be 1-100 letters, digits or . _ : - (got {replica_id[:40]!r})"
            )
        if advertise_url is not None and not re.fullmatch(r"https?://[^\s/]+/?", advertise_url):
            raise ValueError(
                f"--advertise-url must be http(s)://HOST:PORT (got {advertise_url[:60]!r})"
            )
        host, port = parse_listen(listen)
        loaded = load_config(config)  # the same file is handed to wrappers: checked here, whole
        values = loaded.timers["control"]
        limits = loaded.limits
        containers = loaded.runtime
        state, db, workspaces = layout(db=db, state_dir=state_dir, workspaces=base_dir)
        if runtime == "docker":
            if sys.stderr.isatty():  # progress on a terminal only: a first build takes minutes
                print("checking dockerd and the wrapper image…", file=sys.stderr, flush=True)
            containers = docker_settings(containers, image)
    except (ValueError, ConfigError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        make_private_dir(state)
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: --state-dir {state}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    settings = ControlSettings(
        db=db,
        api_key=api_key,
        listen_host=host,
        listen_port=port,
        base_dir=workspaces,
        config=config.resolve() if config else None,
        agent_bin=agent_bin,
        runtime="external"
        if runtime == "external"
        else "docker"
        if runtime == "docker"
        else "local",
        runtime_settings=containers,
        limits=limits,
        db_url=db_url,
        replica_id=replica_id or default_replica_id(),
        advertise_url=advertise_url.rstrip("/") if advertise_url else None,
        # The older --db-only layout keeps the workspaces inside the db's folder: then the
        # runtime's files stay beside the workspaces, as they were.
        state_dir=None if workspaces.is_relative_to(state) else state,
    )
    log = JsonLog()
    warn_if_exposed(host, log)
    control = ControlHost(settings, values, log)

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        control.request_stop()
                        return

            tg.start_soon(on_signals)
            await control.run(lambda h: route(h, build_app(h)))
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    except (OSError, StoreError, BaseExceptionGroup) as exc:
        unavailable = _store_error(exc)
        if unavailable is not None:  # the database cannot be reached or is too new
            print(f"error: {unavailable}", file=sys.stderr)
            return 2
        failed = bind_error(exc)
        if failed is None:
            raise
        print(f"error: {bind_error_message(host, port, failed)}", file=sys.stderr)
        return 2
    return 0


def _store_error(exc: BaseException) -> StoreError | None:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _store_error(inner)
            if found is not None:
                return found
    return None
