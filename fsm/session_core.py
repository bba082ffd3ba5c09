"""The control plane's side of one session, without I/O: the ``session`` machine plus messages.

Theory of operation
-------------------
``fsm-agent control`` runs one ``SessionCore`` per session; the simulator runs the same object
against a fake runtime and an in-memory channel. It keeps:

* the ``session`` machine (wrapper lifecycle as seen from outside: first connect, stale heartbeat,
  hung session, max runtime, idle stop, restart budget, version pinning);
* the session's messages, each ``queued → accepted → completed | failed | cancelled`` with exactly
  one terminal outcome — a late or duplicate outcome is recorded and ignored;
* the link bookkeeping: the wrapper's ``hello`` is answered ``welcome`` (with the highest seq
  already held, so a reconnect resumes) or ``shutdown`` (wrong version or protocol; the machine
  then restarts the wrapper with the pinned version); every sequenced frame is acknowledged and
  duplicates dropped by seq; a *new* wrapper id means the agent's state is gone, so accepted
  messages fail ``agent_restarted``;
* an append-only event log with a per-session, strictly increasing id (frames from the wrapper and
  the session's own transitions), handed to ``on_log`` for the store and for live streams.

Every terminal decision taken here about a turn (hung, max runtime, restart) also goes to the
wrapper as a command, so both sides converge on one outcome.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import msgspec

from fsm.clock import Clock
from fsm.effects import Effect, FailMessages, SendCommand, SendShutdown
from fsm.engine import Record, Snapshot, StateMachine
from fsm.events import Event
from fsm.machines import session
from fsm.protocol import (
    PROTOCOL_VERSION,
    WRAPPER_VERSION,
    AbortCommand,
    Ack,
    EventFrame,
    EventsDropped,
    Frame,
    Heartbeat,
    Hello,
    LifecycleFrame,
    OutcomeFrame,
    PermissionCommand,
    PermissionReply,
    PromptCommand,
    QuestionCommand,
    ReleaseCommand,
    SeqFrame,
    Shutdown,
    Welcome,
    WrapperFrame,
)
from fsm.runner import MachineGroup
from fsm.timers import TimerValues
from fsm.wrapper_core import Transmit

TERMINAL = ("completed", "failed", "cancelled")
CONNECTED = ("ready", "running", "idle")


class Message(msgspec.Struct):
    id: str
    prompt: str
    state: str = "queued"
    reason: str = ""
    error: str = ""
    created_at: float = 0.0
    finished_at: float | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class LogEntry(msgspec.Struct, frozen=True):
    id: int
    at: float
    kind: str
    """event | lifecycle | outcome | events_dropped | transition | message | ignored"""
    data: dict[str, Any]


class SessionCore:
    def __init__(
        self,
        clock: Clock,
        values: TimerValues,
        session_id: str,
        on_action: Callable[[Effect], None],
        *,
        pinned_version: str = WRAPPER_VERSION,
        protocol: int = PROTOCOL_VERSION,
        rng: random.Random | None = None,
        on_record: Callable[[Record], None] | None = None,
        on_log: Callable[[LogEntry], None] | None = None,
        log_start: int = 0,
    ) -> None:
        self.clock = clock
        self.session_id = session_id
        self.on_action = on_action
        self.pinned_version = pinned_version
        self.protocol = protocol
        self.on_log = on_log
        self._user_on_record = on_record
        self.messages: dict[str, Message] = {}
        self.wrapper_id: str | None = None
        self.last_seq = 0
        self.duplicates = 0
        self.events_dropped = 0
        self.ignored_outcomes: list[str] = []
        self._log_ids = itertools.count(log_start + 1)
        self._message_ids = itertools.count(1)
        self.group = MachineGroup(clock, self._on_effect)
        self.machine = StateMachine(
            session.SPEC,
            values,
            machine_id=f"session:{session_id}",
            rng=rng,
            on_record=self._on_record,
        )

    def start(self) -> None:
        self.group.add(self.machine)

    def restore(
        self,
        snapshot: Snapshot,
        messages: list[Message],
        wrapper_id: str | None,
        last_seq: int,
    ) -> None:
        """Instead of ``start()``: rebuild from the store after a control-plane restart.

        Deadlines are kept as stored (the host's clock is wall time), so a timer that expired
        while the control plane was down fires at once.
        """
        machine, effects = StateMachine.restore(
            session.SPEC,
            snapshot,
            self.clock.now(),
            self.machine.values,
            keep="deadline",
            on_record=self._on_record,
        )
        self.machine = machine
        self.messages = {m.id: m for m in messages}
        self.wrapper_id = wrapper_id
        self.last_seq = last_seq
        self.group.adopt(machine, effects)

    def snapshot(self) -> Snapshot:
        return self.machine.snapshot(self.clock.now())

    @property
    def state(self) -> str:
        return self.machine.state

    # -- the wrapper link ----------------------------------------------------------------------

    def hello(self, frame: Hello) -> Welcome | Shutdown:
        """Answer a wrapper's hello; the answer is also transmitted."""
        if frame.protocol != self.protocol or frame.version != self.pinned_version:
            reason = (
                f"wrapper {frame.version} (protocol {frame.protocol}) does not match the pinned "
                f"{self.pinned_version} (protocol {self.protocol})"
            )
            self._log("lifecycle", {"machine": "ingest", "state": "refused", "reason": reason})
            self.group.send(self.machine.machine_id, Event("version_mismatch", {"reason": reason}))
            answer: Welcome | Shutdown = Shutdown(reason)
            self.on_action(Transmit([answer]))
            return answer
        if self.wrapper_id != frame.wrapper_id:
            if self.wrapper_id is not None:
                self._fail_accepted("agent_restarted")
            self.wrapper_id = frame.wrapper_id
            self.last_seq = 0
        answer = Welcome(acked=self.last_seq)
        self.on_action(Transmit([answer]))
        self.group.send(self.machine.machine_id, Event("wrapper_connected"))
        self._send_queued()
        return answer

    def frame(self, frame: WrapperFrame) -> None:
        if isinstance(frame, Hello):
            self.hello(frame)
            return
        if isinstance(frame, Heartbeat):
            self.group.send(self.machine.machine_id, Event("heartbeat", {"state": frame.state}))
            return
        assert isinstance(frame, SeqFrame)
        if frame.seq <= self.last_seq:
            self.duplicates += 1
            self.on_action(Transmit([Ack(self.last_seq)]))
            return
        self.last_seq = frame.seq
        if isinstance(frame, EventFrame):
            self._log("event", {"generation": frame.generation, "event": frame.event})
            # Kilo's own heartbeats prove the wrapper alive, not the session busy: they must not
            # hold off the hung-session timer (Kilo sends one every 10 s, even mid-hang).
            alive_only = str(frame.event.get("type", "")).startswith("server.")
            self.group.send(self.machine.machine_id, Event("heartbeat" if alive_only else "frame"))
        elif isinstance(frame, OutcomeFrame):
            self._outcome(frame)
        elif isinstance(frame, LifecycleFrame):
            self._log("lifecycle", msgspec.to_builtins(frame))
        elif isinstance(frame, EventsDropped):
            self.events_dropped += frame.count
            self._log(
                "events_dropped", {"count": frame.count, "from": frame.seq, "to": frame.last_seq}
            )
        self.on_action(Transmit([Ack(frame.seq)]))

    def wrapper_exited(self, code: int | None) -> None:
        self.group.send(self.machine.machine_id, Event("wrapper_exited", {"code": code}))

    # -- client commands ------------------------------------------------------------------------

    def send_message(self, prompt: str, message_id: str | None = None, **options: Any) -> Message:
        if self.machine.terminal:
            raise RuntimeError(f"session {self.session_id} has failed; create a new session")
        mid = message_id or self._new_message_id()
        if mid in self.messages:
            return self.messages[mid]
        message = Message(mid, prompt, created_at=self.clock.now(), options=dict(options))
        self.messages[mid] = message
        self._log("message", {"id": mid, "state": "queued"})
        if self.machine.state == "stopped":
            self.group.send(self.machine.machine_id, Event("resume"))
        self._send_queued()
        return message

    def _new_message_id(self) -> str:
        while True:  # skips ids restored from the store
            mid = f"msg_{self.session_id}_{next(self._message_ids):04d}"
            if mid not in self.messages:
                return mid

    def abort(self, message_id: str | None = None) -> None:
        self.on_action(Transmit([AbortCommand(message_id)]))

    def reply_permission(
        self, request_id: str, reply: PermissionReply, message: str | None = None
    ) -> None:
        self.on_action(Transmit([PermissionCommand(request_id, reply, message)]))

    def reply_question(self, request_id: str, answers: list[list[str]] | None) -> None:
        self.on_action(Transmit([QuestionCommand(request_id, answers)]))

    def stop(self) -> None:
        self.group.send(self.machine.machine_id, Event("stop"))

    # -- internals ------------------------------------------------------------------------------

    def _send_queued(self) -> None:
        if self.machine.state not in CONNECTED:
            return
        for message in self.messages.values():
            if message.state != "queued":
                continue
            opts = message.options
            command = PromptCommand(
                message_id=message.id,
                prompt=message.prompt,
                model=opts.get("model"),
                variant=opts.get("variant"),
                agent=opts.get("agent"),
                auto_commit=bool(opts.get("auto_commit", False)),
            )
            self.on_action(Transmit([command]))
            self._set(message, "accepted")
            self.group.send(self.machine.machine_id, Event("message_accepted", {"id": message.id}))

    def _outcome(self, frame: OutcomeFrame) -> None:
        self._log("outcome", msgspec.to_builtins(frame))
        message = self.messages.get(frame.message_id)
        if message is None or message.state != "accepted":
            self.ignored_outcomes.append(frame.message_id)
            state = message.state if message else "unknown"
            self._log("ignored", {"outcome": frame.message_id, "message_state": state})
            return
        self._set(message, frame.status, frame.reason, frame.error)
        self.group.send(self.machine.machine_id, Event("message_finished", {"id": message.id}))

    def _fail_accepted(self, reason: str, include_queued: bool = False) -> None:
        for message in self.messages.values():
            if message.state == "accepted" or (include_queued and message.state == "queued"):
                status = "cancelled" if reason == "cancelled" else "failed"
                self._set(message, status, reason)

    def _set(self, message: Message, state: str, reason: str = "", error: str = "") -> None:
        message.state = state
        message.reason = reason
        message.error = error
        if state in TERMINAL:
            message.finished_at = self.clock.now()
        data = {"id": message.id, "state": state, "reason": reason, "error": error}
        self._log("message", data)

    def _on_effect(self, _machine_id: str, effect: Effect) -> None:
        if isinstance(effect, FailMessages):
            final = effect.reason in ("agent_unavailable", "cancelled")
            self._fail_accepted(effect.reason, include_queued=final)
        elif isinstance(effect, SendCommand):
            frame: Frame = AbortCommand() if effect.command == "abort" else ReleaseCommand()
            self.on_action(Transmit([frame]))
        elif isinstance(effect, SendShutdown):
            pass  # already transmitted by hello(), which knows the versions to name
        else:
            self.on_action(effect)

    def _on_record(self, record: Record) -> None:
        if record.kind in ("start", "transition"):
            self._log(
                "transition",
                {
                    "machine": record.machine,
                    "from": record.source,
                    "to": record.dest,
                    "trigger": record.trigger,
                    "effects": list(record.effects),
                },
            )
        if (
            record.kind == "transition"
            and record.dest == "stopped"
            and any(m.state == "queued" for m in self.messages.values())
        ):
            # A message sent while the session was stopping waited for it to stop; like one sent
            # to a stopped session, it resumes the session (else it would wait forever).
            self.group.send(self.machine.machine_id, Event("resume"))
        if self._user_on_record is not None:
            self._user_on_record(record)

    def _log(self, kind: str, data: dict[str, Any]) -> None:
        entry = LogEntry(next(self._log_ids), self.clock.now(), kind, data)
        if self.on_log is not None:
            self.on_log(entry)
