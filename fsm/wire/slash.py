"""Which prompts are slash commands, and what Kilo is asked to do with each (acceptance 6).

A message whose text is ``/name`` or ``/name arguments`` (a lower-case name: ``/usr/bin`` is a
path, not a command) runs as a command: ``/compact`` compacts the conversation (Kilo's
``POST /session/{id}/summarize``), any other name is Kilo's ``POST /session/{id}/command`` —
Kilo knows its commands (``compact``, ``init``, ``review``, … and the project's own) and
answers an unknown one with its own error, which the message then carries. Both are
synchronous in Kilo; the turn still ends from Kilo's events like any other.

Messages sent after a command wait for it to end before they are handed to Kilo (the turn state
``behind``): two requests in flight at once could reach Kilo in either order.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

_SLASH = re.compile(r"/([a-z][a-z0-9_-]{0,63})(?:\s+(.*))?", re.DOTALL)
SUMMARIZE = "compact"
"""The one command that is Kilo's summarize call rather than a command template."""


class SlashCommand(NamedTuple):
    name: str
    arguments: str
    call: Literal["summarize", "command"]


def parse_slash(text: str) -> SlashCommand | None:
    """The command ``text`` names, or None if it is an ordinary prompt."""
    match = _SLASH.fullmatch(text.strip())
    if match is None:
        return None
    name, arguments = match.group(1), (match.group(2) or "").strip()
    return SlashCommand(name, arguments, "summarize" if name == SUMMARIZE else "command")
