"""``agent_link``: the wrapper's event subscription to one Kilo instance.

Theory of operation
-------------------
Kilo's event stream (SSE) is the wrapper's only view of what Kilo does, and it fails in three ways
the wrapper must tell apart: it ends (Kilo exited or closed it), it goes quiet while Kilo is fine
(a dead TCP path), or it goes quiet because Kilo is hung (SIGSTOP, a wedged event loop). Kilo
sends ``server.heartbeat`` every 10 s, so 15 s without *any* event means something is wrong; one
health probe then decides: an answer means the stream is the problem (resubscribe), no answer in
5 s means Kilo is hung (ask the wrapper to restart it).

Every subscription gets a new generation number; events carry the generation they came from and
the ``current_generation`` guard drops events of an old subscription — they are recorded as
ignored, never applied. Kilo's SSE has no event ids and no replay, so each resubscription asks the
host to reconcile from ``GET /session/status`` and the session's messages.

Timers:
* ``first_event`` (state, ``subscribing``): a (re)subscribed stream must deliver its first event.
* ``silence`` (silence, ``streaming``): armed when ``server.connected`` arrives, pushed back by
  every event of the current generation.
* ``probe``/``probe_after_subscribe`` (state, ``silent``/``probing``): the health probe's answer.
* ``reconnect_delay`` (state, ``reconnecting``): a short pause before resubscribing.
The reconnect budget (6 in 2 min) turns a flapping stream into an agent restart.

One machine lives as long as one Kilo process: the wrapper opens a fresh one each time Kilo
becomes healthy and closes it when Kilo is stopped.
"""

from __future__ import annotations

import msgspec

from fsm.engine.effects import ProbeHealth, Reconcile, Signal, Subscribe, Unsubscribe
from fsm.engine.events import Event
from fsm.engine.model import Budget, MachineDef, State, on, silence_timer, state_timer
from fsm.engine.spec import MachineSpec, emit
from fsm.machines.timers import WRAPPER_TIMERS


class AgentLinkContext(msgspec.Struct):
    generation: int = 0
    """Generation of the current subscription; the host may start it past old ones."""
    subscriptions: int = 0


OPEN = ("subscribing", "streaming", "silent", "probing", "reconnecting")
PROBING = ("silent", "probing")

DECLARATION = MachineDef(
    name="agent_link",
    initial="subscribing",
    doc="The wrapper's SSE subscription to one Kilo instance.",
    budgets=(Budget("stream_reconnects", limit=6, window="stream_reconnect_window"),),
    states=(
        State(
            "subscribing",
            on_enter=("subscribe",),
            timers=(state_timer("first_event", "first_event_grace", "first_event_timeout"),),
            doc="GET /event sent; waiting for server.connected",
        ),
        State(
            "streaming",
            timers=(
                silence_timer(
                    "silence", "stream_silence", "silence_elapsed", rearmed_by=("event",)
                ),
            ),
            doc="events (at least heartbeats every 10 s) are flowing",
        ),
        State(
            "silent",
            on_enter=("probe_health", "report_silent"),
            timers=(state_timer("probe", "health_probe_timeout", "probe_timeout"),),
            doc="an established stream went quiet; one health probe in flight",
        ),
        State(
            "probing",
            on_enter=("probe_health", "report_silent"),
            timers=(state_timer("probe_after_subscribe", "health_probe_timeout", "probe_timeout"),),
            doc="a new stream delivered nothing; one health probe in flight",
        ),
        State(
            "reconnecting",
            on_enter=("unsubscribe",),
            timers=(state_timer("reconnect_delay", "stream_reconnect_delay", "reconnect_due"),),
        ),
        State("closed", terminal=True, on_enter=("unsubscribe",)),
    ),
    transitions=(
        on(
            "connected", "subscribing", "streaming", guard="current_generation", effects="reconcile"
        ),
        on(
            "connected",
            "probing",
            "streaming",
            guard="current_generation",
            effects=("reconcile", "report_alive"),
        ),
        on("event", "subscribing", "streaming", guard="current_generation"),
        on("event", PROBING, "streaming", guard="current_generation", effects="report_alive"),
        on("event", "streaming", None, guard="current_generation"),
        on("first_event_timeout", "subscribing", "probing"),
        on("silence_elapsed", "streaming", "silent"),
        on(
            "probe_ok",
            PROBING,
            "reconnecting",
            consumes="stream_reconnects",
            effects="report_alive",
        ),
        on("probe_ok", PROBING, "closed", effects="request_agent_restart"),
        on("probe_timeout", PROBING, "closed", effects="report_hung"),
        on("probe_failed", PROBING, "closed", effects="report_hung"),
        on(
            "stream_ended",
            ("subscribing", "streaming"),
            "reconnecting",
            guard="current_generation",
            consumes="stream_reconnects",
        ),
        on(
            "stream_ended",
            ("subscribing", "streaming"),
            "closed",
            guard="current_generation",
            effects="request_agent_restart",
        ),
        on("reconnect_due", "reconnecting", "subscribing"),
        on("close", OPEN, "closed"),
        on("fault", OPEN, "closed", effects="report_hung"),
    ),
)


def _current(ctx: AgentLinkContext, event: Event) -> bool:
    return bool(event.data.get("generation", ctx.generation) == ctx.generation)


def _subscribe(ctx: AgentLinkContext, _event: Event) -> Subscribe:
    ctx.generation += 1
    ctx.subscriptions += 1
    return Subscribe(ctx.generation)


def _reconcile(ctx: AgentLinkContext, _event: Event) -> Reconcile | None:
    # The first subscription has nothing to catch up on; every later one might.
    return Reconcile(ctx.generation) if ctx.subscriptions > 1 else None


SPEC = MachineSpec(
    DECLARATION,
    WRAPPER_TIMERS,
    AgentLinkContext,
    guards={"current_generation": _current},
    effects={
        "subscribe": _subscribe,
        "unsubscribe": lambda ctx, _e: Unsubscribe(ctx.generation),
        "probe_health": lambda ctx, _e: ProbeHealth(ctx.generation),
        "reconcile": _reconcile,
        "report_silent": emit(Signal("wrapper", "agent_silent")),
        "report_alive": emit(Signal("wrapper", "agent_alive")),
        "report_hung": emit(Signal("wrapper", "agent_hung", {"reason": "health probe"})),
        "request_agent_restart": emit(
            Signal("wrapper", "agent_hung", {"reason": "event stream keeps failing"})
        ),
    },
)
