"""Progress lines for the steps of a command that take more than a second.

A person at a terminal who sees nothing for five seconds thinks the command hung; a log file or
a test's captured output wants only the result. So progress goes to stderr, and only when stderr
is a terminal: ``starting control plane…``, ``starting wrapper and Kilo (about 5 s)…``,
``Kilo ready``. Each line says what is being waited for, so a step that never ends is named.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``step(text)`` writes ``text`` with the time since start, when enabled.

    ``enabled`` defaults to whether ``stream`` (stderr) is a terminal."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self.start = time.monotonic()
        self.shown: list[str] = []

    def step(self, text: str) -> None:
        if not self.enabled:
            return
        self.shown.append(text)
        try:
            self.stream.write(f"[{time.monotonic() - self.start:5.1f}s] {text}\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not stop the demo
