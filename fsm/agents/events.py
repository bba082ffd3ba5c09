"""What Kilo's events mean for a turn: a pure translation from event payloads to turn triggers.

The meaning of each event shape is declared in one place, ``fsm.machines.turn.AGENT_EVENTS``, next
to the machine it drives; this module only computes an event's *shape* (which needs a little
memory: which messages are the user's, how much text each part has shown) and turns the declared
meaning into triggers. Measured facts behind the shapes (``shared/kilo/README.md`` §5-§7):

* a turn is bracketed by ``session.turn.open`` and ``session.turn.close{reason}``; ``superseded``
  closes are followed at once by the next queued prompt's open, so they end nothing;
* the user's own prompt arrives as text parts of a *user* message — not progress;
* Kilo opens an *empty* text part before the first token, repeats a part's full text after its
  deltas, and shows a synthetic "Initializing snapshot…" spinner part: none of them is output, so a
  part counts only when its text grew beyond what was already seen;
* a tool part goes ``pending`` → ``running`` → ``completed``/``error``; while running, the
  no-progress clock is held;
* ``session.error`` may arrive just *after* the ``turn.close`` it explains;
* ``session.network.asked`` (model endpoint unreachable, or the request timed out) waits for a
  reply nobody in fsm-agent sends: Kilo's last word on the turn, carried as the failure's text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fsm.machines.turn import AGENT_MEANING

Trigger = tuple[str, dict[str, Any]]

AGENT_HEARTBEAT = "server.heartbeat"
"""The agent's keep-alive on its event stream (Kilo and OpenCode both send one every 10 s): it
proves the link alive and means nothing for a turn, so the wrapper keeps it to itself."""

ERROR_DETAIL_BYTES = 1024
"""An outcome carries the first 1 KiB of the agent's own error text: enough for Kilo's message
(a stack trace follows it in some errors), small enough for every frame and log line."""


def clip_error(text: str) -> str:
    """The first ``ERROR_DETAIL_BYTES`` of ``text`` in UTF-8, never cutting a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= ERROR_DETAIL_BYTES:
        return text
    return raw[:ERROR_DETAIL_BYTES].decode("utf-8", "ignore")


def session_of(payload: dict[str, Any]) -> str | None:
    props = payload.get("properties") or {}
    for holder in (props, props.get("info") or {}, props.get("part") or {}):
        sid = holder.get("sessionID")
        if isinstance(sid, str):
            return sid
    return None


def error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error) if error else "unknown error"
    data = error.get("data") or {}
    message = data.get("message") if isinstance(data, dict) else None
    name = error.get("name") or "Error"
    return f"{name}: {message}" if message else str(name)


class TurnTranslator:
    """Turns Kilo events of one Kilo session into turn triggers.

    It remembers the user's message ids (their parts are the prompt, not output) and how many
    characters each part has shown (a part that shows nothing new is not progress); both are
    forgotten when a turn opens, so the memory is one turn's parts."""

    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id
        self._user_messages: set[str] = set()
        self._shown: dict[str, int] = {}

    def triggers(self, payload: dict[str, Any]) -> list[Trigger]:
        props: dict[str, Any] = payload.get("properties") or {}
        if payload.get("type") == "message.part.delta" and isinstance(props.get("sessionID"), str):
            # Most events of a turn: the same answer as below without its chain of tests.
            if self.session_id is not None and props["sessionID"] != self.session_id:
                return []
            shape = self._delta_shape(props)
        elif self.session_id is not None and session_of(payload) not in (None, self.session_id):
            return []
        else:
            shape = self.shape_of(payload)
        meaning = AGENT_MEANING.get(shape, AGENT_MEANING["other"])
        return _TRIGGERS[meaning](props)

    def shape_of(self, payload: dict[str, Any]) -> str:
        """The event's row in ``AGENT_EVENTS`` (and what it teaches: user ids, text shown)."""
        kind = str(payload.get("type", ""))
        props: dict[str, Any] = payload.get("properties") or {}
        if kind == "session.turn.open":
            self._shown.clear()
        elif kind == "session.turn.close" and props.get("reason") == "superseded":
            return "session.turn.close superseded"
        elif kind == "message.updated":
            info = props.get("info") or {}
            if info.get("role") == "user" and isinstance(info.get("id"), str):
                self._user_messages.add(info["id"])
        elif kind == "message.part.updated":
            return self._part_shape(props.get("part") or {})
        elif kind == "message.part.delta":
            return self._delta_shape(props)
        elif kind == "session.status":
            status = props.get("status") or {}
            return "session.status retry" if status.get("type") == "retry" else kind
        return kind if kind in AGENT_MEANING else "other"

    def _delta_shape(self, props: dict[str, Any]) -> str:
        if props.get("messageID") in self._user_messages:
            return "message.part.delta user"
        delta = props.get("delta")
        if not isinstance(delta, str) or not delta:
            return "message.part.delta empty"
        part = str(props.get("partID", ""))
        self._shown[part] = self._shown.get(part, 0) + len(delta)
        return "message.part.delta"

    def _part_shape(self, part: dict[str, Any]) -> str:
        base = "message.part.updated"
        if part.get("messageID") in self._user_messages:
            return f"{base} user"
        kind = part.get("type")
        if kind in ("text", "reasoning"):
            if part.get("synthetic"):
                return f"{base} {kind} synthetic"
            text = part.get("text")
            if not isinstance(text, str) or not text:
                return f"{base} {kind} empty"
            pid = str(part.get("id", ""))
            if len(text) <= self._shown.get(pid, 0):
                return f"{base} {kind} same"
            self._shown[pid] = len(text)
            return f"{base} {kind}"
        if kind == "tool":
            shape = f"{base} tool {(part.get('state') or {}).get('status')}"
            return shape if shape in AGENT_MEANING else f"{base} tool pending"
        shape = f"{base} {kind}"
        return shape if shape in AGENT_MEANING else f"{base} other"


def _part_id(props: dict[str, Any]) -> dict[str, Any]:
    return {"part": str((props.get("part") or {}).get("id", ""))}


def _retrying(props: dict[str, Any]) -> list[Trigger]:
    status = props.get("status") or {}
    message = status.get("message")
    attempt = status.get("attempt")
    # attempt 0 is "Reconnected" after a network reply: news of a recovery, not a reason.
    if not isinstance(message, str) or not message or not attempt:
        return []
    return [("retrying", {"error": clip_error(message)})]


def _gave_up(props: dict[str, Any]) -> list[Trigger]:
    message = props.get("message")
    text = message if isinstance(message, str) and message else "network wait"
    return [("agent_gave_up", {"error": clip_error(text)})]


_TRIGGERS: dict[str, Callable[[dict[str, Any]], list[Trigger]]] = {
    "progress": lambda _p: [("progress", {})],
    "tool_started": lambda p: [("tool_started", _part_id(p))],
    "tool_finished": lambda p: [("tool_finished", _part_id(p)), ("progress", {})],
    "asked": lambda p: [("asked", {"request": p.get("id", "")})],
    "answered": lambda _p: [("answered", {})],
    "open": lambda _p: [("started", {})],
    "close": lambda p: [("turn_closed", {"reason": str(p.get("reason", "completed"))})],
    "error": lambda p: [("error_reported", {"error": clip_error(error_text(p.get("error")))})],
    "gave_up": _gave_up,
    "retrying": _retrying,
    "nothing": lambda _p: [],
}
