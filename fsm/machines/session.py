"""``session``: the control plane's view of one session and the wrapper that serves it.

Theory of operation
-------------------
The control plane manages only the wrapper; the wrapper manages Kilo. A session starts its wrapper
through the runtime port (``starting``) and waits for its ``hello``; a wrapper of the wrong version
is told ``shutdown`` and replaced by the pinned one. Once connected it is ``ready``, ``running``
while any message is accepted and unfinished, ``idle`` after. Heartbeats (every 5 s) and frames
prove the wrapper alive; 90 s without either makes the session ``stale``, and a stale wrapper that
does not come back within a short grace is replaced (``restarting``), within the wrapper restart
budget, or the session ends ``failed``. A stopped session is not dead: the agent's own session is
kept, and a new message resumes it with a fresh wrapper.

Every terminal decision this side takes about a turn (hung, max runtime, restart) is also sent to
the wrapper as a command (abort), so the two sides converge on one outcome — the source system
failed the execution locally and left the agent running. A backstop's abort is answered by the
wrapper, and that answer ends the message (``cancelled`` → failed with the backstop's reason; a
turn that completed before the abort reached it completes). Messages are counted here only once the
wrapper reports that Kilo has them (``message_accepted``): a message still queued — Kilo cold
starting, or no wrapper connected — is nobody working, so it neither makes the session
``running`` nor arms the hung backstop (the session is ``waiting``), and a replaced wrapper does
not fail it (it goes to the next one). A stale wrapper given up on fails its accepted messages
``connection_lost`` (this side lost the connection, whatever the wrapper did); one that exited or
was shut down, ``agent_restarted``.

The hung and max-runtime timers are backstops: the wrapper owns the turn's clocks (no-progress
7 min, paused while the user is asked, held by a running tool; hard cap 120 min), so their
defaults lie above those (16.5 min, 125 min), and the core pauses hung while the wrapper's turn
waits on the user or a tool runs (a heartbeat then re-arms it like a frame).

Timers:
* ``first_connect`` (state, ``starting``): wrapper start to its hello.
* ``stale`` (silence over ready/running/idle): no heartbeat or frame.
* ``hung`` (silence, ``running``): no agent event while running (heartbeats do not count, but
  while a turn waits on the user or runs a tool the core feeds them as frames); a backstop.
* ``max_runtime`` (span over running and stale): a running session's cap; a backstop.
* ``idle_stop``/``idle_after_connect`` (state, ``idle``/``ready``): stop an unused wrapper — not
  in ``waiting``, while a message is queued for it (the core says ``message_queued`` when the
  session is ready or idle with a queued message, ``queue_empty`` when none is left).
* ``stale_grace`` (state, ``stale``), ``restart_delay`` (budget backoff), ``stop_grace``.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from fsm.engine.effects import FailMessages, SendCommand, SendShutdown, StartWrapper, StopWrapper
from fsm.engine.events import Event
from fsm.engine.model import (
    Budget,
    MachineDef,
    State,
    backoff_timer,
    on,
    silence_timer,
    span_timer,
    state_timer,
)
from fsm.engine.spec import MachineSpec, emit
from fsm.machines.timers import CONTROL_TIMERS


class SessionContext(msgspec.Struct):
    active_messages: int = 0
    starts: int = 0


CONNECTED = ("ready", "waiting", "running", "idle")
LIVE = ("starting", *CONNECTED, "stale")

DECLARATION = MachineDef(
    name="session",
    initial="starting",
    doc="One session on the control plane, and the wrapper that serves it.",
    budgets=(
        Budget(
            "wrapper_restarts",
            limit=5,
            window="wrapper_restart_window",
            backoff_initial="wrapper_backoff_initial",
            backoff_maximum="wrapper_backoff_max",
        ),
    ),
    states=(
        State(
            "starting",
            on_enter=("start_wrapper",),
            timers=(state_timer("first_connect", "first_connect", "connect_timeout"),),
            doc="wrapper started through the runtime; waiting for its hello",
        ),
        State(
            "ready",
            timers=(
                silence_timer(
                    "stale",
                    "stale_heartbeat",
                    "heartbeat_missed",
                    rearmed_by=("heartbeat", "frame"),
                    span=("waiting", "running", "idle"),
                ),
                state_timer("idle_after_connect", "idle_stop", "idle_timeout"),
            ),
            doc="wrapper connected, no message yet",
        ),
        State(
            "waiting",
            doc="messages queued for the wrapper, none of them with Kilo yet: nobody works (no "
            "hung backstop), but the session is in use (no idle stop to cancel a prompt in flight)",
        ),
        State(
            "running",
            timers=(
                silence_timer("hung", "hung_session", "hung", rearmed_by=("frame",)),
                span_timer("max_runtime", "max_runtime", "max_runtime_exceeded", span=("stale",)),
            ),
            doc="at least one accepted message without an outcome",
        ),
        State("idle", timers=(state_timer("idle_stop", "idle_stop", "idle_timeout"),)),
        State(
            "stale",
            timers=(state_timer("stale_grace", "stale_grace", "replace"),),
            doc="no heartbeat; the wrapper may still reconnect",
        ),
        State(
            "restarting",
            on_enter=("stop_wrapper", "fail_restarted"),
            timers=(backoff_timer("restart_delay", "wrapper_restarts", "restart_due"),),
        ),
        State(
            "stopping",
            on_enter=("release_wrapper", "fail_cancelled"),
            timers=(state_timer("stop_grace", "wrapper_stop_grace", "stop_timeout"),),
        ),
        State("stopped", doc="wrapper gone, agent session kept; a new message resumes it"),
        State("failed", terminal=True, on_enter=("stop_wrapper", "fail_unavailable")),
    ),
    transitions=(
        on("wrapper_connected", "starting", "ready"),
        on("wrapper_connected", CONNECTED, None, doc="a reconnect of the same wrapper"),
        on("wrapper_connected", "stale", "running", guard="has_messages"),
        on("wrapper_connected", "stale", "idle"),
        on("heartbeat", CONNECTED, None),
        on("frame", CONNECTED, None),
        on("heartbeat", "stale", "running", guard="has_messages"),
        on("heartbeat", "stale", "idle"),
        on("message_accepted", ("ready", "idle", "waiting"), "running", effects="count_message"),
        on("message_accepted", "running", None, effects="count_message"),
        on(
            "message_accepted",
            "stale",
            None,
            effects="count_message",
            doc="the wrapper's word may come with the first frame after a silence",
        ),
        on("message_finished", "running", "idle", guard="last_message", effects="uncount_message"),
        on("message_finished", ("running", "stale"), None, effects="uncount_message"),
        on("hung", "running", "idle", effects=("abort_turn", "fail_hung")),
        on(
            "max_runtime_exceeded",
            "running",
            "idle",
            effects=("abort_turn", "fail_execution_limit"),
        ),
        on("max_runtime_exceeded", "stale", None, effects=("abort_turn", "fail_execution_limit")),
        on("heartbeat_missed", CONNECTED, "stale"),
        on("idle_timeout", ("ready", "idle"), "stopping"),
        on("message_queued", ("ready", "idle"), "waiting"),
        on("queue_empty", "waiting", "idle", doc="the queued messages ended before Kilo had them"),
        # Every way the wrapper can be lost replaces it within budget, else fails.
        on(
            "version_mismatch",
            ("starting", *CONNECTED),
            "restarting",
            consumes="wrapper_restarts",
            effects="send_shutdown",
        ),
        on("version_mismatch", ("starting", *CONNECTED), "failed", effects="send_shutdown"),
        on(
            "agent_unavailable",
            LIVE,
            "failed",
            doc="the wrapper spent its own Kilo restart budget: Kilo cannot run there",
        ),
        on("connect_timeout", "starting", "restarting", consumes="wrapper_restarts"),
        on("connect_timeout", "starting", "failed"),
        on(
            "replace",
            "stale",
            "restarting",
            consumes="wrapper_restarts",
            effects="fail_connection_lost",
            doc="the wrapper went silent: its accepted messages fail connection_lost",
        ),
        on("replace", "stale", "failed"),
        on("wrapper_exited", LIVE, "restarting", consumes="wrapper_restarts"),
        on("wrapper_exited", LIVE, "failed"),
        on("wrapper_exited", "restarting", None, doc="the exit we asked for"),
        on("restart_due", "restarting", "starting"),
        on("stop", (*LIVE, "restarting"), "stopping"),
        on("wrapper_exited", "stopping", "stopped"),
        on("stop_timeout", "stopping", "stopped", effects="stop_wrapper"),
        on("resume", "stopped", "starting"),
        on("fault", "*", "failed"),
    ),
)


def _count(ctx: SessionContext, _event: Event) -> None:
    ctx.active_messages += 1


def _uncount(ctx: SessionContext, _event: Event) -> None:
    ctx.active_messages = max(0, ctx.active_messages - 1)


def _start(ctx: SessionContext, _event: Event) -> StartWrapper:
    ctx.starts += 1
    return StartWrapper(attempt=ctx.starts)


def _fail(
    reason: str, *, final: bool = False
) -> Callable[[SessionContext, Event], FailMessages | None]:
    """``final``: the session ends (stopped or failed), so messages still *queued* for a wrapper
    must end too, even with none accepted — else they wait forever, or run by surprise on the next
    resume. The host decides which messages a reason fails."""

    def fail(ctx: SessionContext, _event: Event) -> FailMessages | None:
        if ctx.active_messages == 0 and not final:
            return None
        ctx.active_messages = 0
        return FailMessages(reason)

    return fail


SPEC = MachineSpec(
    DECLARATION,
    CONTROL_TIMERS,
    SessionContext,
    guards={
        "has_messages": lambda ctx, _e: ctx.active_messages > 0,
        "last_message": lambda ctx, _e: ctx.active_messages <= 1,
    },
    effects={
        "start_wrapper": _start,
        "stop_wrapper": emit(StopWrapper("replace")),
        "release_wrapper": emit(SendCommand("release")),
        "send_shutdown": emit(SendShutdown("version mismatch")),
        "abort_turn": emit(SendCommand("abort")),
        "count_message": _count,
        "uncount_message": _uncount,
        "fail_hung": _fail("no_progress"),
        "fail_execution_limit": _fail("execution_limit"),
        "fail_restarted": _fail("agent_restarted"),
        "fail_connection_lost": _fail("connection_lost"),
        "fail_cancelled": _fail("cancelled", final=True),
        "fail_unavailable": _fail("agent_unavailable", final=True),
    },
)
