"""The value checks every store write runs before any SQL: one refusal, worded the same, whichever
database is behind the store port.

Each raises ``InvalidValueError`` naming the operation (``what`` names the session too) and the
field; the messages never quote a string's content (a prompt may be long or private, a "hash" may
be a token), only what is wrong with it. Both databases hold signed 64-bit integers, UTF-8 text
and finite times the same way, so the bounds are shared; what only one database refuses (a NUL
character in PostgreSQL text) is the ``nul`` switch of ``check_text``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from adapters.store.rows import (
    INT64_MAX,
    INT64_MIN,
    DuplicateEventError,
    EventOrderError,
    InvalidValueError,
)

_TOKEN_HASH = re.compile(r"[0-9a-f]{64}")


def invalid(what: str, field: str, problem: str) -> InvalidValueError:
    return InvalidValueError(f"could not {what}: {field} {problem}; nothing of it was written")


def quote(value: object) -> str:
    """An id as error messages show it: ``repr`` for a sane one, never a huge or failing one."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 100 else f"{value[:100]!r}… ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool):
        return show_int(value)
    return f"<a {type(value).__name__}>"


def show_int(value: int) -> str:
    # repr() of an int of more than 4300 digits raises ValueError itself.
    return str(value) if value.bit_length() <= 256 else f"a {value.bit_length()}-bit integer"


def check_text(
    what: str, field: str, value: object, *, optional: bool = False, nul: bool = True
) -> None:
    """A string with a UTF-8 form; ``nul=False`` also refuses U+0000, which PostgreSQL text
    cannot hold (SQLite can)."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise invalid(what, field, f"must be a string, not {type(value).__name__}")
    if not nul and "\x00" in value:
        raise invalid(
            what,
            field,
            f"has a NUL character (character {value.index(chr(0))}), which PostgreSQL text "
            "cannot hold",
        )
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(
            what,
            field,
            f"has no UTF-8 form: character {exc.start} is a lone surrogate {value[exc.start]!a}",
        ) from exc


def check_int(what: str, field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(what, field, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        bounds = "the signed 64-bit range" if high == INT64_MAX else f"{low}..{high}"
        raise invalid(what, field, f"= {show_int(value)} is outside {bounds} ({low}..{high})")


def check_time(what: str, field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(what, field, f"must be a number of seconds, not {type(value).__name__}")
    if isinstance(value, int):
        check_int(what, field, value, INT64_MIN, INT64_MAX)
    elif not math.isfinite(value):
        raise invalid(what, field, f"= {value} is not a finite time")


def check_blob(what: str, field: str, value: object) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise invalid(what, field, f"must be bytes, not {type(value).__name__}")


def check_token_hash(what: str, value: object) -> None:
    if not isinstance(value, str) or _TOKEN_HASH.fullmatch(value) is None:
        got = f"a {len(value)}-character string" if isinstance(value, str) else type(value).__name__
        raise invalid(
            what,
            "token_hash",
            f"must be hash_token(token), 64 hex digits 0-9a-f, never the token; got {got}",
        )


def json_text(what: str, field: str, data: object) -> str:
    """JSON bytes as the text a JSON column is given; whether it is JSON is the schema's call
    (SQLite's json_valid() CHECK, PostgreSQL's json type), the one every writer meets."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise invalid(what, field, f"must be JSON bytes, not {type(data).__name__}")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(what, field, f"is not UTF-8 JSON ({exc})") from exc


def event_order_error(
    what: str, ids: Sequence[int], index: int, last: int, is_stored: Callable[[int], bool]
) -> EventOrderError:
    """Why ``ids[index]`` cannot be appended after ``last`` (the session's last stored id): the
    one wording of both stores. ``is_stored`` asks the store, only when the batch itself does
    not already say why."""
    event_id = ids[index]
    tail = "; nothing of the batch was written"
    if event_id <= 0:
        return EventOrderError(f"could not {what}: event id {event_id} < 1 (ids start at 1){tail}")
    if index > 0 and ids[index - 1] == event_id:
        return DuplicateEventError(f"could not {what}: event id {event_id} appears twice{tail}")
    if index > 0 and event_id < ids[index - 1]:
        return EventOrderError(
            f"could not {what}: event id {event_id} comes after {ids[index - 1]} "
            f"in the batch; ids must strictly increase{tail}"
        )
    if is_stored(event_id):
        return DuplicateEventError(
            f"could not {what}: event id {event_id} is already stored "
            f"(last stored id is {last}){tail}"
        )
    return EventOrderError(
        f"could not {what}: event id {event_id} is not after the last stored id {last}; "
        f"the log is append-only{tail}"
    )
