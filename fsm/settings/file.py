"""The one TOML file both sides read: which tables it may hold, and how it is loaded.

The control plane passes its own file to the wrappers it starts, so ``fsm-agent serve`` and
``fsm-agent control`` accept the same tables and refuse the same mistakes (an unknown table or
key is an error naming it, never ignored). Every command that takes ``--config`` (``timers``,
``graph``, ``limits``, ``openapi``, ``control``, ``serve``) loads it through ``load_config``, so a
``[timerz]`` that ``control`` refuses is refused by ``timers`` too, with the same message: a
command that printed the defaults for a typo'd file would tell the operator their overrides hold.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any

import msgspec

from adapters.agents.registry import config_aliases
from fsm.machines.timers import TimerValues
from fsm.settings.config import ConfigError, read_toml, timer_values
from fsm.settings.limits import LimitValues, limit_values
from fsm.settings.runtime import RuntimeSettings, runtime_settings

OUTBOX_KEYS = ("max_frames", "max_bytes")
AGENT_KEYS = ("name", "config", "config_file", "pass_env", "user", "state_dir", "config_home")
"""``[agent]``: which agent server the wrapper runs (``name``, a key of
``adapters.agents.registry.AGENTS``) and what it reads of it (``fsm.serve.main``: config,
config_file, pass_env; ``fsm.serve.settings.agent_run_as``: user, state_dir, config_home). A
misspelt ``confg_file`` would otherwise leave the agent on its default model without a word. An
agent may declare older names of this table (``AgentSpec.config_aliases``): they are read as
``[agent]`` with a one-line warning, ``[agent]`` winning where both say."""
CONTROL_KEYS: tuple[str, ...] = ()
"""``[control]`` is reserved: no key of it is read yet, so any key is a mistake."""


class FileSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One file serves both sides: the control plane passes its own to the wrappers it starts."""

    timers: dict[str, Any] = {}
    outbox: dict[str, int] = {}
    agent: dict[str, Any] = {}
    control: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    """The control plane's container runtime (``fsm.settings.runtime``); unused by a wrapper."""


TABLES = FileSettings.__struct_fields__
"""The tables a file may hold, derived from the struct (one list)."""


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """A configuration file, read and checked whole: every table's effective values."""

    path: Path | None
    file: FileSettings
    timers: dict[str, TimerValues]
    """Per side (``control``, ``wrapper``, ``supervisor``), overrides applied and relations held."""
    limits: LimitValues
    runtime: RuntimeSettings


_warned: set[tuple[Path, str]] = set()


def agent_table(path: Path | None, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each deprecated alias table of ``[agent]`` folded into ``[agent]`` (which
    wins key by key), warning once per file and alias on stderr; ``ConfigError`` when an alias is
    not a table. What both the wrapper and the runtimes that read the file see as ``[agent]``."""
    out = dict(data)
    for alias in config_aliases():
        if alias not in out:
            continue
        table = out.pop(alias)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{alias}] must be a table (it is [agent]'s older name)")
        _check_keys(path, alias, table, AGENT_KEYS)
        if (key := (path or Path("-"), alias)) not in _warned:
            _warned.add(key)
            print(
                f"warning: {path}: [{alias}] is deprecated, write [agent] (same keys)",
                file=sys.stderr,
            )
        agent = out.get("agent", {})
        out["agent"] = {**table, **agent} if isinstance(agent, dict) else agent
    return out


def _file_settings(path: Path, data: dict[str, Any]) -> FileSettings:
    data = agent_table(path, data)
    for table in data:
        if table not in TABLES:
            near = difflib.get_close_matches(table, TABLES, n=1)
            hint = f"; did you mean [{near[0]}]?" if near else ""
            raise ConfigError(
                f"{path}: [{table}] is not a table of this file{hint} (known: "
                f"{', '.join(f'[{t}]' for t in TABLES)})"
            )
    try:
        settings = msgspec.convert(data, FileSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    for table, known in (
        ("outbox", OUTBOX_KEYS),
        ("agent", AGENT_KEYS),
        ("control", CONTROL_KEYS),
    ):
        _check_keys(path, table, getattr(settings, table), known)
    return settings


def _check_keys(
    path: Path | None, table: str, values: dict[str, Any], known: tuple[str, ...]
) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        near = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"{path}: {table}.{unknown[0]} is not a setting{hint} (known: "
            f"{', '.join(known) or 'none yet'})"
        )


def load_config(path: Path | None) -> Config:
    """Read ``path`` (defaults without one) and check every table; ``ConfigError`` naming the
    file and the first bad table or key otherwise (a missing file is one too)."""
    if path is None:
        return Config(
            path=None,
            file=FileSettings(),
            timers=timer_values(),
            limits=limit_values(),
            runtime=runtime_settings(),
        )
    settings = _file_settings(path, read_toml(path))
    return Config(
        path=path,
        file=settings,
        timers=timer_values(path),
        limits=limit_values(path),
        runtime=runtime_settings(path),
    )


def load_file(path: Path | None) -> tuple[FileSettings, TimerValues]:
    """The wrapper's view of ``load_config``: its tables and its timers."""
    config = load_config(path)
    return config.file, config.timers["wrapper"]
