"""Entry point of ``fsm-agent serve``: validate the command line, then run the host."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio

from fsm.config import ConfigError
from fsm.logs import JsonLog
from fsm.serve.settings import ServeSettings, load_file, parse_listen


def usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def kilo_config(section: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """``[kilo] config = {...}`` inline, or ``config_file = "kilo.json"`` (relative to the file)."""
    merged: dict[str, Any] = {}
    if "config_file" in section:
        base = path.parent if path else Path(".")
        file = base / str(section["config_file"])
        try:
            merged.update(json.loads(file.read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: kilo.config_file {file}: {exc}") from None
    merged.update(section.get("config", {}))
    return merged


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
    kilo_bin: str | None,
    state_dir: Path | None,
    version: str | None,
) -> int:
    if not ingest_url.startswith(("ws://", "wss://")):
        return usage_error(f"--ingest-url: expected a ws:// or wss:// URL, got {ingest_url!r}")
    if not token:
        return usage_error("--token (or FSM_AGENT_TOKEN) must not be empty")
    for name, value in (
        ("--agent-session", agent_session),
        ("--user-id", user_id),
        ("--session-id", session_id),
    ):
        if not value.strip():
            return usage_error(f"{name} must not be empty")
    try:
        host, port = parse_listen(listen)
        file_settings, values = load_file(config)
        kilo = kilo_config(file_settings.kilo, config)
    except (ValueError, ConfigError) as exc:
        return usage_error(str(exc))
    workdir = workdir.resolve()
    if not workdir.is_dir():
        return usage_error(f"--workdir: {workdir} is not a directory")
    settings = ServeSettings(
        agent_session=agent_session,
        user_id=user_id,
        session_id=session_id,
        ingest_url=ingest_url,
        token=token,
        listen_host=host,
        listen_port=port,
        workdir=workdir,
        state_dir=(state_dir or workdir / ".fsm-agent" / "kilo-state").resolve(),
        kilo_bin=kilo_bin,
        kilo_config=kilo,
        outbox_frames=file_settings.outbox.get("max_frames", 1000),
        outbox_bytes=file_settings.outbox.get("max_bytes", 8 * 1024 * 1024),
        version=version,
    )
    from fsm.serve.host import WrapperHost

    host_ = WrapperHost(settings, values, JsonLog())
    return anyio.run(host_.run)
