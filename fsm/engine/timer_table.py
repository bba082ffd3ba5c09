"""A timer table: named durations with defaults, read by the engine, overridden by config.

The engine's own vocabulary for durations (``fsm.machines.timers`` holds the project's tables): a
machine names a row by key and the engine runs the effective value, so this module knows
nothing of Kilo, wrappers or sessions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping

import msgspec

from fsm.engine.durations import DurationError, format_duration, parse_duration

__all__ = ["TimerConfigError", "TimerSetting", "TimerTable", "TimerValues"]


class TimerSetting(msgspec.Struct, frozen=True):
    key: str
    default: float
    doc: str


class TimerConfigError(ValueError):
    """An override that names no timer or carries an unreadable duration."""


class TimerValues(Mapping[str, float]):
    """Effective durations in seconds for one side: the table's defaults plus overrides."""

    def __init__(self, table: TimerTable, values: Mapping[str, float]) -> None:
        self.table = table
        self._values = dict(values)

    def __getitem__(self, key: str) -> float:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(self.table.unknown_key_message(key)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def overridden(self) -> dict[str, float]:
        """The values that differ from the defaults, for start-up logs."""
        return {
            s.key: self._values[s.key]
            for s in self.table.settings
            if self._values[s.key] != s.default
        }

    def label(self, key: str) -> str:
        return format_duration(self[key])


class TimerTable:
    """One side's timer table: the only place a default duration is written."""

    def __init__(self, side: str, settings: tuple[TimerSetting, ...]) -> None:
        self.side = side
        self.settings = settings
        self._by_key = {s.key: s for s in settings}
        if len(self._by_key) != len(settings):
            raise ValueError(f"timer table {side!r} has duplicate keys")

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def setting(self, key: str) -> TimerSetting:
        try:
            return self._by_key[key]
        except KeyError:
            raise KeyError(self.unknown_key_message(key)) from None

    def unknown_key_message(self, key: str) -> str:
        near = difflib.get_close_matches(key, self._by_key, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"unknown {self.side} timer {key!r}{hint} (known: {', '.join(self._by_key)})"

    def defaults(self) -> TimerValues:
        return TimerValues(self, {s.key: s.default for s in self.settings})

    def resolve(self, overrides: Mapping[str, str | int | float] | None = None) -> TimerValues:
        values = {s.key: s.default for s in self.settings}
        for key, raw in (overrides or {}).items():
            if key not in self._by_key:
                raise TimerConfigError(self.unknown_key_message(key))
            try:
                seconds = parse_duration(raw)
            except DurationError as exc:
                raise TimerConfigError(f"{self.side} timer {key!r}: {exc}") from None
            if seconds <= 0:
                raise TimerConfigError(f"{self.side} timer {key!r} must be positive, got {raw!r}")
            values[key] = seconds
        return TimerValues(self, values)
