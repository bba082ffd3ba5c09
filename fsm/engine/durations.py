"""Durations as people write them (``90s``, ``5m``, ``1h30m``, ``250ms``) and back.

Timer tables, configuration files and scenario files all carry durations; parsing them in one
place keeps every error message the same and every diagram label the same.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


class DurationError(ValueError):
    """A duration string that cannot be read; the message says what is accepted."""


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``"90s"``, ``"5m"``, ``"1h30m"``, ``"250ms"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise DurationError(f"expected a duration like '90s' or '5m', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().replace(" ", "")
        if not text:
            raise DurationError("expected a duration like '90s' or '5m', got an empty string")
        if text.startswith("-") and _readable(text[1:]):
            # "-5s" is a negative duration, not an unreadable one: say the same as for -5.
            raise DurationError(f"a duration cannot be negative, got {value!r}")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or pos == 0:
                raise DurationError(
                    f"expected a duration like '90s', '5m', '1h30m' or '250ms', got {value!r}"
                ) from None
    if seconds < 0:
        raise DurationError(f"a duration cannot be negative, got {value!r}")
    return seconds


def _readable(text: str) -> bool:
    """Whether ``text`` (no sign) reads as a duration: tells "-5s" (negative) from "-x" (junk)."""
    try:
        parse_duration(text)
    except DurationError:
        return False
    return True


def format_duration(seconds: float) -> str:
    """The shortest exact label for a duration, as diagrams and tables show it."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms"
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9:
        return f"{seconds:g}s"
    # Read as people say them: "90s", "5m", "120m", "3h"; odd values spelled out in full.
    if whole < 120:
        return f"{whole}s"
    if whole % 60 == 0 and whole < 3 * 3600:
        return f"{whole // 60}m"
    if whole % 3600 == 0:
        return f"{whole // 3600}h"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            count, whole = divmod(whole, size)
            parts.append(f"{count}{unit}")
    return "".join(parts)
