"""What must hold in every run, scripted or random, after every step.

The checks watch the run from the outside — records of the machines, the session's log, the frames
the control plane accepted, the machines' states — and never reach into a core's decisions, so a
broken machine cannot hide its own mistake:

* ``one_outcome`` — a message reaches at most one terminal state on the control plane, and a
  wrapper reports at most one outcome per message (after settling: *exactly* one, ``settled``);
* ``stuck`` — no live machine sits in a non-terminal state with no armed timer and nothing that
  can still wake it (the only rest allowed is a ``stopped`` session waiting for its user; a
  ``running`` wrapper is woken by its turns, a ``stale`` one by its probing agent link);
* ``timer_owner`` — a timer only ever fires in a state of its own span, and is handled there;
* ``in_order`` — the session's log ids strictly increase, and Kilo's events appear in the order
  Kilo emitted them;
* ``lost`` — the frames a wrapper sends reach the control plane with no gap in their sequence
  numbers except where an ``events_dropped`` marker accounts for the missing ones: nothing that
  fit the outbox is lost;
* ``converged`` (after settling) — a live wrapper runs no turn whose message the control plane has
  already ended (the source system's first weakness).

The user-visible truth (issue 13): what the user is told is what the agent did.

* ``one_outcome`` above: every message ends exactly once (``settled``: it does end);
* ``agree`` — a message's status on the control plane equals the wrapper's outcome for it
  whenever both exist. Allowed differences are verdicts the control plane had to take without
  the wrapper's word: the echo of its own backstop (a turn it failed ``no_progress`` or
  ``execution_limit`` and aborted comes back ``cancelled``; the backstop only decides when the
  wrapper's own clock did not), and the late outcome of the very wrapper it gave up on unheard
  (``connection_lost``/``agent_restarted``: a partition hid that wrapper, whose frames arrive
  after its replacement) or that a client's stop released (``cancelled`` at once, as asked).
  Any *other* wrapper's outcome must agree — the old rule's held prompt ran on the replacement
  and reported ``completed`` for a message failed ``agent_restarted``;
* ``after_end`` — a message that ended is never delivered or run afterwards: no wrapper starts a
  turn for it (the old rule's held prompt did, on the replacing wrapper). Not a prompt already
  in flight when the session's stop cancelled its queued message: nothing can call it back, and
  the wrapper's release follows it on the same ordered link;
* ``lost`` also covers messages: an ``accepted`` message never goes back to ``queued`` or
  disappears — nothing accepted is lost (and ``settled`` says it ends);
* ``own_turn`` — a message is ended only by the Kilo turn it was delivered to: a wrapper's turn
  ``completed`` only if the fake Kilo closed ``completed`` a run the message was delivered to (a
  follow-up queued behind a run is part of it and ends with it, acceptance 3 and 4), and
  ``cancelled`` only if the client cancelled it or Kilo closed its run ``interrupted``. The fake
  Kilo is the ground truth here: it notes every final close with the messages it ended
  (``agent.turn_closed``). Kilo's closes name no message, so a wrapper that gave every close to
  every open turn ended a prompt sent during an abort's drain with the aborted turn's late close
  (and Kilo had dropped that prompt: it never ran). The wrapper's own verdicts (no progress,
  limits, a lost agent) need no Kilo turn.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import msgspec

from fsm.control.core import LogEntry
from fsm.engine.machine import Record, StateMachine
from fsm.engine.model import MachineDef
from fsm.engine.validate import timer_span
from fsm.machines.turn import NOT_SENT
from fsm.wire.protocol import EventsDropped, LifecycleFrame, OutcomeFrame, SeqFrame

TERMINAL = ("completed", "failed", "cancelled")
REST = frozenset({("session", "stopped")})
GIVEN_UP = ("agent_restarted", "connection_lost", "cancelled")
"""What the control plane ends a message with without its wrapper's word: a lost wrapper's
accepted messages, and a client's stop (cancelled at once; a turn the wrapper finished in the
instant before the release reached it is still shown cancelled — the one known gap)."""
BACKSTOP_REASONS = ("no_progress", "execution_limit")
"""What the control plane's own backstops (hung session, max runtime) fail a message with; they
abort the wrapper's turn, which then ends ``cancelled``."""


class Violation(msgspec.Struct, frozen=True):
    at: float
    invariant: str
    session: str
    detail: str

    def __str__(self) -> str:
        from fsm.sim.timeline import clock_label

        return f"{clock_label(self.at)} {self.session}: {self.invariant}: {self.detail}"


def _definition(machine: str) -> MachineDef:
    # Looked up at check time, not import time, so a test's deliberately broken machine counts.
    module = importlib.import_module(f"fsm.machines.{machine}")
    spec: Any = module.SPEC
    definition: MachineDef = spec.definition
    return definition


class Invariants:
    def __init__(self, *, stop_at_first: bool = False) -> None:
        self.violations: list[Violation] = []
        self.stop_at_first = stop_at_first
        self._terminal: set[tuple[str, str]] = set()
        self._outcomes: set[tuple[str, str | None, str]] = set()
        self._log_id: dict[str, int] = {}
        self._event_id: dict[str, str] = {}
        self._next_seq: dict[str, tuple[str | None, int]] = {}
        self._timers: dict[str, dict[str, tuple[str, frozenset[str]]]] = {}
        self._ended: dict[tuple[str, str], tuple[str, str]] = {}
        """(session, message) → (status, reason) it ended with on the control plane."""
        self._in_flight: set[tuple[str, str]] = set()
        """Messages the session's stop cancelled while they were still queued: their prompt
        may already be on its way, the wrapper's release right behind it."""
        self._reported: dict[tuple[str, str], tuple[str, str | None]] = {}
        """(session, message) → (the last outcome a wrapper reported for it, that wrapper)."""
        self._accepted_on: dict[tuple[str, str], str | None] = {}
        """(session, message) → the wrapper whose turn took it while it was unfinished."""
        self._rank: dict[tuple[str, str], int] = {}
        self._agent_closed: dict[tuple[str, str], set[str]] = {}
        """(session, message) → the reasons of the fake Kilo's final closes of runs it was in."""

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def _violate(self, at: float, invariant: str, session: str, detail: str) -> None:
        self.violations.append(Violation(at, invariant, session, detail))

    # -- hooks -------------------------------------------------------------------------------------

    def on_note(self, session: str, action: str, detail: str) -> None:
        """What a fake said it did (``FakeAgent``'s ``agent.turn_closed <reason> <ids…>``)."""
        if action == "agent.turn_closed":
            reason, *messages = detail.split()
            for mid in messages:
                self._agent_closed.setdefault((session, mid), set()).add(reason)

    def _own_turn(self, session: str, who: str, record: Record) -> None:
        mid = record.machine_id.split(":", 1)[1]
        closes = self._agent_closed.get((session, mid), set())
        if record.dest == "completed" and "completed" not in closes:
            detail = "no Kilo run it was delivered to completed"
        elif (
            record.dest == "cancelled"
            and record.trigger != "cancel"
            and ("interrupted" not in closes)
        ):
            detail = "nobody cancelled it and no Kilo run it was delivered to was interrupted"
        else:
            return
        self._violate(
            record.at,
            "own_turn",
            session,
            f"{who}: message {mid} ended {record.dest!r} ({record.trigger}), but {detail} "
            f"(Kilo closed its runs: {sorted(closes) or 'none'})",
        )

    def on_record(self, session: str, who: str, record: Record) -> None:
        if record.kind == "transition" and record.machine == "turn" and record.dest in TERMINAL:
            self._own_turn(session, who, record)
        if record.kind == "start" and record.machine == "turn":
            mid = record.machine_id.split(":", 1)[1]
            ended = self._ended.get((session, mid))
            if ended is not None and (session, mid) not in self._in_flight:
                self._violate(
                    record.at,
                    "after_end",
                    session,
                    f"{who}: message {mid} was delivered and started after the control plane "
                    f"ended it {ended[0]!r} ({ended[1]})",
                )
        if not record.timer or record.kind in ("timer_dropped", "start"):
            return
        spans = self._timers.get(record.machine)
        if spans is None:
            d = _definition(record.machine)
            spans = {t.name: (s.name, timer_span(s.name, t)) for s, t in d.timers()}
            self._timers[record.machine] = spans
        declaring, span = spans[record.timer]
        if record.source not in span:
            self._violate(
                record.at,
                "timer_owner",
                session,
                f"{who}: timer {record.timer!r} of {declaring!r} fired in {record.source!r}",
            )
        elif record.kind == "ignored":
            self._violate(
                record.at,
                "timer_owner",
                session,
                f"{who}: timer {record.timer!r} expired in {record.source!r} and nothing took it "
                f"({record.reason})",
            )

    def on_log(self, session: str, entry: LogEntry) -> None:
        last = self._log_id.get(session, 0)
        if entry.id <= last:
            self._violate(entry.at, "in_order", session, f"log id {entry.id} after {last}")
        self._log_id[session] = entry.id
        if entry.kind == "message":
            key = (session, str(entry.data["id"]))
            state = str(entry.data.get("state"))
            rank = 2 if state in TERMINAL else 1 if state in ("accepted", "running") else 0
            if rank < self._rank.get(key, 0):
                self._violate(entry.at, "lost", session, f"message {key[1]} went back to {state}")
            if (
                rank == 2
                and self._rank.get(key, 0) == 0
                and entry.data.get("reason") == "cancelled"
            ):
                self._in_flight.add(key)
            self._rank[key] = rank
        if entry.kind == "message" and entry.data.get("state") in TERMINAL:
            key = (session, str(entry.data["id"]))
            if key in self._terminal:
                self._violate(
                    entry.at, "one_outcome", session, f"message {key[1]} ended a second time"
                )
            self._terminal.add(key)
            status, reason = str(entry.data["state"]), str(entry.data.get("reason", ""))
            self._ended[key] = (status, reason)
            reported = self._reported.get(key)
            if reported is not None:
                self._agree(entry.at, session, key[1], *reported)
        elif entry.kind == "event":
            event_id = str(entry.data["event"].get("id", ""))
            previous = self._event_id.get(session, "")
            if event_id and event_id <= previous:
                self._violate(
                    entry.at,
                    "in_order",
                    session,
                    f"Kilo event {event_id} logged after {previous}",
                )
            if event_id:
                self._event_id[session] = max(previous, event_id)

    def _agree(self, at: float, session: str, mid: str, reported: str, wrapper: str | None) -> None:
        status, reason = self._ended[(session, mid)]
        echo = reported == "cancelled" and reason in BACKSTOP_REASONS
        given_up = reason in GIVEN_UP and self._accepted_on.get((session, mid)) == wrapper
        if reported != status and not echo and not given_up:
            self._violate(
                at,
                "agree",
                session,
                f"message {mid} is {status!r} ({reason}) on the control plane but its wrapper "
                f"reported {reported!r}",
            )

    def on_frame(self, session: str, at: float, frame: SeqFrame, wrapper_id: str | None) -> None:
        """A sequenced frame the control plane accepted (its seq was new)."""
        owner, expected = self._next_seq.get(session, (None, 1))
        if owner != wrapper_id:
            expected = 1
        if frame.seq != expected:
            self._violate(
                at,
                "lost",
                session,
                f"wrapper {wrapper_id}: frames {expected}..{frame.seq - 1} never reached the "
                f"control plane and no events_dropped marker covers them",
            )
        last = frame.last_seq if isinstance(frame, EventsDropped) else frame.seq
        self._next_seq[session] = (wrapper_id, last + 1)
        if isinstance(frame, LifecycleFrame) and frame.machine.startswith("turn:"):
            mkey = (session, frame.machine[5:])
            if frame.state not in NOT_SENT and mkey not in self._ended:
                self._accepted_on.setdefault(mkey, wrapper_id)
        if isinstance(frame, OutcomeFrame):
            mkey = (session, frame.message_id)
            self._reported[mkey] = (frame.status, wrapper_id)
            if mkey in self._ended:
                self._agree(at, session, frame.message_id, frame.status, wrapper_id)
            key = (session, wrapper_id, frame.message_id)
            if key in self._outcomes:
                self._violate(
                    at,
                    "one_outcome",
                    session,
                    f"wrapper {wrapper_id} reported message {frame.message_id} twice",
                )
            self._outcomes.add(key)

    # -- state checks ------------------------------------------------------------------------------

    def check_machines(
        self, at: float, session: str, machines: Iterable[tuple[str, StateMachine[Any]]]
    ) -> None:
        """``machines``: (label, machine) of one live host; a host that is stopped or dead is
        not checked (its machines cannot run, and a dead one's are gone)."""
        listed = list(machines)
        active_turn = any(m.definition.name == "turn" and not m.terminal for _, m in listed)
        link = next((m for _, m in listed if m.definition.name == "agent_link"), None)
        for label, machine in listed:
            if machine.terminal or machine.timers:
                continue
            name, state = machine.definition.name, machine.state
            if (name, state) in REST:
                continue
            if name == "wrapper" and state == "running" and active_turn:
                continue
            if (
                name == "wrapper"
                and state == "stale"
                and link is not None
                and link.state in ("silent", "probing")
            ):
                continue
            self._violate(
                at,
                "stuck",
                session,
                f"{label} is in {state!r} with no armed timer and nothing that can wake it",
            )

    def check_settled(
        self,
        at: float,
        session: str,
        messages: dict[str, str],
        live_turns: dict[str, str],
    ) -> None:
        """After the world was left alone long enough for every timer to have done its work."""
        for mid, state in messages.items():
            if state not in TERMINAL:
                self._violate(
                    at, "settled", session, f"message {mid} is still {state!r} after settling"
                )
        for mid, state in live_turns.items():
            if messages.get(mid) in TERMINAL:
                self._violate(
                    at,
                    "converged",
                    session,
                    f"the wrapper still runs turn {mid} ({state}) that the control plane ended "
                    f"{messages[mid]!r}",
                )
