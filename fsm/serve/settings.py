"""Settings of ``fsm-agent serve``: identity from flags, everything else from one TOML file.

Identity (``--agent-session``, ``--user-id``, ``--session-id``) is fixed for the life of the
process; per-execution settings arrive with each prompt. The config file holds timer overrides
(``[timers]``), the outbox bounds (``[outbox]``) and Kilo's own configuration (``[kilo.config]``,
passed verbatim as ``KILO_CONFIG_CONTENT``: providers, models, permissions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from fsm.config import ConfigError, read_toml, timer_values
from fsm.timers import TimerValues


class ServeSettings(msgspec.Struct, kw_only=True):
    agent_session: str
    user_id: str
    session_id: str
    ingest_url: str
    token: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    workdir: Path
    state_dir: Path
    kilo_bin: str | None = None
    kilo_config: dict[str, Any] = msgspec.field(default_factory=dict)
    outbox_frames: int = 1000
    outbox_bytes: int = 8 * 1024 * 1024
    flush_bound: float = 3.0
    version: str | None = None
    wrapper_id: str | None = None


class FileSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One file serves both sides: the control plane passes its own to the wrappers it starts."""

    timers: dict[str, Any] = {}
    outbox: dict[str, int] = {}
    kilo: dict[str, Any] = {}
    control: dict[str, Any] = {}


def load_file(path: Path | None) -> tuple[FileSettings, TimerValues]:
    if path is None:
        return FileSettings(), timer_values()["wrapper"]
    data = read_toml(path)
    try:
        file_settings = msgspec.convert(data, FileSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(file_settings.outbox) - {"max_frames", "max_bytes"}
    if unknown:
        raise ConfigError(
            f"{path}: outbox.{sorted(unknown)[0]} is not a setting (known: max_frames, max_bytes)"
        )
    return file_settings, timer_values(path)["wrapper"]


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen: expected HOST:PORT (e.g. 127.0.0.1:8080), got {value!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen: port {number} is out of range 0-65535")
    return host.strip("[]"), number
