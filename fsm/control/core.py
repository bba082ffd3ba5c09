"""The control plane's side of one session, without I/O: the ``session`` machine plus messages.

Theory of operation
-------------------
``fsm-agent control`` runs one ``SessionCore`` per session; the simulator runs the same object
against a fake runtime and an in-memory channel. It keeps:

* the ``session`` machine (wrapper lifecycle as seen from outside: first connect, stale heartbeat,
  hung session, max runtime, idle stop, restart budget, version pinning);
* the session's messages, each ``queued → accepted → running → completed | failed | cancelled``
  (``running`` once the wrapper's turn shows Kilo working on it) with exactly
  one terminal outcome — a late or duplicate outcome is recorded and ignored. A message is
  ``accepted`` only when the wrapper says Kilo has it (the lifecycle frame of its ``turn:<id>``
  machine leaving ``queued``), never when the prompt is merely transmitted: until then nothing
  ran, so a wrapper lost before that does not fail it — it stays ``queued`` and goes to the next
  wrapper after its welcome (the wrapper is idempotent by message id), and runs once. Only
  accepted messages fail with a lost wrapper. The wrapper's own outcome for a message it holds
  ends it from either state (a wrapper that cannot take a prompt answers it ``failed`` at once);
* what a welcomed wrapper is sent (``commands_after_welcome``): a prompt for every message still
  queued, derived from the messages themselves — there is no queue of prompt commands that could
  outlive its message's state (the old rule held a prompt for a wrapper that was then replaced,
  failed its message, and the held prompt still ran on the next wrapper). Other commands (abort,
  permission and question replies) held while the wrapper is disconnected go to *that* wrapper
  when it reconnects; a replacement never gets them, since the requests they answer died with
  the wrapper that asked;
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

from fsm.agents.events import TurnTranslator, clip_error
from fsm.engine.clock import Clock
from fsm.engine.effects import Effect, FailMessages, SendCommand, SendShutdown
from fsm.engine.events import Event
from fsm.engine.machine import Record, Snapshot, StateMachine
from fsm.engine.runner import MachineGroup
from fsm.machines import session, turn
from fsm.machines.timers import TimerValues
from fsm.wire.protocol import (
    PROTOCOL_VERSION,
    WRAPPER_VERSION,
    AbortCommand,
    Ack,
    EventFrame,
    EventsDropped,
    FilePart,
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
from fsm.wire.transmit import Transmit

EXIT_DETAILS = {
    "oom_killed": "the wrapper's container was killed at its memory limit (OOM)",
    "removed": "the wrapper's container was removed",
    "start_failed": "the wrapper could not be started",
}


def exit_detail(code: int | None, reason: str | None, detail: str = "") -> str:
    """The error detail of messages a wrapper's exit fails: the runtime's reason, the code and
    what the runtime said (a daemon's error on a failed start), cut to 1 KiB. A plain exit says
    only its code; an exit nobody could read says nothing."""
    words = EXIT_DETAILS.get(reason or "", "")
    if code is not None:
        status = f"signal {-code}" if code < 0 else f"exit code {code}"
        words = f"{words} ({status})" if words else f"the wrapper ended with {status}"
    if detail:
        words = f"{words}: {detail}" if words else detail
    return clip_error(words)


TERMINAL = ("completed", "failed", "cancelled")
BACKSTOP_REASONS = ("no_progress", "execution_limit")
"""What the control plane's backstops (hung session, max runtime) fail a message with."""
TURN_ENDED = TERMINAL
"""The wrapper's turn machine ends in exactly the three outcome statuses."""
WITH_AGENT = ("accepted", "running")
"""Message states of a prompt Kilo has: lost with its wrapper (``agent_restarted``…)."""
UNFINISHED = ("queued", *WITH_AGENT)
TURN_WORKING = ("running", "waiting_user", "finalizing")
"""Turn states in which Kilo works on the prompt (or has just closed it): the message runs."""
CONNECTED = session.CONNECTED


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
        self.values = values
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
        self.turn_states: dict[str, str] = {}
        """The current wrapper's ``turn:<id>`` machines' states, from its lifecycle frames."""
        self.tools_running: set[str] = set()
        """Kilo's tool parts running now, read from the agent's events with the wrapper's own
        classification (``TurnTranslator``): the wrapper holds a turn while a tool runs."""
        self._tools = TurnTranslator()
        self._backstopped: dict[str, str] = {}
        """Accepted messages a backstop aborted, waiting for the wrapper's answer → reason."""
        self._held: list[tuple[str | None, Frame]] = []
        self._exit_detail = ""
        """While a wrapper exit is being handled: what the runtime said of it (``exit_detail``)."""
        self._notice: tuple[float, str] | None = None
        """The runtime's last notice (``runtime_notice``): when, and what it said."""
        """Commands (never prompts) for a disconnected wrapper, with the wrapper they were for."""
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
            self.turn_states.clear()
            self.tools_running.clear()
        answer = Welcome(acked=self.last_seq)
        # Connected first, so that whoever transmits the welcome can ask at once what follows it
        # (``commands_after_welcome``): the simulator sends it now, the host after its flush.
        self.group.send(self.machine.machine_id, Event("wrapper_connected"))
        self.on_action(Transmit([answer]))
        return answer

    def commands_after_welcome(self) -> list[Frame]:
        """What a wrapper that was just welcomed must be sent, in order: the commands held for it
        while it was away (only if it is the wrapper they were for), then a prompt for every
        message still ``queued``. Called by the host that transmitted the welcome."""
        held, self._held = self._held, []
        frames = [frame for wrapper, frame in held if wrapper == self.wrapper_id]
        if self.machine.state in CONNECTED:
            frames.extend(self._prompt(m) for m in self.messages.values() if m.state == "queued")
        return frames

    def hold(self, frame: Frame) -> None:
        """A command the host could not transmit now (no connection, or a welcome not sent yet).
        A prompt is not kept: it belongs to its message, and the next welcome derives it again
        from the message's state — so a message that ended meanwhile is never sent."""
        if not isinstance(frame, PromptCommand):
            self._held.append((self.wrapper_id, frame))

    def frame(self, frame: WrapperFrame) -> None:
        if isinstance(frame, Hello):
            self.hello(frame)
            return
        if isinstance(frame, Heartbeat):
            # While a turn waits on the user or runs a tool, the wrapper has paused (or holds)
            # that turn's no-progress clock; the hung backstop pauses with it (a live wrapper's
            # heartbeat then counts as a frame), so a question answered late or a long tool is
            # never killed here while the wrapper is healthy. Its hard cap still bounds both.
            held = bool(self.tools_running) or "waiting_user" in self.turn_states.values()
            trigger = "frame" if held else "heartbeat"
            self.group.send(self.machine.machine_id, Event(trigger, {"state": frame.state}))
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
            kind = str(frame.event.get("type", ""))
            alive_only = kind.startswith("server.")
            if kind == "message.part.updated":
                self._track_tools(frame.event)
            self.group.send(self.machine.machine_id, Event("heartbeat" if alive_only else "frame"))
        elif isinstance(frame, OutcomeFrame):
            self._outcome(frame)
        elif isinstance(frame, LifecycleFrame):
            data = msgspec.to_builtins(frame)
            # The frame's ``at`` is the wrapper's own clock (monotonic, another process's): kept
            # as ``wrapper_at``. Every log entry's ``at`` is this side's wall clock, so a client
            # reads one timebase in the whole stream (it got the wrapper's uptime on lifecycle
            # lines, epoch seconds on all others).
            data["wrapper_at"] = data.pop("at")
            self._log("lifecycle", data)
            if frame.machine.startswith("turn:"):
                self._turn(frame.machine[5:], frame.state)
            elif frame.machine == "wrapper" and frame.state == "failed":
                # The wrapper lives on to fail every prompt agent_unavailable: the session must
                # not show ``ready`` meanwhile (issue 13, point 6).
                self.group.send(self.machine.machine_id, Event("agent_unavailable"))
        elif isinstance(frame, EventsDropped):
            self.events_dropped += frame.count
            self._log(
                "events_dropped", {"count": frame.count, "from": frame.seq, "to": frame.last_seq}
            )
        self.on_action(Transmit([Ack(frame.seq)]))

    def runtime_notice(self, kind: str, detail: str) -> None:
        """The runtime saw something happen to the wrapper that is not an exit (``oom``: the
        kernel killed a process in its container at the memory limit, maybe a tool, maybe Kilo).
        It goes into the session's log, and a message lost within ``runtime_notice_window``
        after it (Kilo restarted, the wrapper replaced) carries it as its error: the likely why,
        where the wrapper could only say ``agent_restarted``."""
        self._notice = (self.clock.now(), detail)
        self._log("runtime", {"notice": kind, "detail": detail})

    def _recent_notice(self) -> str:
        if self._notice is None:
            return ""
        at, detail = self._notice
        window = self.values["runtime_notice_window"]
        return detail if self.clock.now() - at <= window else ""

    def wrapper_exited(self, code: int | None, reason: str | None = None, detail: str = "") -> None:
        """The runtime saw the wrapper go; ``reason`` is its runtime's word for why (e.g.
        ``oom_killed``). Messages the exit fails carry it as their error detail, so the user
        reads *the container hit its memory limit*, not only ``agent_restarted``."""
        self._exit_detail = exit_detail(code, reason, detail)
        try:
            self.group.send(
                self.machine.machine_id, Event("wrapper_exited", {"code": code, "reason": reason})
            )
        finally:
            self._exit_detail = ""

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
        self._queue_changed()
        if self.machine.state == "stopped":
            self.group.send(self.machine.machine_id, Event("resume"))
        elif self.machine.state in CONNECTED:
            # It stays ``queued``: the host may not be able to send it now (it then drops it,
            # and the next welcome derives it again), and only the wrapper's word accepts it.
            self.on_action(Transmit([self._prompt(message)]))
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

    @staticmethod
    def _prompt(message: Message) -> PromptCommand:
        opts = message.options
        return PromptCommand(
            message_id=message.id,
            prompt=message.prompt,
            model=opts.get("model"),
            variant=opts.get("variant"),
            agent=opts.get("agent"),
            auto_commit=bool(opts.get("auto_commit", False)),
            files=msgspec.convert(opts.get("files") or (), tuple[FilePart, ...]),
        )

    def _queue_changed(self) -> None:
        """A session with a message waiting for Kilo is ``waiting``, not ready or idle: its idle
        stop must not cancel a prompt that may be on its way to the wrapper."""
        state = self.machine.state
        if state in ("ready", "idle", "waiting"):
            queued = any(m.state == "queued" for m in self.messages.values())
            if queued and state != "waiting":
                self.group.send(self.machine.machine_id, Event("message_queued"))
            elif not queued and state == "waiting":
                self.group.send(self.machine.machine_id, Event("queue_empty"))

    def _track_tools(self, event: dict[str, Any]) -> None:
        for name, data in self._tools.triggers(event):
            part = str(data.get("part", ""))
            if name == "tool_started":
                self.tools_running.add(part)
            elif name == "tool_finished":
                self.tools_running.discard(part)

    def _turn(self, message_id: str, state: str) -> None:
        """The wrapper's turn for a message changed state. Leaving ``queued`` means Kilo has
        the prompt: the message is ``accepted`` (and the session ``running``, its hung backstop
        armed) only now — a turn queued while Kilo cold-starts is nobody working yet."""
        self.turn_states[message_id] = state
        if state in TURN_ENDED:
            self.turn_states.pop(message_id, None)
            if not self.turn_states:
                self.tools_running.clear()  # a tool cut off by the turn's end never says so
        message = self.messages.get(message_id)
        if message is None or state in (*turn.NOT_SENT, *TURN_ENDED):
            return
        if message.state == "queued":
            self._set(message, "accepted")
            self.group.send(self.machine.machine_id, Event("message_accepted", {"id": message.id}))
            self._queue_changed()
        if message.state == "accepted" and state in TURN_WORKING:
            self._set(message, "running")

    def _outcome(self, frame: OutcomeFrame) -> None:
        self._log("outcome", msgspec.to_builtins(frame))
        message = self.messages.get(frame.message_id)
        if message is None or message.state not in UNFINISHED:
            self.ignored_outcomes.append(frame.message_id)
            state = message.state if message else "unknown"
            self._log("ignored", {"outcome": frame.message_id, "message_state": state})
            return
        # A queued message's outcome comes from the wrapper that holds it and ended it before
        # Kilo had it (cancelled, unavailable, hard cap): the truth, and not counted as running.
        counted = message.state in WITH_AGENT and message.id not in self._backstopped
        backstop = self._backstopped.pop(message.id, None)
        if backstop is not None and frame.status == "cancelled":
            self._set(message, "failed", backstop, frame.error)
        else:
            error = frame.error
            if not error and frame.reason in ("agent_restarted", "agent_unavailable"):
                error = self._recent_notice()  # Kilo killed at the container's memory limit
            self._set(message, frame.status, frame.reason, error)
        if counted:
            self.group.send(self.machine.machine_id, Event("message_finished", {"id": message.id}))
        self._queue_changed()

    def _fail_accepted(self, reason: str, include_queued: bool = False) -> None:
        backstopped, self._backstopped = self._backstopped, {}
        for message in self.messages.values():
            if message.state in WITH_AGENT or (include_queued and message.state == "queued"):
                # A message a backstop aborted whose wrapper went without answering: the
                # backstop's verdict stands.
                why = backstopped.get(message.id, reason)
                status = "cancelled" if why == "cancelled" else "failed"
                detail = (self._exit_detail or self._recent_notice()) if why == reason else ""
                self._set(message, status, why, detail)
        self._queue_changed()

    def _set(self, message: Message, state: str, reason: str = "", error: str = "") -> None:
        message.state = state
        message.reason = reason
        message.error = error
        if state in TERMINAL:
            message.finished_at = self.clock.now()
        data = {"id": message.id, "state": state, "reason": reason, "error": error}
        self._log("message", data)

    def _on_effect(self, _machine_id: str, effect: Effect) -> None:
        if isinstance(effect, FailMessages) and effect.reason in BACKSTOP_REASONS:
            # A backstop (hung, max runtime) aborts the wrapper's turn and lets the wrapper's
            # answer end the message: its ``cancelled`` fails it with the backstop's reason, but
            # a turn that finished meanwhile (the abort came too late) ends as it did. A wrapper
            # that never answers is lost in time (stale, exit) or stopped idle: then the
            # backstop's reason stands. (A client's stop still cancels at once: the client asked
            # for it, and a deleted session is gone as soon as its wrapper is.)
            for message in self.messages.values():
                if message.state in WITH_AGENT:
                    self._backstopped[message.id] = effect.reason
        elif isinstance(effect, FailMessages):
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
        if record.kind == "transition" and record.dest in ("ready", "idle"):
            self._queue_changed()  # e.g. connected, or back from stale, with messages queued
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
