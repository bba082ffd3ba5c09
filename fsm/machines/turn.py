"""``turn``: one prompt's life inside the wrapper, from receipt to exactly one outcome.

Theory of operation
-------------------
A turn is ``queued`` until the agent can take it, ``accepted`` once Kilo has the prompt,
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
A network wait (``session.network.asked``) is *not* a user question: the host feeds it as nothing
at all, so it does not pause the no-progress clock.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from fsm.effects import AbortAgentTurn, EmitOutcome, SubmitPrompt
from fsm.events import Event
from fsm.model import MachineDef, State, on, silence_timer, span_timer, state_timer
from fsm.spec import MachineSpec
from fsm.timers import WRAPPER_TIMERS


class TurnContext(msgspec.Struct):
    message_id: str = ""
    progressed: bool = False
    resubmitted: bool = False
    tools_running: list[str] = msgspec.field(default_factory=list)
    close_reason: str = ""
    reason: str = ""
    error: str = ""


ACTIVE = ("queued", "accepted", "running", "waiting_user", "finalizing")
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
        State("accepted", doc="Kilo has the prompt (prompt_async answered)"),
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
        on("started", "accepted", "running"),
        on("progress", "accepted", "running", effects="note_progress"),
        on("progress", "running", None, effects="note_progress"),
        on("progress", "waiting_user", "running", effects="note_progress"),
        on("tool_started", "accepted", "running", effects="note_tool_started"),
        on("tool_started", "running", None, effects="note_tool_started"),
        on("tool_finished", "running", None, effects="note_tool_finished"),
        on("asked", ("accepted", "running"), "waiting_user"),
        on("answered", "waiting_user", "running"),
        on("no_progress", "running", None, guard="tool_running"),
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
        on("cancel", "queued", "cancelled", effects="reason_cancelled"),
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


def _mark_resubmitted(ctx: TurnContext, _event: Event) -> None:
    ctx.resubmitted = True
    ctx.tools_running.clear()


def _outcome(status: str) -> Callable[[TurnContext, Event], EmitOutcome]:
    def emit(ctx: TurnContext, _event: Event) -> EmitOutcome:
        reason = ctx.reason or status
        return EmitOutcome(ctx.message_id, status, reason, ctx.error)

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
        "note_progress": _note_progress,
        "note_tool_started": _tool_started,
        "note_tool_finished": _tool_finished,
        "note_close": _note_close,
        "note_error": _note_error,
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
