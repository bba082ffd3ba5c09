"""One JSON object per line on stderr: what hosts log, machine transitions included.

Records of the engine become lines with ``machine``, ``transition`` and ``trigger`` so a timeline
can be rebuilt from a log with ``jq``. Secrets never reach here: hosts pass what to log
explicitly, and nothing logs settings wholesale.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import msgspec

from fsm.engine.machine import Record

_encoder = msgspec.json.Encoder()


class JsonLog:
    def __init__(self, stream: TextIO | None = None, *, debug: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.debug_enabled = debug

    def emit(self, level: str, message: str, **fields: Any) -> None:
        line = {"time": round(time.time(), 3), "level": level, "message": message, **fields}
        try:
            self.stream.write(_encoder.encode(line).decode() + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must never take the wrapper down

    def info(self, message: str, **fields: Any) -> None:
        self.emit("info", message, **fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.emit("warning", message, **fields)

    def error(self, message: str, **fields: Any) -> None:
        self.emit("error", message, **fields)

    def record(self, rec: Record) -> None:
        if rec.kind == "internal" and not self.debug_enabled:
            return
        level = "warning" if rec.kind in ("fault", "timer_dropped") else "info"
        if rec.kind == "ignored":
            level = "debug"
            if not self.debug_enabled:
                return
        self.emit(
            level,
            rec.kind,
            machine=rec.machine,
            id=rec.machine_id,
            transition=f"{rec.source} -> {rec.dest}",
            trigger=rec.trigger,
            effects=list(rec.effects),
            at=round(rec.at, 3),
            **({"reason": rec.reason} if rec.reason else {}),
        )


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class _ToJson(logging.Handler):
    """Routes the adapters' stdlib ``logging`` into the same JSON lines, ``extra`` as fields.

    With ``fold_every`` identical records (same logger, level and text) are folded: the first one
    is written, the next ones are only counted, and the first one after ``fold_every`` seconds is
    written with ``repeated`` = how many were folded since the previous line. A library that logs
    once per failed write (asyncio, after a SIGSTOP of the control plane: 106 lines of
    ``socket.send() raised exception.``) then costs a line per window, and the count still says
    how bad it was. Counts still pending when the handler is closed (``logging.shutdown`` at exit,
    or a host replacing it) are written then, so a burst that ends is never silently dropped.
    """

    MAX_FOLDED = 256
    """Distinct texts remembered at once; past it the oldest is forgotten (its count written
    first), so a library logging ever-new texts cannot grow the table without bound."""

    def __init__(
        self,
        log: JsonLog,
        *,
        fold_every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.log = log
        self.fold_every = fold_every
        self.clock = clock
        self._folded: dict[tuple[str, int, str], _Fold] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        repeated = 0
        if self.fold_every is not None:
            key = (record.name, record.levelno, message)
            now = self.clock()
            fold = self._folded.get(key)
            if fold is not None and now - fold.since < self.fold_every:
                fold.count += 1
                return
            if fold is not None:
                repeated = fold.count  # written on this line
                del self._folded[key]
            self._forget_settled(now)
            self._folded[key] = _Fold(since=now, record=record)
        self._write(record, message, repeated)

    def _write(self, record: logging.LogRecord, message: str, repeated: int) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        if repeated:
            fields["repeated"] = repeated
        self.log.emit(record.levelname.lower(), message, logger=record.name, **fields)

    def _forget_settled(self, now: float) -> None:
        """Writes the counts whose window is over (a burst that stopped is reported by the next
        line of any text) and keeps the table within ``MAX_FOLDED``."""
        if self.fold_every is None:
            return
        for key, fold in list(self._folded.items()):
            if now - fold.since >= self.fold_every:
                self._flush_one(key, fold)
        while len(self._folded) >= self.MAX_FOLDED:  # all still inside their window
            key, fold = next(iter(self._folded.items()))
            self._flush_one(key, fold)

    def _flush_one(self, key: tuple[str, int, str], fold: _Fold) -> None:
        del self._folded[key]
        if fold.count:
            self._write(fold.record, key[2], fold.count)

    def flush(self) -> None:
        """Writes the folded counts whose window is over; a host may call it periodically."""
        with self.lock or contextlib.nullcontext():
            self._forget_settled(self.clock())

    def close(self) -> None:
        """Writes every folded count still pending (``logging.shutdown`` calls it at exit)."""
        with self.lock or contextlib.nullcontext():
            for key, fold in list(self._folded.items()):
                self._flush_one(key, fold)
        super().close()


class _Fold:
    __slots__ = ("count", "record", "since")

    def __init__(self, since: float, record: logging.LogRecord) -> None:
        self.since = since
        self.record = record
        self.count = 0


def capture_stdlib(
    log: JsonLog,
    name: str = "fsm_agent",
    level: int = logging.INFO,
    *,
    fold_every: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Adapters log through ``logging.getLogger("fsm_agent....")`` to stay host-agnostic; a host
    calls this once so their lines join its own. ``fold_every`` folds identical records (see
    ``_ToJson``); calling it again replaces the previous handler (its pending counts written)."""
    logger = logging.getLogger(name)
    for old in [h for h in logger.handlers if isinstance(h, _ToJson)]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(_ToJson(log, fold_every=fold_every, clock=clock))
    logger.setLevel(level)
    logger.propagate = False


ASYNCIO_FOLD_EVERY = 60.0
"""Seconds between two lines of one repeated asyncio message (the count of the rest rides on
the second)."""


def capture_asyncio(
    log: JsonLog, *, every: float = ASYNCIO_FOLD_EVERY, clock: Callable[[], float] = time.monotonic
) -> None:
    """asyncio's own logger into the JSON log, identical messages folded.

    Without a handler asyncio's warnings reach ``logging``'s last-resort handler and are printed
    as plain text on stderr, between the JSON lines, once per event: a transport written to after
    its peer vanished logs ``socket.send() raised exception.`` on every write (106 lines after a
    SIGSTOP/SIGCONT of the control plane). Hosts call this once, next to ``capture_stdlib``.
    """
    capture_stdlib(log, "asyncio", logging.WARNING, fold_every=every, clock=clock)
