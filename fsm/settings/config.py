"""Configuration files: timer overrides (and, later, the rest of a host's settings).

One TOML file serves both sides::

    [timers]
    stale_heartbeat = "90s"     # control side
    stream_silence = "2s"       # wrapper side

Each key must name a row of one side's timer table; an unknown key or an unreadable duration is an
error that names the file and the key, never a silently ignored line (a production config that
silently overrode the stale threshold is the bug this design exists to prevent). Values that are
fine alone but not together (a watchdog shorter than the heartbeat it watches, a control-plane
backstop below the wrapper's own cap) are refused too, naming both keys: the relations are
declared in ``fsm/machines/timer_relations.py``.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from fsm.machines import timer_relations
from fsm.machines.timers import TABLES, TimerConfigError, TimerValues


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the field."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def timer_values(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    relations: bool | None = None,
) -> dict[str, TimerValues]:
    """Effective timer values per side, from an optional file and optional extra overrides.

    ``relations`` says whether the values must also satisfy ``fsm.machines.timer_relations``; by
    default
    they must whenever a file is read, which is how every host and command loads timers. Overrides
    alone are a world composed in code (the simulator's scenarios, tests): a backstop scenario
    sets the wrapper's cap above the control plane's backstop on purpose, to model a wrapper whose
    verdict never comes and see the backstop fire. Such a caller passes ``relations=True`` to be
    held to them anyway.
    """
    raw: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        data = read_toml(path)
        source = str(path)
        timers = data.get("timers", {})
        if not isinstance(timers, dict):
            raise ConfigError(f"{path}: [timers] must be a table of name = duration")
        raw.update(timers)
    raw.update(overrides or {})
    per_side: dict[str, dict[str, Any]] = {side: {} for side in TABLES}
    for key, value in raw.items():
        sides = [side for side, table in TABLES.items() if key in table]
        if not sides:
            known = sorted(k for t in TABLES.values() for k in t)
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"{source}: timers.{key} is not a timer{hint} (known: {', '.join(known)})"
            )
        per_side[sides[0]][key] = value
    try:
        values = {side: TABLES[side].resolve(per_side[side]) for side in TABLES}
    except TimerConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    # Each value is fine alone; a watchdog shorter than the heartbeat it watches, or a backstop
    # below the cap it backs, is not (fsm/machines/timer_relations.py). Checked here so every host
    # and
    # command that loads timers refuses such a file, naming both keys.
    if relations or (relations is None and path is not None):
        both = {key: value for side in values.values() for key, value in side.items()}
        broken = timer_relations.problems(both, configured=raw.keys())
        if broken:
            raise ConfigError(f"{source}: " + "; ".join(broken))
    return values
