"""The one TOML file both sides read: which tables it may hold, and how it is loaded.

The control plane passes its own file to the wrappers it starts, so ``fsm-agent serve`` and
``fsm-agent control`` accept the same tables and refuse the same mistakes (an unknown table or
key is an error naming it, never ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from fsm.machines.timers import TimerValues
from fsm.settings.config import ConfigError, read_toml, timer_values


class FileSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One file serves both sides: the control plane passes its own to the wrappers it starts."""

    timers: dict[str, Any] = {}
    outbox: dict[str, int] = {}
    kilo: dict[str, Any] = {}
    control: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    """The control plane's container runtime (``fsm.settings.runtime``); unused by a wrapper."""


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
