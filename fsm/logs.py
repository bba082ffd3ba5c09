"""One JSON object per line on stderr: what hosts log, machine transitions included.

Records of the engine become lines with ``machine``, ``transition`` and ``trigger`` so a timeline
can be rebuilt from a log with ``jq``. Secrets never reach here: hosts pass what to log
explicitly, and nothing logs settings wholesale.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import msgspec

from fsm.engine import Record

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
    """Routes the adapters' stdlib ``logging`` into the same JSON lines, ``extra`` as fields."""

    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        self.log.emit(record.levelname.lower(), record.getMessage(), logger=record.name, **fields)


def capture_stdlib(log: JsonLog, name: str = "fsm_agent", level: int = logging.INFO) -> None:
    """Adapters log through ``logging.getLogger("fsm_agent....")`` to stay host-agnostic; a host
    calls this once so their lines join its own."""
    logger = logging.getLogger(name)
    logger.handlers = [h for h in logger.handlers if not isinstance(h, _ToJson)]
    logger.addHandler(_ToJson(log))
    logger.setLevel(level)
    logger.propagate = False
