"""The one effect both sides share: frames to send on the ingest socket.

Each side's sans-I/O core asks its host to write frames through it (the wrapper towards the
control plane, the control plane towards the wrapper), so it lives with the wire, not in either
core.
"""

from __future__ import annotations

from fsm.engine.effects import Effect
from fsm.wire.protocol import Frame


class Transmit(Effect, frozen=True):
    """Send these frames on the ingest socket, in order, now."""

    frames: list[Frame]
