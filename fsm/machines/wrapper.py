"""``wrapper``: the life of ``fsm-agent serve`` and of the Kilo server it owns.

Theory of operation
-------------------
The wrapper is the single control plane inside the container. It spawns Kilo (``starting``),
serves turns (``ready`` before the first, ``running`` while any is unfinished, ``idle`` after),
and treats everything that can happen to Kilo as an event of this machine: a start-up that does
not become healthy in time, an exit nobody asked for, a stream that goes silent (``stale``, while
the ``agent_link`` machine probes health), a probe that gets no answer (hung). Each of those
restarts Kilo through ``restarting`` — paced by a backoff and limited by the agent restart budget
(3 in 10 min by default) — or, with the budget spent, ends in ``failed``, where every route answers
``agent_unavailable``. The source system never noticed Kilo dying after start-up; here it cannot
go unnoticed because ``agent_exited`` is handled in every state.

Timers:
* ``startup`` (state, ``starting``): Kilo spawn to healthy.
* ``restart_delay`` (state, ``restarting``): the budget's backoff before the next spawn.
* ``idle``/``idle_after_start`` (state, ``idle``/``ready``): an unused wrapper exits by itself — a
  backstop for a control plane that is gone; the control plane's own idle stop is shorter.
  Armed on *entering* idle, so a run longer than the window is never cut right after it ends.
* ``stop_grace`` (state, ``stopping``): Kilo's exit after SIGTERM.
"""

from __future__ import annotations

import msgspec

from fsm.engine.effects import (
    ExitProcess,
    NotifyTurns,
    OpenAgentLink,
    ReportState,
    Signal,
    SpawnAgent,
    StopAgent,
)
from fsm.engine.events import Event
from fsm.engine.model import Budget, MachineDef, State, backoff_timer, on, state_timer
from fsm.engine.spec import MachineSpec, emit
from fsm.machines.timers import WRAPPER_TIMERS


class WrapperContext(msgspec.Struct):
    active_turns: int = 0
    spawns: int = 0


SERVING = ("ready", "running", "idle", "stale")
AGENT_UP = ("starting", *SERVING)

DECLARATION = MachineDef(
    name="wrapper",
    initial="starting",
    doc="fsm-agent serve: owns Kilo, serves turns, recovers from Kilo crashes and hangs.",
    budgets=(
        Budget(
            "agent_restarts",
            limit=3,
            window="agent_restart_window",
            backoff_initial="agent_restart_backoff_initial",
            backoff_maximum="agent_restart_backoff_max",
        ),
    ),
    states=(
        State(
            "starting",
            on_enter=("spawn_agent",),
            timers=(state_timer("startup", "agent_startup", "startup_timeout"),),
            doc="Kilo spawned; waiting for its health check",
        ),
        State(
            "ready",
            timers=(state_timer("idle_after_start", "wrapper_idle", "idle_timeout"),),
            doc="Kilo healthy, no turn yet",
        ),
        State("running", doc="at least one turn unfinished"),
        State(
            "idle",
            timers=(state_timer("idle", "wrapper_idle", "idle_timeout"),),
            doc="every turn finished",
        ),
        State("stale", doc="Kilo's stream went silent; agent_link is probing its health"),
        State(
            "restarting",
            on_enter=("close_agent_link", "stop_agent", "agent_lost", "report_restarting"),
            timers=(backoff_timer("restart_delay", "agent_restarts", "restart_due"),),
            doc="Kilo stopped; waiting out the backoff before the next spawn",
        ),
        State(
            "stopping",
            on_enter=("stop_agent", "close_agent_link"),
            doc="Kilo is being stopped; the ingest link stays open to carry the final frames",
            timers=(state_timer("stop_grace", "agent_stop_grace", "stop_timeout"),),
        ),
        State("stopped", terminal=True, on_enter=("close_ingest", "exit_ok")),
        State("failed", terminal=True, on_enter=("agent_unavailable", "report_failed")),
    ),
    transitions=(
        on(
            "agent_ready",
            "starting",
            "running",
            guard="has_turns",
            effects=("open_agent_link", "report_ready"),
            doc="turns accepted while Kilo was (re)starting run now",
        ),
        on("agent_ready", "starting", "ready", effects=("open_agent_link", "report_ready")),
        on("turn_started", ("ready", "idle"), "running", effects="count_turn"),
        on(
            "turn_started",
            ("running", "stale", "starting", "restarting"),
            None,
            effects="count_turn",
        ),
        on("turn_ended", "running", "idle", guard="last_turn", effects="uncount_turn"),
        on(
            "turn_ended",
            ("running", "stale", "starting", "restarting", "stopping"),
            None,
            effects="uncount_turn",
            doc="every turn is counted out wherever it ends, or the count drifts",
        ),
        on("agent_silent", ("ready", "running", "idle"), "stale"),
        on("agent_alive", "stale", "running", guard="has_turns"),
        on("agent_alive", "stale", "idle"),
        on("idle_timeout", ("ready", "idle"), "stopping"),
        # Every way Kilo can be lost restarts it within budget, else fails.
        on("startup_timeout", "starting", "restarting", consumes="agent_restarts"),
        on("startup_timeout", "starting", "failed"),
        on("agent_exited", AGENT_UP, "restarting", consumes="agent_restarts"),
        on("agent_exited", AGENT_UP, "failed"),
        on("agent_hung", SERVING, "restarting", consumes="agent_restarts"),
        on("agent_hung", SERVING, "failed"),
        on("agent_exited", "restarting", None, doc="the exit we asked for"),
        on("restart_due", "restarting", "starting"),
        on("stop", ("starting", *SERVING, "restarting"), "stopping"),
        on("agent_exited", "stopping", "stopped"),
        on("stop_timeout", "stopping", "stopped"),
        on("fault", "*", "failed"),
    ),
)


def _count(ctx: WrapperContext, _event: Event) -> None:
    ctx.active_turns += 1


def _uncount(ctx: WrapperContext, _event: Event) -> None:
    ctx.active_turns = max(0, ctx.active_turns - 1)


def _spawn(ctx: WrapperContext, _event: Event) -> SpawnAgent:
    ctx.spawns += 1
    return SpawnAgent(attempt=ctx.spawns)


SPEC = MachineSpec(
    DECLARATION,
    WRAPPER_TIMERS,
    WrapperContext,
    guards={
        "last_turn": lambda ctx, _e: ctx.active_turns <= 1,
        "has_turns": lambda ctx, _e: ctx.active_turns > 0,
    },
    effects={
        "spawn_agent": _spawn,
        "stop_agent": emit(StopAgent(keep_session=True)),
        "open_agent_link": emit(OpenAgentLink()),
        "close_agent_link": emit(Signal("agent_link", "close")),
        "close_ingest": emit(Signal("ingest_link", "close")),
        "agent_lost": emit(NotifyTurns("agent_lost", "agent_restarted")),
        "agent_unavailable": emit(NotifyTurns("agent_unavailable", "agent_unavailable")),
        "report_ready": emit(ReportState("ready")),
        "report_restarting": emit(ReportState("restarting")),
        "report_failed": emit(ReportState("failed", "agent_unavailable")),
        "count_turn": _count,
        "uncount_turn": _uncount,
        "exit_ok": emit(ExitProcess(0, "stopped")),
    },
)
