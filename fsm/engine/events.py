"""Events: what the world tells a machine.

An event is a trigger name (as used in the declaration) plus a small payload. Timer expiries are
their own type because they carry the generation token that lets the engine drop an expiry whose
timer was cancelled or re-armed since it was scheduled.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Event(msgspec.Struct, frozen=True):
    trigger: str
    data: dict[str, Any] = {}


class TimerFired(msgspec.Struct, frozen=True):
    timer: str
    token: int


def event(trigger: str, **data: Any) -> Event:
    """``event("heartbeat", active=True)`` reads better than building the struct."""
    return Event(trigger=trigger, data=data)
