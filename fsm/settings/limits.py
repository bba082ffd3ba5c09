"""Every bound on what a peer may send, in one table beside the timers.

The agent is untrusted, and a wrapper is only as trustworthy as the agent beside it; a client of
the control plane may be careless or hostile too. So every input has a declared bound, and a bound
exists only as a row of this table: the ingest socket, both HTTP APIs, the store and the
configuration reference (``fsm-agent limits``) all read it from here, and a ``[limits]`` table in
the shared TOML file overrides a row by key (an unknown key or a non-positive value is an error
naming the key, as for timers).

Defaults are ones a real deployment can keep: far above what a well-behaved wrapper or client
does (Kilo's largest captured event is ~40 KiB, a prompt of 256 KiB is a small book) and far
below what would hurt a process (a 1 MiB frame or body costs 1 MiB, never the 200 MB a body could
cost when it was read whole).

Bounds that are part of a wire shape (the length of an id, the range of a sequence number) are
declared with the shape, in ``fsm.wire.protocol`` and ``fsm.wire.request_bodies``, and end up in
the OpenAPI
documents; this table holds the ones an operator may want to move.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from fsm.settings.config import ConfigError, read_toml

KiB = 1024
MiB = 1024 * KiB


class LimitSetting(msgspec.Struct, frozen=True):
    key: str
    default: int
    unit: str
    """``bytes``, ``chars`` or ``count``: how ``fsm-agent limits`` shows the value."""
    side: str
    """``control``, ``wrapper`` or ``both``: who enforces it."""
    doc: str


class LimitConfigError(ValueError):
    """An override that names no limit or is not a positive integer."""


def _l(key: str, default: int, unit: str, side: str, doc: str) -> LimitSetting:
    return LimitSetting(key=key, default=default, unit=unit, side=side, doc=doc)


SETTINGS: tuple[LimitSetting, ...] = (
    # the ingest socket (wrapper → control plane)
    _l("frame_bytes", 1 * MiB, "bytes", "both", "largest ingest frame; larger closes with 1009"),
    _l("frame_depth", 64, "count", "both", "JSON nesting depth of an ingest frame (1008 past it)"),
    _l("pending_per_session", 2, "count", "control", "ingest sockets of one session before hello"),
    _l("pending_total", 1024, "count", "control", "ingest sockets of all sessions before hello"),
    # HTTP (both APIs)
    _l(
        "connections", 16_384, "count", "both", "open connections (HTTP and WebSocket); 503 past it"
    ),
    _l("body_bytes", 1 * MiB, "bytes", "both", "largest HTTP request body, enforced while read"),
    _l("prompt_chars", 256 * KiB, "chars", "both", "longest prompt"),
    _l("attachments", 8, "count", "both", "files sent with one prompt"),
    _l(
        "attachment_chars",
        384 * KiB,
        "chars",
        "both",
        "the data: URLs of one prompt's files together (they travel in one ingest frame)",
    ),
    # the control plane's state
    _l("sessions", 20_000, "count", "control", "live sessions on one control plane"),
    _l("queued_messages", 100, "count", "control", "messages of one session not yet finished"),
    _l(
        "session_events",
        1_000_000,
        "count",
        "control",
        "entries in one session's event log (agent events past it are counted, not stored)",
    ),
    _l("sse_per_session", 16, "count", "control", "concurrent event streams of one session"),
    _l("sse_total", 1024, "count", "control", "concurrent event streams of all sessions"),
)


class LimitValues(Mapping[str, int]):
    """Effective bounds: the table's defaults plus overrides."""

    def __init__(self, values: Mapping[str, int]) -> None:
        self._values = dict(values)
        # Plain attributes too: the ingest socket reads a bound per frame, and an attribute
        # found in the instance costs a tenth of one found through __getattr__.
        self.__dict__.update(self._values)

    def __getitem__(self, key: str) -> int:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(unknown_key_message(key)) from None

    def __getattr__(self, key: str) -> int:
        # ``limits.frame_bytes`` reads better at the many places that check one bound.
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(unknown_key_message(key)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def overridden(self) -> dict[str, int]:
        return {s.key: self._values[s.key] for s in SETTINGS if self._values[s.key] != s.default}


_BY_KEY = {s.key: s for s in SETTINGS}


def unknown_key_message(key: str) -> str:
    near = difflib.get_close_matches(key, _BY_KEY, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"limits.{key} is not a limit{hint} (known: {', '.join(_BY_KEY)})"


def defaults() -> LimitValues:
    return LimitValues({s.key: s.default for s in SETTINGS})


def resolve(overrides: Mapping[str, Any] | None = None) -> LimitValues:
    values = {s.key: s.default for s in SETTINGS}
    for key, raw in (overrides or {}).items():
        if key not in _BY_KEY:
            raise LimitConfigError(unknown_key_message(key))
        if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
            raise LimitConfigError(f"limits.{key} must be a positive integer, got {raw!r}")
        values[key] = raw
    return LimitValues(values)


def limit_values(path: Path | None = None) -> LimitValues:
    """Effective limits from the ``[limits]`` table of a configuration file (if any)."""
    if path is None:
        return defaults()
    table = read_toml(path).get("limits", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [limits] must be a table of name = integer")
    try:
        return resolve(table)
    except LimitConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def format_limit(setting: LimitSetting, value: int) -> str:
    if setting.unit == "bytes":
        for size, suffix in ((MiB, " MiB"), (KiB, " KiB")):
            if value >= size and value % size == 0:
                return f"{value // size}{suffix}"
        return f"{value} B"
    if setting.unit == "chars":
        if value >= KiB and value % KiB == 0:
            return f"{value // KiB}Ki chars"
        return f"{value} chars"
    return f"{value:,}"
