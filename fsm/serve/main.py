"""Entry point of ``fsm-agent serve``: validate the command line, then run the host.

The wrapper holds a token that drives its job API and its ingest link, next to an agent that runs
arbitrary code as the same user. So, before the token is read, the process makes itself
undumpable (``fsm.settings.secrets.make_undumpable``: its ``/proc/<pid>/environ`` and ``mem`` become
root's, ptrace is refused); the token never comes from argv; ``FSM_AGENT_TOKEN`` is removed from
the environment once read; Kilo gets an allow-listed environment (``adapters/kilo/process.py``);
and Kilo's state lives outside the workspace by default. As root none of this is a boundary; the
separate container user is.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from adapters.agents.registry import AGENTS, DEFAULT_AGENT
from fsm.hosting.logs import JsonLog
from fsm.serve.settings import ServeSettings, agent_run_as
from fsm.settings.config import ConfigError
from fsm.settings.file import load_config
from fsm.settings.listen import bind_error, bind_error_message, parse_listen, warn_if_exposed
from fsm.settings.secrets import TOKEN_ENV, SecretInputError, make_undumpable, serve_token

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PATH_PART = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
RESERVED_ENV_PREFIX = "FSM_AGENT_"
"""The wrapper's own variables (its token among them): never handed to Kilo."""


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def read_token(*, token_file: Path | None, token_fd: int | None, argv_value: str | None) -> str:
    """Make this process undumpable, then read the token; exit 2 naming the flag if it cannot.

    ``argv_value`` is what a ``--token VALUE`` carried: refused, since argv is public. The token
    file is consumed (removed) as soon as it is read, even if the command line then turns out to
    be wrong: it is single-use.
    """
    make_undumpable()
    try:
        if argv_value is not None:
            raise SecretInputError(
                "--token takes no value on the command line: argv is visible to every local "
                "user (ps, /proc/<pid>/cmdline); use --token-file PATH (0600, single-use), "
                f"--token-fd N or the {TOKEN_ENV} environment variable"
            )
        return serve_token(token_file=token_file, token_fd=token_fd)
    except SecretInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def agent_config(section: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """``[agent] config = {...}`` inline, or ``config_file = "agent.json"`` (relative to the
    file)."""
    merged: dict[str, Any] = {}
    if "config_file" in section:
        base = path.parent if path else Path(".")
        file = base / str(section["config_file"])
        try:
            merged.update(json.loads(file.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: agent.config_file {file}: {exc}") from None
    merged.update(section.get("config", {}))
    return merged


def agent_pass_env(section: dict[str, Any], path: Path | None) -> list[str]:
    """``[agent] pass_env = ["NAME", ...]``: variables of ours the agent may have (provider keys
    its config names with ``{env:NAME}``). Names only, and never one of the wrapper's own."""
    names = section.get("pass_env", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: agent.pass_env must be a list of environment variable names")
    for name in names:
        if not ENV_NAME.match(name):
            raise ConfigError(
                f"{path}: agent.pass_env: {name!r} is not an environment variable name"
            )
        if name.upper().startswith(RESERVED_ENV_PREFIX):
            raise ConfigError(
                f"{path}: agent.pass_env: {name} is the wrapper's own ({RESERVED_ENV_PREFIX}*): "
                "the agent must never hold it"
            )
    return list(names)


def default_state_dir(session_id: str, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/fsm-agent/<session-id>`` (``~/.local/state`` without it): Kilo's state
    (its database of every conversation, its pidfile, its logs) kept out of the workspace, where
    the agent would read and rewrite it as project files. Raises ValueError if the session id
    cannot name a directory."""
    if not PATH_PART.match(session_id) or session_id in (".", ".."):
        raise ValueError(
            f"--session-id {session_id!r} cannot name a state directory; give --state-dir"
        )
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME", "")
    root = (
        Path(base) if os.path.isabs(base) else Path(env.get("HOME") or Path.home()) / ".local/state"
    )
    return root / "fsm-agent" / session_id


def run_serve(
    *,
    agent_session: str,
    user_id: str,
    session_id: str,
    ingest_url: str,
    token: str,
    listen: str,
    workdir: Path,
    config: Path | None,
    agent_bin: str | None,
    state_dir: Path | None,
    version: str | None,
    agent: str | None = None,
) -> int:
    if not ingest_url.startswith(("ws://", "wss://")):
        return usage_error(f"--ingest-url: expected a ws:// or wss:// URL, got {ingest_url!r}")
    if not token:
        return usage_error(f"the token (--token-file, --token-fd or {TOKEN_ENV}) must not be empty")
    for name, value in (
        ("--agent-session", agent_session),
        ("--user-id", user_id),
        ("--session-id", session_id),
    ):
        if not value.strip():
            return usage_error(f"{name} must not be empty")
    try:
        host, port = parse_listen(listen)
        loaded = load_config(config)
        file_settings, values, limits = loaded.file, loaded.timers["wrapper"], loaded.limits
        section = file_settings.agent
        agent_name = agent if agent is not None else section.get("name")
        if agent_name is not None and (not isinstance(agent_name, str) or agent_name not in AGENTS):
            where = "--agent" if agent is not None else f"{config}: agent.name"
            raise ConfigError(f"{where}: {agent_name!r} is not one of {', '.join(AGENTS)}")
        spec = AGENTS[agent_name or DEFAULT_AGENT]
        agent_settings = agent_config(section, config)
        pass_env = agent_pass_env(section, config)
        run_as = agent_run_as(section, config, spec=spec)
        state = state_dir if state_dir is not None else default_state_dir(session_id)
    except (ValueError, ConfigError) as exc:
        return usage_error(str(exc))
    workdir = workdir.resolve()
    if not workdir.is_dir():
        return usage_error(f"--workdir: {workdir} is not a directory")
    state = state.resolve()
    if state == workdir or state.is_relative_to(workdir):
        print(
            f"warning: --state-dir {state} is inside the workspace: the agent reads and writes "
            "Kilo's state (every conversation) as project files",
            file=sys.stderr,
        )
    settings = ServeSettings(
        agent_session=agent_session,
        user_id=user_id,
        session_id=session_id,
        ingest_url=ingest_url,
        token=token,
        listen_host=host,
        listen_port=port,
        workdir=workdir,
        state_dir=state,
        agent=agent_name or DEFAULT_AGENT,
        agent_bin=agent_bin,
        agent_config=agent_settings,
        agent_pass_env=pass_env,
        agent_run_as=run_as,
        outbox_frames=file_settings.outbox.get("max_frames", 1000),
        outbox_bytes=file_settings.outbox.get("max_bytes", 8 * 1024 * 1024),
        version=version,
        limits=limits,
    )
    from fsm.serve.launch import run_wrapper  # spawns Kilo, then imports the host

    log = JsonLog()
    warn_if_exposed(host, log)
    try:
        return anyio.run(run_wrapper, settings, values, log)
    except (OSError, BaseExceptionGroup) as exc:
        failed = bind_error(exc)
        if failed is None:
            raise
        return usage_error(bind_error_message(host, port, failed))
