"""What Kilo's events mean for a turn: a pure translation from event payloads to turn triggers.

Measured facts this encodes (``shared/kilo/README.md`` §5-§7):

* a turn is bracketed by ``session.turn.open`` and ``session.turn.close{reason}``; ``superseded``
  closes are followed at once by the next queued prompt's open, so they end nothing;
* the user's own prompt arrives as text parts of a *user* message — not progress; only parts of
  assistant messages (text, reasoning, tool, step-finish) and deltas are progress;
* a tool part goes ``pending`` → ``running`` → ``completed``/``error``; while running, the
  no-progress clock is held;
* ``session.error`` may arrive just *after* the ``turn.close`` it explains;
* ``session.network.asked`` (model endpoint unreachable) is not a user question: it yields no
  trigger, so it neither pauses the no-progress clock nor counts as progress.
"""

from __future__ import annotations

from typing import Any

Trigger = tuple[str, dict[str, Any]]


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
    """Turns Kilo events of one Kilo session into turn triggers (remembers user message ids)."""

    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id
        self._user_messages: set[str] = set()

    def triggers(self, payload: dict[str, Any]) -> list[Trigger]:
        kind = payload.get("type", "")
        if self.session_id is not None and session_of(payload) not in (None, self.session_id):
            return []
        props: dict[str, Any] = payload.get("properties") or {}
        if kind == "session.turn.open":
            return [("started", {})]
        if kind == "session.turn.close":
            reason = str(props.get("reason", "completed"))
            return [] if reason == "superseded" else [("turn_closed", {"reason": reason})]
        if kind == "message.updated":
            info = props.get("info") or {}
            if info.get("role") == "user" and isinstance(info.get("id"), str):
                self._user_messages.add(info["id"])
            return []
        if kind == "message.part.updated":
            return self._part(props.get("part") or {})
        if kind == "message.part.delta":
            if props.get("messageID") in self._user_messages:
                return []
            return [("progress", {})]
        if kind in ("permission.asked", "question.asked"):
            return [("asked", {"request": props.get("id", "")})]
        if kind in ("permission.replied", "question.replied", "question.rejected"):
            return [("answered", {})]
        if kind == "session.error":
            return [("error_reported", {"error": error_text(props.get("error"))})]
        return []

    def _part(self, part: dict[str, Any]) -> list[Trigger]:
        if part.get("messageID") in self._user_messages:
            return []
        kind = part.get("type")
        if kind in ("text", "reasoning", "step-finish"):
            return [("progress", {})]
        if kind == "tool":
            status = (part.get("state") or {}).get("status")
            pid = str(part.get("id", ""))
            if status == "running":
                return [("tool_started", {"part": pid})]
            if status in ("completed", "error"):
                return [("tool_finished", {"part": pid}), ("progress", {})]
            return [("progress", {})]
        return []
