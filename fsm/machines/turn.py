"""``turn``: one prompt's life inside the wrapper, from receipt to exactly one outcome.

Theory of operation
-------------------
A turn is ``queued`` until the agent can take it (``behind`` while a slash command sent before
it runs, so messages reach Kilo in order; ``held`` while Kilo is still closing a turn
that was aborted: a prompt sent into that drain is dropped by Kilo, and the aborted turn's late
``session.turn.close interrupted`` would be taken for the new prompt's), ``accepted`` once Kilo
has the prompt,
``running`` once Kilo works on it, ``waiting_user`` while Kilo waits on a permission or question,
and ``finalizing`` between Kilo's ``session.turn.close`` and the outcome — Kilo may send the
``session.error`` that explains a close just *after* the close, so the outcome waits a short
grace for it. The three terminal states each emit the one outcome the turn will ever have; any
later event (a late or duplicate close) is ignored by the engine because the machine is terminal.

Timers:
* ``hard_cap`` (span, from ``queued`` through ``finalizing``): the turn's total budget; on expiry
  the agent is told to abort and the turn fails ``execution_limit``.
* ``no_progress`` (silence, in ``running``): pushed back only by real progress (text, reasoning,
  tool events); heartbeats and busy/retry statuses do not count. Leaving ``running`` for
  ``waiting_user`` pauses it; coming back arms a fresh window. While a tool part is running the
  expiry only re-arms the window (a long ``npm install`` is progress nobody hears).
* ``finalize`` (state, in ``finalizing``): the grace for the late error.

When the agent is lost (crash or hang), a turn that made no progress yet is resubmitted once (back
to ``queued``, dispatched again when the agent is back); otherwise it fails ``agent_restarted``.
A turn Kilo took and never started within the no-progress window fails ``no_progress`` and says
Kilo is wedged (``AgentStuck``): the wrapper restarts Kilo rather than hand it the next prompt.

What counts as progress is declared once, in ``AGENT_EVENTS`` below, next to the machine it drives:
only real model output (non-empty text/reasoning, a tool call's state changes, a step's finish)
is ``progress``. Kilo's own bookkeeping — the empty text part it opens before the first token, the
"Initializing snapshot…" spinner, statuses, heartbeats, ``message.updated`` — is not: counting it
made a hang at the first-token boundary look like a turn that had worked (failed
``agent_restarted`` instead of resubmitted), and kept a hung turn alive forever. While a question
or permission is pending (``waiting_user``) nothing but its answer, the close or a failure leaves
that state: any event after ``question.asked`` used to flip the turn back to ``running``.

A network wait (``session.network.asked``: the model endpoint unreachable or timed out) is not a
user question either: nobody in fsm-agent answers it, so it is Kilo's final word on the turn
(``agent_gave_up``): the turn fails at once with Kilo's own text and Kilo's turn is aborted, instead
of waiting out the no-progress window and failing with an empty error. A ``retry`` status is not
final (Kilo recovers from it by itself) and not progress; its message is kept as the detail a
later failure carries when Kilo said nothing better.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import msgspec

from fsm.engine.effects import AbortAgentTurn, AgentStuck, EmitOutcome, SubmitPrompt
from fsm.engine.events import Event
from fsm.engine.model import MachineDef, State, on, silence_timer, span_timer, state_timer
from fsm.engine.spec import MachineSpec
from fsm.machines.timers import WRAPPER_TIMERS


class TurnContext(msgspec.Struct):
    message_id: str = ""
    progressed: bool = False
    resubmitted: bool = False
    tools_running: list[str] = msgspec.field(default_factory=list)
    close_reason: str = ""
    reason: str = ""
    error: str = ""
    detail: str = ""
    """Kilo's last retry message: the error text of a failure Kilo gave no error for."""


NOT_SENT = ("queued", "behind", "held")
"""States of a turn whose prompt the wrapper has not handed to Kilo yet: nothing runs it."""
ACTIVE = (*NOT_SENT, "accepted", "running", "waiting_user", "finalizing")
LOST = ("accepted", "running", "waiting_user")

DECLARATION = MachineDef(
    name="turn",
    initial="queued",
    doc="One prompt, from receipt by the wrapper to exactly one outcome.",
    states=(
        State(
            "queued",
            timers=(span_timer("hard_cap", "turn_hard_cap", "hard_cap", span=ACTIVE[1:]),),
            doc="received; waiting for the agent to be ready",
        ),
        State(
            "behind",
            doc="a slash command sent before it is still running: messages stay in order",
        ),
        State(
            "held",
            timers=(state_timer("drain_wait", "turn_abort_grace", "drained"),),
            doc="Kilo is closing an aborted turn; the prompt waits for that close",
        ),
        State(
            "accepted",
            # Kilo can answer prompt_async and never open the turn (seen after an abort raced
            # the prompt: `session.drain.interrupted`, then idle): the no-progress window runs
            # from the hand-over too, or the turn would wait out the hard cap.
            timers=(state_timer("not_started", "turn_no_progress", "no_progress"),),
            doc="Kilo has the prompt (prompt_async answered)",
        ),
        State(
            "running",
            timers=(
                silence_timer(
                    "no_progress",
                    "turn_no_progress",
                    "no_progress",
                    rearmed_by=("progress", "tool_started", "tool_finished", "no_progress"),
                ),
            ),
            doc="Kilo is working on it",
        ),
        State("waiting_user", doc="a permission or question is pending"),
        State(
            "finalizing",
            timers=(state_timer("finalize", "turn_finalize_grace", "finalize"),),
            doc="turn closed; waiting briefly for the error that explains it",
        ),
        State("completed", terminal=True, on_enter=("emit_completed",)),
        State("failed", terminal=True, on_enter=("emit_failed",)),
        State("cancelled", terminal=True, on_enter=("emit_cancelled",)),
    ),
    transitions=(
        on("dispatch", "queued", "accepted", effects="submit_prompt"),
        on("defer", "queued", "held", doc="Kilo still drains an aborted turn"),
        on("wait_command", "queued", "behind", doc="a command ahead of it is unfinished"),
        on("dispatch", "behind", "accepted", effects="submit_prompt", doc="the command ended"),
        on(
            "drained",
            "held",
            "accepted",
            effects="submit_prompt",
            doc="the aborted turn closed (or its close is overdue)",
        ),
        on("agent_lost", "held", "queued", doc="sent to the next Kilo once it is ready"),
        on("started", "accepted", "running"),
        on("progress", "accepted", "running", effects="note_progress"),
        on("progress", "running", None, effects="note_progress"),
        on("tool_started", "accepted", "running", effects="note_tool_started"),
        on("tool_started", ("running", "waiting_user"), None, effects="note_tool_started"),
        on("tool_finished", ("running", "waiting_user"), None, effects="note_tool_finished"),
        on("retrying", (*LOST, "finalizing"), None, effects="note_detail"),
        on(
            "agent_gave_up",
            LOST,
            "failed",
            effects=("note_error", "abort_agent_turn", "reason_agent_error"),
        ),
        on("asked", ("accepted", "running"), "waiting_user"),
        on("answered", "waiting_user", "running"),
        on("no_progress", "running", None, guard="tool_running"),
        on(
            "no_progress",
            "accepted",
            "failed",
            effects=("abort_agent_turn", "reason_no_progress", "agent_stuck"),
            doc="Kilo never started it: Kilo is wedged and is restarted",
        ),
        on(
            "no_progress",
            "running",
            "failed",
            effects=("abort_agent_turn", "reason_no_progress"),
        ),
        on(
            "hard_cap",
            ACTIVE,
            "failed",
            effects=("abort_agent_turn", "reason_execution_limit"),
        ),
        on("turn_closed", LOST, "finalizing", effects="note_close"),
        on("error_reported", (*LOST, "finalizing"), None, effects="note_error"),
        on("finalize", "finalizing", "completed", guard="closed_completed"),
        on("finalize", "finalizing", "cancelled", guard="closed_interrupted"),
        on("finalize", "finalizing", "failed", effects="reason_agent_error"),
        on("agent_lost", LOST, "queued", guard="can_resubmit", effects="mark_resubmitted"),
        on("agent_lost", LOST, "failed", effects="reason_agent_restarted"),
        on("agent_lost", "finalizing", "completed", guard="closed_completed"),
        on("agent_lost", "finalizing", "failed", effects="reason_agent_error"),
        on("agent_unavailable", ACTIVE, "failed", effects="reason_agent_unavailable"),
        on("connection_lost", ACTIVE, "failed", effects="reason_connection_lost"),
        on("cancel", ("queued", "behind", "held"), "cancelled", effects="reason_cancelled"),
        on("cancel", LOST, "cancelled", effects=("abort_agent_turn", "reason_cancelled")),
        on("fault", ACTIVE, "failed", effects="reason_fault"),
    ),
)


def _reason(reason: str) -> Callable[[TurnContext, Event], None]:
    def set_reason(ctx: TurnContext, event: Event) -> None:
        ctx.reason = reason
        if "error" in event.data and not ctx.error:
            ctx.error = str(event.data["error"])

    return set_reason


def _submit(ctx: TurnContext, _event: Event) -> SubmitPrompt:
    return SubmitPrompt(ctx.message_id, resubmission=ctx.resubmitted)


def _note_progress(ctx: TurnContext, _event: Event) -> None:
    ctx.progressed = True
    ctx.detail = ""  # Kilo recovered from whatever it was retrying


def _tool_started(ctx: TurnContext, event: Event) -> None:
    ctx.progressed = True
    part = str(event.data.get("part", ""))
    if part not in ctx.tools_running:
        ctx.tools_running.append(part)


def _tool_finished(ctx: TurnContext, event: Event) -> None:
    part = str(event.data.get("part", ""))
    if part in ctx.tools_running:
        ctx.tools_running.remove(part)


def _note_close(ctx: TurnContext, event: Event) -> None:
    ctx.close_reason = str(event.data.get("reason", "completed"))


def _note_error(ctx: TurnContext, event: Event) -> None:
    ctx.error = str(event.data.get("error", "unknown error"))


def _note_detail(ctx: TurnContext, event: Event) -> None:
    ctx.detail = str(event.data.get("error", ""))


def _mark_resubmitted(ctx: TurnContext, _event: Event) -> None:
    ctx.resubmitted = True
    ctx.tools_running.clear()


def _outcome(status: str) -> Callable[[TurnContext, Event], EmitOutcome]:
    def emit(ctx: TurnContext, _event: Event) -> EmitOutcome:
        reason = ctx.reason or status
        # A failure carries what the agent itself said: its error, else its last retry message.
        error = ctx.error or (ctx.detail if status == "failed" else "")
        return EmitOutcome(ctx.message_id, status, reason, error)

    return emit


SPEC = MachineSpec(
    DECLARATION,
    WRAPPER_TIMERS,
    TurnContext,
    guards={
        "tool_running": lambda ctx, _e: bool(ctx.tools_running),
        "closed_completed": lambda ctx, _e: ctx.close_reason == "completed" and not ctx.error,
        "closed_interrupted": lambda ctx, _e: ctx.close_reason == "interrupted",
        "can_resubmit": lambda ctx, _e: not ctx.progressed and not ctx.resubmitted,
    },
    effects={
        "submit_prompt": _submit,
        "abort_agent_turn": lambda ctx, _e: AbortAgentTurn(ctx.message_id),
        "agent_stuck": lambda ctx, _e: AgentStuck(ctx.message_id),
        "note_progress": _note_progress,
        "note_tool_started": _tool_started,
        "note_tool_finished": _tool_finished,
        "note_close": _note_close,
        "note_error": _note_error,
        "note_detail": _note_detail,
        "mark_resubmitted": _mark_resubmitted,
        "reason_no_progress": _reason("no_progress"),
        "reason_execution_limit": _reason("execution_limit"),
        "reason_agent_error": _reason("agent_error"),
        "reason_agent_restarted": _reason("agent_restarted"),
        "reason_agent_unavailable": _reason("agent_unavailable"),
        "reason_connection_lost": _reason("connection_lost"),
        "reason_cancelled": _reason("cancelled"),
        "reason_fault": _reason("fault"),
        "emit_completed": _outcome("completed"),
        "emit_failed": _outcome("failed"),
        "emit_cancelled": _outcome("cancelled"),
    },
)


# -- what Kilo's events mean for a turn ---------------------------------------------------------


class EventShape(NamedTuple):
    """One shape of Kilo event and what it means for the turn it belongs to."""

    shape: str
    """``type``, then for parts the part type and a qualifier (see
    ``fsm.agents.events.shape_of``)."""
    meaning: str
    """One of ``MEANINGS``."""
    seen: str
    """Where it was measured: captures in ``shared/kilo/captures/`` (``t8`` = ``t8-*.jsonl``)."""
    why: str


MEANINGS = {
    "progress": "real model output: pushes back the no-progress window, bars resubmission",
    "tool_started": "a tool of the assistant runs: holds the no-progress clock (also progress)",
    "tool_finished": "a tool of the assistant ended: releases the clock (also progress)",
    "asked": "a question or permission is pending: waiting_user until answered",
    "answered": "the pending question or permission was answered",
    "open": "Kilo started working on the prompt",
    "close": "Kilo closed the turn (with a reason)",
    "error": "Kilo's error for the turn: explains the close that goes with it",
    "gave_up": "Kilo waits on something nobody here answers: the turn fails now, with its text",
    "retrying": "Kilo retries by itself: not progress, not final; its message is kept as detail",
    "nothing": "not progress and no change: bookkeeping, statuses, heartbeats, other sessions",
}

AGENT_EVENTS: tuple[EventShape, ...] = (
    EventShape("session.turn.open", "open", "t2 t3 t4 t5 t8 t9 t11", "every turn starts so"),
    EventShape(
        "session.turn.close", "close", "t2 t3 t4 t5 t8 t9", "completed|error|interrupted ends it"
    ),
    EventShape(
        "session.turn.close superseded",
        "nothing",
        "t9-busy",
        "the next queued prompt's open follows at once: nothing ends",
    ),
    EventShape("message.part.delta", "progress", "t2 t3 t5 t8 t11", "one per model token chunk"),
    EventShape("message.part.delta empty", "nothing", "(defensive)", "a chunk with no text"),
    EventShape("message.part.delta user", "nothing", "(defensive)", "the user's own prompt"),
    EventShape("message.part.updated text", "progress", "t2 t3 t8 t11", "text that grew"),
    EventShape(
        "message.part.updated text empty",
        "nothing",
        "t2 t3 t5 t8 t11",
        "opened before the first token: a hang right after it produced nothing",
    ),
    EventShape(
        "message.part.updated text same",
        "nothing",
        "t2 t3 t8 (final part after its deltas)",
        "the full text again, already counted by its deltas",
    ),
    EventShape(
        "message.part.updated text synthetic",
        "nothing",
        "README §7 part types; real runs after a wrapper kill (~7/s)",
        "the 'Initializing snapshot…' spinner is Kilo's, not the model's",
    ),
    EventShape(
        "message.part.updated reasoning", "progress", "(spec; fake LLM has none)", "thought"
    ),
    EventShape("message.part.updated reasoning empty", "nothing", "(spec)", "as empty text"),
    EventShape("message.part.updated reasoning same", "nothing", "(spec)", "as repeated text"),
    EventShape(
        "message.part.updated reasoning synthetic", "nothing", "(defensive)", "as the spinner"
    ),
    EventShape(
        "message.part.updated step-start",
        "nothing",
        "t2 t3 t8 t11",
        "Kilo's snapshot before the model answers, not output",
    ),
    EventShape("message.part.updated step-finish", "progress", "t2 t3 t8", "a model step ended"),
    EventShape(
        "message.part.updated tool pending", "progress", "t2 t3 t5", "the model called a tool"
    ),
    EventShape(
        "message.part.updated tool running",
        "tool_started",
        "t2 t3 t5",
        "repeated while its metadata.output grows: each one is the tool's output",
    ),
    EventShape("message.part.updated tool completed", "tool_finished", "t2 t3", "tool done"),
    EventShape("message.part.updated tool error", "tool_finished", "t2 t5", "tool failed/aborted"),
    EventShape(
        "message.part.updated user", "nothing", "t2 t3 t4 t5 t8 t9", "the user's own prompt parts"
    ),
    EventShape(
        "message.part.updated other",
        "nothing",
        "t9 (compaction)",
        "compaction, file, patch, snapshot, …: Kilo's records, not model output",
    ),
    EventShape("message.part.removed", "nothing", "README §7", "the spinner part removed"),
    EventShape(
        "message.updated",
        "nothing",
        "all",
        "metadata (tokens, time); a user message's id is remembered to ignore its parts",
    ),
    EventShape("permission.asked", "asked", "t2 t5", "waits on the user"),
    EventShape("question.asked", "asked", "t3", "waits on the user"),
    EventShape("permission.replied", "answered", "t2", "the user answered"),
    EventShape("question.replied", "answered", "t3", "the user answered"),
    EventShape("question.rejected", "answered", "t3", "the user dismissed it"),
    EventShape("session.error", "error", "t4 t5 t7", "before or just after its close"),
    EventShape(
        "session.network.asked",
        "gave_up",
        "t7 t8-connrefused",
        "'Cannot connect to API…' / 'Request timed out': Kilo waits for a reply nobody sends",
    ),
    EventShape(
        "session.status retry",
        "retrying",
        "t4-500 t4-hang t7",
        "attempt n of Kilo's own retries; it recovers or ends with session.error",
    ),
    EventShape(
        "session.status",
        "nothing",
        "all (busy many times, idle twice, offline)",
        "Kilo's status is not the model's output",
    ),
    EventShape(
        "other",
        "nothing",
        "server.heartbeat server.connected sync session.updated session.diff session.idle "
        "session.created session.queue.changed session.compacted session.drain.interrupted "
        "session.network.replied command.executed message.removed",
        "heartbeats and bookkeeping; an unknown kind never keeps a turn alive",
    ),
)
"""The one place that says what each agent event means for a turn (Kilo's event kinds; OpenCode's
stream, a fork's, is read into the same kinds by ``fsm.agents.dialect``); ``fsm.agents.events``
computes an event's shape and looks it up here. Every kind in the captures is covered
(``tests/agents/test_agent_events.py`` checks that each captured event has a row)."""

AGENT_MEANING: dict[str, str] = {row.shape: row.meaning for row in AGENT_EVENTS}
