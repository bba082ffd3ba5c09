"""The wrapper's brain without its body: machines composed, events routed, frames buffered.

Theory of operation
-------------------
``fsm-agent serve`` and the simulator's fake container run *this* object; only the body differs
(real Kilo, a real WebSocket and the real clock, or fakes on a virtual clock). It owns the
``wrapper``, ``agent_link`` (one per Kilo instance), ``ingest_link`` and ``turn`` (one per prompt)
machines in one ``MachineGroup`` and does four jobs nothing else does:

* routes world events to machines: Kilo events to the agent link (liveness) and to unfinished
  turns (progress, questions, closes, errors, via ``fsm.agents.events``); socket events and
  control frames to the ingest link; the agent's process events to the wrapper machine;
* turns machine effects that concern siblings into events (``NotifyTurns``, ``OpenAgentLink``,
  outcomes ending turns on the wrapper);
* buffers every frame for the control plane in the ``Outbox`` (seq, ack, resend, bounded) and
  hands whatever may be sent now to the host as one ``Transmit`` action;
* hands every other effect — spawn Kilo, subscribe, probe, prompt, abort, open a socket, exit — to
  the host's ``on_action`` to be executed through adapters, whose results come back as calls
  to the methods below.

Kilo streams up to thousands of events a second (one ``message.part.delta`` per token chunk), and
each is liveness for the agent link and, during a turn, progress for it: two transitions that do
nothing but re-arm a silence timer. A host that receives events in bursts (one network read) may
bracket them with ``begin_batch``/``end_batch``. Inside a batch such a re-arm (the link's
``event`` while ``streaming``, a running turn's ``progress``) is held back, a later one for the
same machine replacing it, until the batch ends or anything else is sent to any machine; and the
frames go out once, at the end. Every transition, effect and frame happens in the same order as
without a batch; only re-arms superseded at once by the next are skipped, and a timer is pushed
back from the batch's end instead of its last event (the same instant, give or take the batch's
own processing). Without a batch (the simulator, tests) each event is handled on its own.

Nothing here blocks, sleeps or does I/O; timers run on the injected clock.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping
from typing import Any, cast

import msgspec

from fsm.agents.dialect import Dialect
from fsm.agents.dialect import dialect as make_dialect
from fsm.agents.events import AGENT_HEARTBEAT, TurnTranslator, clip_error
from fsm.engine.clock import Clock
from fsm.engine.effects import (
    AgentStuck,
    Effect,
    EmitOutcome,
    NotifyTurns,
    OpenAgentLink,
    ReportState,
    ResendUnacked,
    SendHeartbeat,
    SendHello,
    StopAgent,
    SubmitPrompt,
    Subscribe,
)
from fsm.engine.events import Event
from fsm.engine.machine import Record, StateMachine
from fsm.engine.runner import MachineGroup
from fsm.machines import agent_link, ingest_link, turn, wrapper
from fsm.machines.timers import TimerValues
from fsm.wire.outbox import Outbox
from fsm.wire.protocol import (
    PROTOCOL_VERSION,
    SHORT_MAX,
    TEXT_MAX,
    WRAPPER_VERSION,
    AbortCommand,
    Ack,
    ControlFrame,
    EventFrame,
    Heartbeat,
    Hello,
    LifecycleFrame,
    OutcomeFrame,
    OutcomeStatus,
    PermissionCommand,
    PromptCommand,
    QuestionCommand,
    ReleaseCommand,
    Shutdown,
    Welcome,
)
from fsm.wire.slash import parse_slash
from fsm.wire.transmit import Transmit


class Identity(msgspec.Struct, frozen=True):
    wrapper_id: str
    agent_session: str
    user_id: str
    session_id: str
    version: str = WRAPPER_VERSION


# -- actions the core asks of its host (beyond the machines' own effects) --------------------


class PromptAgent(Effect, frozen=True):
    """``prompt_async`` on Kilo (the machines' ``SubmitPrompt`` with the prompt's content)."""

    command: PromptCommand
    resubmission: bool = False


class AgentCall(Effect, frozen=True):
    """A pass-through request to Kilo: permission reply, question reply or reject."""

    method: str
    args: dict[str, Any]


class Unavailable(Exception):
    """The wrapper cannot take work (its agent restart budget is spent, or it is stopping)."""


class UnknownMessage(KeyError):
    pass


class Unsupported(Exception):
    """The prompt needs a capability this wrapper's agent lacks; ``field`` is the request's."""

    def __init__(self, field: str, agent: str) -> None:
        super().__init__(f"{field}: not supported by this agent ({agent})")
        self.field = field
        self.agent = agent


CAPABILITY_FIELDS = {"commit_message": "auto_commit"}
"""Each agent capability a prompt field needs (``adapters.agents.base.CAPABILITIES``)."""


Action = Callable[[Effect], None]

HISTORY_LIMIT = 256
TURN_TERMINAL = frozenset(s.name for s in turn.DECLARATION.states if s.terminal)
_REARM_STATE = {agent_link.DECLARATION.name: "streaming", turn.DECLARATION.name: "running"}
"""Where an event only re-arms a timer: the link's ``event`` while streaming, a turn's
``progress`` while running (``note_progress`` is idempotent)."""
_RUN_KINDS = frozenset(("session.turn.open", "session.turn.close"))
_REQUEST_KINDS = frozenset(
    (
        "permission.asked",
        "question.asked",
        "permission.replied",
        "question.replied",
        "question.rejected",
        "session.turn.close",
    )
)


class WrapperCore:
    def __init__(
        self,
        clock: Clock,
        values: TimerValues,
        identity: Identity,
        on_action: Action,
        *,
        rng: random.Random | None = None,
        outbox: Outbox | None = None,
        on_record: Callable[[Record], None] | None = None,
        agent: str = "agent",
        dialect: str = "brackets",
        capabilities: frozenset[str] | None = None,
    ) -> None:
        """``agent``, ``dialect`` and ``capabilities`` are the agent's ``AgentSpec`` as data
        (the host passes them; None: every capability, as Kilo has)."""
        self.clock = clock
        self.agent = agent
        self.dialect: Dialect = make_dialect(dialect)
        self.capabilities = capabilities
        self.values = values
        self.identity = identity
        self.on_action = on_action
        self.rng = rng or random.Random(0)
        # Not `outbox or Outbox()`: an empty Outbox is falsy (it has __len__), and the host's
        # bounds would be silently replaced by the defaults.
        self.outbox = outbox if outbox is not None else Outbox()
        self._user_on_record = on_record
        self.group = MachineGroup(clock, self._on_effect)
        self.translator = TurnTranslator()
        self.generation = 0
        self.prompts: dict[str, PromptCommand] = {}
        self.outcomes: dict[str, EmitOutcome] = {}
        self.dropped_stale_events = 0
        self.stops_pending = 0
        """``StopAgent`` effects whose exit the host has not reported yet."""
        self.pending_requests: dict[str, str] = {}
        """Open permission/question ids → kind; Kilo leaves stale ones after an abort, so a
        turn close clears them (its README §7.8)."""
        self._batch = False
        self._held: dict[str, tuple[StateMachine[Any], str, dict[str, Any]]] = {}
        """In a batch: the latest pure re-arm of each machine, held back."""
        self._open_turns: dict[str, StateMachine[Any]] = {}
        """Turns not terminal yet, in the order they came."""
        self._run: list[str] | None = None
        """Kilo's open run (from ``session.turn.open`` to a close that is not ``superseded``):
        the messages delivered to it, a follow-up sent while it runs included (it ends with the
        run, acceptance 3 and 4). Kilo's events name no message, so this is what says whose
        they are: a run's events reach its own turns only."""
        self._joining: list[str] = []
        """Messages handed to Kilo while no run was open: they are the next run's."""
        self._last_run: list[str] = []
        """The run that closed last: Kilo's ``session.error`` may follow its close."""
        self.wrapper = self._machine(wrapper.SPEC, "wrapper")
        self.ingest = self._machine(ingest_link.SPEC, "ingest_link")
        self.link: StateMachine[Any] | None = None

    def _machine(self, spec: Any, machine_id: str, context: Any = None) -> StateMachine[Any]:
        return StateMachine(
            spec,
            self.values,
            machine_id=machine_id,
            context=context,
            rng=self.rng,
            on_record=self._on_record,
            # Bounded: a streaming turn adds a record per event, and nothing reads old ones
            # here (the control plane has every transition as a lifecycle frame).
            history_limit=HISTORY_LIMIT,
        )

    def _on_record(self, record: Record) -> None:
        """Every transition of the wrapper, agent link and turns goes to the control plane."""
        if (
            record.kind == "transition"
            and record.dest in TURN_TERMINAL
            and record.machine == turn.DECLARATION.name
        ):
            self._open_turns.pop(record.machine_id, None)
        if (
            record.kind == "transition"
            and record.dest == "accepted"
            and record.machine == turn.DECLARATION.name
        ):
            # Handed to Kilo (dispatched, or resubmitted after a loss): its run's from now.
            self._join(record.machine_id.split(":", 1)[1])
        if record.kind in ("start", "transition") and record.machine != "ingest_link":
            self.outbox.push(
                lambda seq: LifecycleFrame(
                    seq=seq,
                    machine=record.machine_id[:SHORT_MAX],
                    state=record.dest,
                    source=record.source,
                    trigger=record.trigger[:SHORT_MAX],
                    at=record.at,
                )
            )
            self._flush()
        if self._user_on_record is not None:
            self._user_on_record(record)

    def start(self) -> None:
        """Spawn the agent and connect to the control plane (both machines start at once)."""
        self.group.add(self.wrapper)
        self.group.add(self.ingest)

    # -- queries --------------------------------------------------------------------------------

    def turns(self) -> list[StateMachine[Any]]:
        return [m for mid, m in self.group.machines.items() if mid.startswith("turn:")]

    def active_turns(self) -> list[StateMachine[Any]]:
        return list(self._open_turns.values())

    def turn(self, message_id: str) -> StateMachine[Any]:
        machine = self.group.machines.get(f"turn:{message_id}")
        if machine is None:
            raise UnknownMessage(message_id)
        return machine

    @property
    def window_full(self) -> bool:
        """Connected, with most of the outbox's bound taken by frames not acknowledged yet.

        A host reading Kilo faster than the control plane acknowledges waits (a bounded while)
        when this is true: the outbox's bound is for riding out a lost connection, and events
        dropped on a healthy one because acks are merely in flight would be lost for nothing."""
        box = self.outbox
        return (
            len(box) * 4 >= box.max_frames * 3 or box.size_bytes * 4 >= box.max_bytes * 3
        ) and self.ingest.state == "connected"

    @property
    def degraded(self) -> bool:
        link_ok = self.link is not None and self.link.state == "streaming"
        return self.wrapper.state not in ("ready", "running", "idle") or not link_ok

    def status(self) -> dict[str, Any]:
        machines = {mid: m for mid, m in self.group.machines.items()}
        now = self.clock.now()
        return {
            "wrapper": self.wrapper.state,
            "agent_link": self.link.state if self.link else None,
            "ingest_link": self.ingest.state,
            "generation": self.generation,
            "degraded": self.degraded,
            "turns": {
                m.context.message_id: {"state": m.state, **self._outcome_of(m)}
                for m in self.turns()
            },
            "timers": {
                mid: {
                    name: {"deadline": round(deadline, 3), "remaining": round(deadline - now, 3)}
                    for name, deadline in m.deadlines().items()
                }
                for mid, m in machines.items()
                if m.timers
            },
            "outbox": {"frames": len(self.outbox), "bytes": self.outbox.size_bytes},
            "restart_budget_left": self.wrapper.budget_remaining("agent_restarts"),
        }

    def _outcome_of(self, machine: StateMachine[Any]) -> dict[str, str]:
        outcome = self.outcomes.get(machine.context.message_id)
        if outcome is None:
            return {}
        return {"status": outcome.status, "reason": outcome.reason, "error": outcome.error}

    # -- the job API (also reached by control-plane commands) ---------------------------------

    def prompt(self, command: PromptCommand) -> str:
        """Accept a prompt; it goes to Kilo at once if Kilo is up, else when it is. Raises
        Unsupported when it needs a capability the agent lacks (``auto_commit`` on OpenCode)."""
        if self.wrapper.terminal or self.wrapper.state == "stopping":
            raise Unavailable(f"wrapper is {self.wrapper.state}")
        if command.auto_commit and not self.supports("commit_message"):
            raise Unsupported(CAPABILITY_FIELDS["commit_message"], self.agent)
        mid = command.message_id
        if f"turn:{mid}" in self.group.machines:
            return mid  # idempotent: a resent command must not start a second turn
        self.prompts[mid] = command
        machine = self._machine(turn.SPEC, f"turn:{mid}", turn.TurnContext(message_id=mid))
        self._open_turns[machine.machine_id] = machine
        self.group.add(machine)
        self.group.send("wrapper", Event("turn_started", {"message_id": mid}))
        if self.wrapper.state in ("ready", "running", "idle", "stale"):
            self._dispatch(machine)
        return mid

    def _dispatch(self, machine: StateMachine[Any], *, in_order: bool = False) -> None:
        """Hand a queued turn to Kilo, unless a slash command sent before it is unfinished
        (``behind``: Kilo runs commands synchronously, and requests in flight together could reach
        it in either order; acceptance 6), or Kilo is still closing a run none of whose turns is
        live (every one was aborted): a prompt sent into that drain is dropped by Kilo, and the
        run's late close would end it. It is ``held`` until that close (``turn_abort_grace``).
        ``in_order``: the caller already knows nothing ahead of it holds it back."""
        if not in_order and self._behind_a_command(machine):
            self.group.send(machine.machine_id, Event("wait_command"))
            return
        run = self._run
        if run is not None and not any(self._live(mid) for mid in run):
            self.group.send(machine.machine_id, Event("defer"))
            return
        self.group.send(machine.machine_id, Event("dispatch"))

    def _is_command(self, machine: StateMachine[Any]) -> bool:
        prompt = self.prompts.get(machine.context.message_id)
        return prompt is not None and parse_slash(prompt.prompt) is not None

    def _behind_a_command(self, machine: StateMachine[Any]) -> bool:
        """A turn that came after an unfinished slash command, or after a turn still behind
        one, waits."""
        for other in self.active_turns():
            if other is machine:
                return False
            if other.state in TURN_TERMINAL:
                continue  # ending now: its outcome is what releases the turns behind it
            if other.state == "behind" or self._is_command(other):
                return True
        return False

    def _release_behind(self) -> None:
        """A turn ended: the turns behind no unfinished command go to Kilo, in order, up to and
        including the next command (whatever follows it waits for that one)."""
        for machine in self.active_turns():
            if machine.state in TURN_TERMINAL:
                continue
            if machine.state == "behind":
                self._dispatch(machine, in_order=True)
            if self._is_command(machine):
                return

    def _join(self, message_id: str) -> None:
        (self._run if self._run is not None else self._joining).append(message_id)

    def _live(self, message_id: str) -> bool:
        return f"turn:{message_id}" in self._open_turns

    def _targets(self, trigger: str) -> list[StateMachine[Any]]:
        """The turns a Kilo event is for: the open run's own; between runs, the last run's for
        its late error, and the rest for everyone still waiting on Kilo."""
        if self._run is not None:
            members = set(self._run)
            return [m for m in self.active_turns() if m.context.message_id in members]
        if trigger == "error_reported":
            # The last run's turns still finalizing wait for exactly this; else it is Kilo's
            # answer to a prompt it never opened a run for (an unknown command, a refused body).
            last, joining = set(self._last_run), set(self._joining)
            late = [
                m
                for m in self.active_turns()
                if m.context.message_id in last and m.state == "finalizing"
            ]
            return late or [m for m in self.active_turns() if m.context.message_id in joining]
        return self.active_turns()

    def _run_event(self, payload: dict[str, Any]) -> str:
        """Track Kilo's runs; returns what the event does to them (``open``, ``close`` or "")."""
        kind = payload.get("type")
        if kind == "session.turn.open":
            if self._run is None:
                self._run, self._joining = self._joining, []
            else:  # after a superseded close: the same run goes on with the next prompt
                self._run.extend(self._joining)
                self._joining = []
            return "open"
        if kind == "session.turn.close":
            reason = (payload.get("properties") or {}).get("reason")
            return "" if reason == "superseded" else "close"
        return ""

    def _run_closed(self) -> None:
        self._last_run = self._run if self._run is not None else []
        self._run = None
        for machine in self.active_turns():
            if machine.state == "held":
                self._send(machine.machine_id, Event("drained"))

    def _forget_runs(self) -> None:
        """Kilo is gone (or restarted): none of its runs will close."""
        self._run, self._joining, self._last_run = None, [], []
        self.dialect.reset()

    def abort(self, message_id: str | None = None) -> list[str]:
        targets = [self.turn(message_id)] if message_id else self.active_turns()
        for machine in targets:
            self.group.send(machine.machine_id, Event("cancel"))
        return [m.context.message_id for m in targets]

    def reply_permission(self, command: PermissionCommand) -> None:
        self.pending_requests.pop(command.request_id, None)
        args = {"request_id": command.request_id, "reply": command.reply}
        if command.message is not None:
            args["message"] = command.message
        self.on_action(AgentCall("reply_permission", args))

    def reply_question(self, command: QuestionCommand) -> None:
        self.pending_requests.pop(command.request_id, None)
        if command.answers is None:
            self.on_action(AgentCall("reject_question", {"request_id": command.request_id}))
        else:
            args = {"request_id": command.request_id, "answers": command.answers}
            self.on_action(AgentCall("reply_question", args))

    def stop(self) -> None:
        self.group.send("wrapper", Event("stop"))

    def recycle_ingest(self) -> None:
        self.group.send("ingest_link", Event("recycle"))

    # -- the agent's process and its event stream ---------------------------------------------

    def supports(self, capability: str) -> bool:
        return self.capabilities is None or capability in self.capabilities

    def agent_ready(self, agent_session_id: str | None = None) -> None:
        if agent_session_id is not None:
            self.translator.session_id = agent_session_id
            self.dialect.session_id = agent_session_id
        self.group.send("wrapper", Event("agent_ready"))

    def agent_exited(self, code: int | None) -> None:
        """Kilo exited. Hosts answer every ``StopAgent`` with exactly one call here, after the
        stop completed; a stopped-but-hung Kilo takes its whole stop grace, longer than the restart
        backoff, so that answer can arrive when the *next* Kilo is already starting. It is the
        exit we asked for, not the new agent's: it must not cost a restart."""
        if self.stops_pending:
            self.stops_pending -= 1
            if self.wrapper.state not in ("restarting", "stopping"):
                return
        self.group.send("wrapper", Event("agent_exited", {"code": code}))

    def agent_event(self, generation: int, payload: dict[str, Any]) -> None:
        """One event of the agent's stream, from the subscription of ``generation``."""
        link = self.link
        if generation != self.generation or link is None:
            self.dropped_stale_events += 1
            return
        kind = payload.get("type", "")
        if kind != "server.connected" and link.state == "streaming":
            self._rearm(link, "event", {"generation": generation})
        else:
            trigger = "connected" if kind == "server.connected" else "event"
            self._send("agent_link", Event(trigger, {"generation": generation}))
        if kind == AGENT_HEARTBEAT:
            # Liveness between this wrapper and its agent only: it re-armed the link's silence
            # window above, and that is all it means. Forwarded, it was a stored event row, an
            # ack and a sequence number every 10 s per session (100 rows/s for 1,000 idle
            # sessions, replayed to every client that resumes a stream) telling the control plane
            # nothing its own ingest heartbeat does not.
            return
        for event in self.dialect.expand(payload):
            self._push_event(generation, event)
            self._turn_event(event)
        if not self._batch:
            self._flush()

    def _push_event(self, generation: int, event: dict[str, Any]) -> None:
        self.outbox.push(lambda seq: EventFrame(seq=seq, generation=generation, event=event))

    def _turn_event(self, payload: dict[str, Any]) -> None:
        """One event in Kilo's dialect (the agent's own, or synthesised by its ``Dialect``)."""
        kind = payload.get("type", "")
        if kind in _REQUEST_KINDS:
            self._track_requests(kind, payload.get("properties") or {})
        run_change = self._run_event(payload) if kind in _RUN_KINDS else ""
        for name, data in self.translator.triggers(payload):
            for machine in self._targets(name):
                if name == "progress" and machine.state == "running":
                    self._rearm(machine, name, data)
                else:
                    self._send(machine.machine_id, Event(name, data))
        if run_change == "close":
            self._run_closed()

    def begin_batch(self) -> None:
        """Kilo events that arrived together follow, until ``end_batch``."""
        self._batch = True

    def end_batch(self) -> None:
        self._batch = False
        # Frames first: the held re-arms make none (they are released only into the state
        # that made them pure re-arms), and the control plane should not wait for timers.
        self._flush()
        self._release_rearms()

    def _send(self, machine_id: str, event: Event) -> None:
        """Anything but a pure re-arm: held-back re-arms go first, so the order is kept. An
        event the machine ignores in its state (a turn still finalizing sees the next turn's
        progress) changes nothing anywhere, so it needs no such care."""
        if self._held:
            machine = self.group.machines.get(machine_id)
            if machine is not None and machine.can_handle(event.trigger):
                self._release_rearms()
        self.group.send(machine_id, event)

    def _rearm(self, machine: StateMachine[Any], trigger: str, data: dict[str, Any]) -> None:
        """An event that only re-arms ``machine``'s timer in its current state (the caller
        checked the state). In a batch it is held back until the batch ends or anything else is
        sent to any machine; a later one for the same machine replaces it (its re-arm would
        supersede this one at once, with nothing in between to tell them apart)."""
        if self._batch:
            self._held[machine.machine_id] = (machine, trigger, data)
        else:
            self.group.send(machine.machine_id, Event(trigger, data))

    def _release_rearms(self) -> None:
        held, self._held = self._held, {}
        for machine, trigger, data in held.values():
            # Anything that reached the machine meanwhile (a timer, the job API) went first; if
            # it moved the machine on, the held re-arm belonged to the state it left: drop it.
            current = self.group.machines.get(machine.machine_id)
            if current is machine and machine.state == _REARM_STATE[machine.definition.name]:
                self.group.send(machine.machine_id, Event(trigger, data))

    def _catch_up_requests(self, generation: int, pending: Mapping[str, str]) -> None:
        """The requests the agent lists against the ones its events told us of: each one missed
        becomes a synthesised ``<kind>.asked``, each one gone a ``<kind>.replied`` (answered
        meanwhile, e.g. from another client), marked ``synthetic`` as the dialect's are."""
        mark: dict[str, Any] = {"sessionID": self.translator.session_id, "synthetic": True}
        missed = [
            {"type": f"{kind}.asked", "properties": {"id": rid, **mark}}
            for rid, kind in pending.items()
            if rid not in self.pending_requests and kind in ("permission", "question")
        ]
        gone = [
            {"type": f"{kind}.replied", "properties": {"requestID": rid, **mark}}
            for rid, kind in self.pending_requests.items()
            if rid not in pending
        ]
        for event in (*gone, *missed):
            self._push_event(generation, event)
            self._turn_event(event)
        if (gone or missed) and not self._batch:
            self._flush()

    def _track_requests(self, kind: str, props: dict[str, Any]) -> None:
        if kind in ("permission.asked", "question.asked") and isinstance(props.get("id"), str):
            self.pending_requests[props["id"]] = kind.split(".")[0]
        elif kind in ("permission.replied", "question.replied", "question.rejected"):
            self.pending_requests.pop(str(props.get("requestID", "")), None)
        elif kind == "session.turn.close":
            self.pending_requests.clear()

    def prompt_failed(self, message_id: str, error: str) -> None:
        """Kilo refused the prompt itself (HTTP error): the turn fails with Kilo's reason."""
        machine_id = f"turn:{message_id}"
        machine = self.group.machines.get(machine_id)
        if machine is None or not machine.context.error:
            # Kilo's own session.error (which can come first) says more than its HTTP status.
            self.group.send(machine_id, Event("error_reported", {"error": error}))
        self.group.send(machine_id, Event("turn_closed", {"reason": "error"}))

    def stream_ended(self, generation: int) -> None:
        self.group.send("agent_link", Event("stream_ended", {"generation": generation}))

    def probe_result(self, generation: int, healthy: bool) -> None:
        if generation == self.generation:
            self.group.send("agent_link", Event("probe_ok" if healthy else "probe_failed"))

    def reconciled(
        self,
        generation: int,
        busy: bool,
        close_reason: str,
        error: str = "",
        pending: Mapping[str, str] | None = None,
    ) -> None:
        """Result of re-reading the agent after a resubscription: a turn that closed while the
        stream was down still gets its outcome. ``pending``: the session's permission requests
        and questions still waiting (id -> ``permission``/``question``, the agent's ``GET
        /permission`` and ``GET /question``); one asked or answered while the stream was down is
        caught up (``_catch_up_requests``), so it can be answered and the turn waits for it."""
        if generation != self.generation:
            return
        if busy:
            if pending is not None:
                self._catch_up_requests(generation, pending)
            return
        for machine in self.active_turns():
            if machine.state in ("accepted", "running", "waiting_user"):
                if error:
                    self.group.send(machine.machine_id, Event("error_reported", {"error": error}))
                self.group.send(machine.machine_id, Event("turn_closed", {"reason": close_reason}))
        self._run_closed()  # Kilo is idle: whatever run was open has closed
        self.dialect.reset()

    # -- the ingest socket --------------------------------------------------------------------

    def socket_open(self) -> None:
        self.group.send("ingest_link", Event("socket_open"))

    def socket_failed(self) -> None:
        self.group.send("ingest_link", Event("socket_failed"))

    def socket_closed(self) -> None:
        self.group.send("ingest_link", Event("socket_closed"))

    def control_frame(self, frame: ControlFrame) -> None:
        if isinstance(frame, Welcome):
            self.outbox.ack(frame.acked)
            self.group.send("ingest_link", Event("welcome"))
        elif isinstance(frame, Shutdown):
            self.group.send("ingest_link", Event("shutdown", {"reason": frame.reason}))
        elif isinstance(frame, Ack):
            self.outbox.ack(frame.seq)
        elif isinstance(frame, PromptCommand):
            try:
                self.prompt(frame)
            except Unavailable:
                self._emit_outcome(EmitOutcome(frame.message_id, "failed", "agent_unavailable"))
            except Unsupported as exc:
                self._emit_outcome(EmitOutcome(frame.message_id, "failed", "unsupported", str(exc)))
        elif isinstance(frame, AbortCommand):
            # Nothing to abort when the turn already ended or never existed here.
            with contextlib.suppress(UnknownMessage):
                self.abort(frame.message_id)
        elif isinstance(frame, PermissionCommand):
            self.reply_permission(frame)
        elif isinstance(frame, QuestionCommand):
            self.reply_question(frame)
        elif isinstance(frame, ReleaseCommand):
            self.stop()

    # -- effects --------------------------------------------------------------------------------

    def _on_effect(self, machine_id: str, effect: Effect) -> None:
        if isinstance(effect, OpenAgentLink):
            self._open_agent_link()
        elif isinstance(effect, NotifyTurns):
            self._forget_runs()
            for machine in self.active_turns():
                self.group.send(machine.machine_id, Event(effect.trigger))
        elif isinstance(effect, AgentStuck):
            self.group.send("wrapper", Event("agent_hung", {"message_id": effect.message_id}))
        elif isinstance(effect, EmitOutcome):
            self._emit_outcome(effect)
            self.group.send("wrapper", Event("turn_ended", {"message_id": effect.message_id}))
            self._release_behind()
        elif isinstance(effect, ReportState):
            if effect.state == "ready":
                for machine in self.active_turns():
                    if machine.state == "queued":
                        self._dispatch(machine)
            self._flush()
        elif isinstance(effect, SendHello):
            ident = self.identity
            hello = Hello(
                wrapper_id=ident.wrapper_id,
                version=ident.version,
                protocol=PROTOCOL_VERSION,
                agent_session=ident.agent_session,
                user_id=ident.user_id,
                session_id=ident.session_id,
            )
            self.on_action(Transmit([hello]))
        elif isinstance(effect, SendHeartbeat):
            beat = Heartbeat(
                state=self.wrapper.state,
                active=bool(self.active_turns()),
                degraded=self.degraded,
            )
            self.on_action(Transmit([beat]))
        elif isinstance(effect, ResendUnacked):
            self.outbox.rewind()
            self._flush()
        elif isinstance(effect, SubmitPrompt):
            command = self.prompts[effect.message_id]
            self.on_action(PromptAgent(command, effect.resubmission))
        elif isinstance(effect, Subscribe):
            self.generation = effect.generation
            self.on_action(effect)
        elif isinstance(effect, StopAgent):
            self.stops_pending += 1  # before the host runs it: a host may answer at once
            self.on_action(effect)
        else:
            self.on_action(effect)

    def _open_agent_link(self) -> None:
        if self.link is not None:
            self.group.remove(self.link.machine_id)
        context = agent_link.AgentLinkContext(generation=self.generation)
        self.link = self._machine(agent_link.SPEC, "agent_link", context)
        self.group.add(self.link)

    def note(self, kind: str, properties: dict[str, Any]) -> None:
        """An event of the wrapper's own (e.g. ``wrapper.auto_commit``), in order with Kilo's on
        the ingest stream; generation 0 marks it as not Kilo's."""
        event = {"type": f"wrapper.{kind}", "properties": properties}
        self.outbox.push(lambda seq: EventFrame(seq=seq, generation=0, event=event))
        self._flush()

    def _emit_outcome(self, outcome: EmitOutcome) -> None:
        if outcome.message_id in self.outcomes:
            return
        self.outcomes[outcome.message_id] = outcome
        self.outbox.push(
            lambda seq: OutcomeFrame(
                seq=seq,
                message_id=outcome.message_id,
                # The turn machine's terminal states are exactly the three outcome statuses.
                status=cast(OutcomeStatus, outcome.status),
                # Within the frame's bounds (an agent's error text can be anything): a frame
                # the control plane refuses would be resent, and refused, forever. The error is
                # the agent's own text, its first 1 KiB: the reason's detail the user is shown.
                reason=outcome.reason[:SHORT_MAX],
                error=clip_error(outcome.error)[:TEXT_MAX],
            )
        )
        self._flush()

    def _flush(self) -> None:
        if self.ingest.state != "connected":
            return
        frames = self.outbox.take_unsent()
        if frames:
            self.on_action(Transmit(list(frames)))
