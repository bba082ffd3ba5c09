"""An agent's event dialect, normalised to the turn brackets the wrapper core runs on.

The turn machine and ``fsm.agents.events`` read Kilo's dialect: every turn is bracketed by
``session.turn.open`` and ``session.turn.close{reason}``, and a second queued prompt is announced
by a ``superseded`` close followed at once by the next open. Upstream OpenCode (1.18.33, measured
for issue 17) never sends either: its session goes ``session.status busy`` when it starts on a
prompt and a turn ends only by ``session.idle``; two queued prompts give a single idle, and an
abort is a ``session.error`` (``MessageAbortedError``) before that idle.

``IdleDialect`` turns such a stream into Kilo's brackets, so one core, one table
(``fsm.machines.turn.AGENT_EVENTS``) and one translator serve both agents:

* the first ``session.status busy`` (or a *new* assistant message's ``message.updated``) of our
  session while no turn is open synthesises ``session.turn.open``; an update of a reply already
  seen does not (after an abort OpenCode re-sends the finished reply after its idle);
* a *new* user message of our session while a turn is open is a queued prompt joining the same
  busy period: ``session.turn.close superseded`` then ``session.turn.open``, the pair Kilo sends,
  so the core's run grows by the joining prompt (correlated by its message id: the wrapper names
  each user message itself, ``ascending_id``);
* ``session.idle`` (or ``session.status idle``) closes the open turn, with reason ``interrupted``
  after an abort's ``MessageAbortedError``, ``error`` after any other error (a ``session.error``,
  or the reply's own ``info.error``: an abort before the model streamed sends only that), else
  ``completed``. A second idle with no turn open (OpenCode sends two after an abort) is nothing.

Synthesised events carry ``properties.synthetic = true``; the control plane receives them with the
agent's own, so a timeline reads the same for both agents. ``BracketDialect`` (Kilo) passes every
event through unchanged.

**The idle blip.** Right after ``prompt_async`` answers, ``GET /session/status`` still shows the
session idle (absent) until the agent's loop starts: measured on OpenCode 1.18.33, three polls in
a row answered ``{}`` before ``busy``, before even the user message's event
(``tests/fixtures/opencode/*.event.jsonl``, the ``status_poll`` lines). A resync that read the
status then (the stream dropped just after a prompt) would close a turn that has not started.
Each dialect therefore keeps the prompts sent (``prompted``) that the agent has not yet been seen
working on (a ``busy`` status, a turn open, an assistant reply), and ``resync_idle_closes`` says
whether an idle read may close the turns: not while such a prompt is pending, unless the
session's last message is the agent's reply to it (the turn ran and ended while the stream was
down). A ``session.status idle`` *event* before any busy closes nothing either: no turn is open.
"""

from __future__ import annotations

from typing import Any, Protocol

ABORTED = "MessageAbortedError"


class Dialect(Protocol):
    session_id: str | None

    def expand(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The events the core should act on for one agent event, in order (it among them)."""
        ...

    def reset(self) -> None:
        """The agent restarted or the stream was replaced: no turn of the old one is open."""
        ...

    def prompted(self, message_id: str) -> None:
        """The wrapper sent a prompt with the agent-side ``message_id`` (module docstring)."""
        ...

    def resync_idle_closes(self, last_role: str | None, last_parent: str | None) -> bool:
        """Whether an idle ``/session/status`` read on a resync means the turns ended, given the
        session's last message (its role and, for a reply, the user message it answers)."""
        ...


class Pending:
    """The prompts sent that the agent has not yet been seen working on (the idle blip guard)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def prompted(self, message_id: str) -> None:
        self.ids.add(message_id)

    def observe(self, kind: Any, props: dict[str, Any]) -> None:
        """One event of our session: any sign of work starts every pending prompt (queued ones
        join the same busy run, which one idle ends)."""
        if not self.ids:
            return
        busy = kind == "session.status" and (props.get("status") or {}).get("type") == "busy"
        reply = kind == "message.updated" and (props.get("info") or {}).get("role") == "assistant"
        if busy or reply or kind == "session.turn.open":
            self.ids.clear()

    def resync_idle_closes(self, last_role: str | None, last_parent: str | None) -> bool:
        if self.ids and last_role == "assistant" and last_parent in self.ids:
            self.ids.clear()  # it ran and ended while we were not listening
        return not self.ids


def _session_of(kind: Any, props: dict[str, Any]) -> Any:
    holder = props.get("info") if kind == "message.updated" else props
    return holder.get("sessionID") if isinstance(holder, dict) else None


class BracketDialect:
    """Kilo: the agent brackets its turns itself."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.pending = Pending()

    def expand(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        props = payload.get("properties")
        if self.pending.ids and isinstance(props, dict):
            kind = payload.get("type")
            if self.session_id is not None and _session_of(kind, props) == self.session_id:
                self.pending.observe(kind, props)
        return [payload]

    def reset(self) -> None:
        return None

    def prompted(self, message_id: str) -> None:
        self.pending.prompted(message_id)

    def resync_idle_closes(self, last_role: str | None, last_parent: str | None) -> bool:
        return self.pending.resync_idle_closes(last_role, last_parent)


class IdleDialect:
    """OpenCode: brackets synthesised from busy/idle and user message ids (module docstring)."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.open = False
        self._error: str | None = None
        self._users: set[str] = set()
        self._assistants: set[str] = set()
        self.pending = Pending()

    def reset(self) -> None:
        """No turn is open; a prompt sent stays pending (a new stream does not unsend it)."""
        self.open = False
        self._error = None

    def prompted(self, message_id: str) -> None:
        self.pending.prompted(message_id)

    def resync_idle_closes(self, last_role: str | None, last_parent: str | None) -> bool:
        return self.pending.resync_idle_closes(last_role, last_parent)

    def expand(self, payload: dict[str, Any]) -> list[dict[str, Any]]:
        kind = payload.get("type")
        props = payload.get("properties") or {}
        if not isinstance(props, dict) or not self._ours(kind, props):
            return [payload]
        self.pending.observe(kind, props)
        before: list[dict[str, Any]] = []
        after: list[dict[str, Any]] = []
        if kind == "message.updated":
            info = props.get("info") or {}
            mid, role = info.get("id"), info.get("role")
            if role == "user" and isinstance(mid, str) and mid not in self._users:
                self._users.add(mid)
                if self.open:
                    before = [self._bracket("session.turn.close", "superseded")]
                    before.append(self._bracket("session.turn.open"))
            elif role == "assistant" and isinstance(mid, str) and mid not in self._assistants:
                # Only a *new* reply opens: OpenCode re-sends an aborted reply, finished, after
                # its idle (measured: tests/fixtures/opencode/aborted.event.jsonl), which is no
                # turn of its own.
                self._assistants.add(mid)
                if not self.open:
                    before = self._opened()
            if role == "assistant" and self.open:
                # An abort before the model streamed is no ``session.error``: only the reply's
                # own ``error`` says it (measured: the contract tour's early abort).
                error = info.get("error")
                if isinstance(error, dict) and error.get("name"):
                    self._error = str(error["name"])
        elif kind == "session.status":
            status = (props.get("status") or {}).get("type")
            if status == "busy" and not self.open:
                before = self._opened()
            elif status == "idle" and self.open:
                after = self._closed()
        elif kind == "session.idle" and self.open:
            after = self._closed()
        elif kind == "session.error":
            error = props.get("error") or {}
            self._error = str(error.get("name") or "error") if isinstance(error, dict) else "error"
        return [*before, payload, *after]

    def _ours(self, kind: Any, props: dict[str, Any]) -> bool:
        return self.session_id is not None and _session_of(kind, props) == self.session_id

    def _opened(self) -> list[dict[str, Any]]:
        self.open, self._error = True, None
        return [self._bracket("session.turn.open")]

    def _closed(self) -> list[dict[str, Any]]:
        reason = (
            "completed"
            if self._error is None
            else "interrupted"
            if self._error == ABORTED
            else "error"
        )
        self.open, self._error = False, None
        return [self._bracket("session.turn.close", reason)]

    def _bracket(self, kind: str, reason: str | None = None) -> dict[str, Any]:
        props: dict[str, Any] = {"sessionID": self.session_id, "synthetic": True}
        if reason is not None:
            props["reason"] = reason
        return {"type": kind, "properties": props}


DIALECTS: dict[str, type[BracketDialect] | type[IdleDialect]] = {
    "brackets": BracketDialect,
    "idle": IdleDialect,
}
"""By ``AgentSpec.dialect``."""


def dialect(name: str) -> Dialect:
    """A fresh dialect state for an agent whose spec says ``name``; ValueError if unknown."""
    made = DIALECTS.get(name)
    if made is None:
        raise ValueError(f"dialect: {name!r} is not one of {', '.join(DIALECTS)}")
    return made()
