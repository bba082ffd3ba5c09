"""``ingest_link``: the wrapper's WebSocket to the control plane.

Theory of operation
-------------------
The link connects, says ``hello`` (wrapper id, versions, identity) and waits for ``welcome``
(carry on, resend what was never acknowledged) or ``shutdown`` (a wrong version or a session
that is gone: exit 0 and do not reconnect). While connected it sends a heartbeat every 5 s — a
silence timer re-armed by its own expiry, which is how a periodic tick is declared. Any loss of
the socket goes to ``backoff`` and tries again, forever: the source system gave up after three
tries, leaving a healthy agent unreachable. Delays grow 1 s → 30 s with jitter drawn from the
engine's injected random source (simulations stay reproducible) and reset on ``welcome``.

Outbound frames are not this machine's business: the host buffers them (bounded, oldest events
dropped first, outcomes and lifecycle frames never) whatever the link's state.

Timers: ``connect`` and ``handshake`` (state), ``heartbeat`` (periodic), ``retry`` (backoff).
"""

from __future__ import annotations

import msgspec

from fsm.engine.effects import (
    CloseSocket,
    ExitProcess,
    OpenSocket,
    ResendUnacked,
    SendHeartbeat,
    SendHello,
)
from fsm.engine.events import Event
from fsm.engine.model import (
    Backoff,
    MachineDef,
    State,
    backoff_timer,
    on,
    silence_timer,
    state_timer,
)
from fsm.engine.spec import MachineSpec, emit
from fsm.machines.timers import WRAPPER_TIMERS


class IngestLinkContext(msgspec.Struct):
    attempts: int = 0
    shutdown_reason: str = ""


OPEN = ("connecting", "handshaking", "connected", "backoff")

DECLARATION = MachineDef(
    name="ingest_link",
    initial="connecting",
    doc="The wrapper's WebSocket to the control plane.",
    backoffs=(
        Backoff(
            "reconnect",
            initial="ingest_backoff_initial",
            maximum="ingest_backoff_max",
            factor=2.0,
            jitter=0.2,
            resets_in=("connected",),
        ),
    ),
    states=(
        State(
            "connecting",
            on_enter=("open_socket",),
            timers=(state_timer("connect", "ingest_connect_timeout", "connect_timeout"),),
        ),
        State(
            "handshaking",
            on_enter=("send_hello",),
            timers=(state_timer("handshake", "ingest_handshake_timeout", "handshake_timeout"),),
            doc="hello sent; waiting for welcome or shutdown",
        ),
        State(
            "connected",
            timers=(
                silence_timer(
                    "heartbeat", "ingest_heartbeat", "heartbeat_due", rearmed_by=("heartbeat_due",)
                ),
            ),
        ),
        State("backoff", timers=(backoff_timer("retry", "reconnect", "retry_due"),)),
        State("closed", terminal=True),
    ),
    transitions=(
        on("socket_open", "connecting", "handshaking"),
        on("socket_failed", "connecting", "backoff"),
        on("connect_timeout", "connecting", "backoff", effects="close_socket"),
        on("welcome", "handshaking", "connected", effects="resend_unacked"),
        on("handshake_timeout", "handshaking", "backoff", effects="close_socket"),
        on("heartbeat_due", "connected", None, effects="send_heartbeat"),
        on("socket_closed", ("handshaking", "connected"), "backoff"),
        on(
            "recycle",
            ("handshaking", "connected"),
            "backoff",
            effects="close_socket",
            doc="SIGUSR1: a fault-injection hook",
        ),
        on("retry_due", "backoff", "connecting"),
        on(
            "shutdown",
            ("handshaking", "connected"),
            "closed",
            effects=("note_shutdown", "close_socket", "exit_on_shutdown"),
        ),
        on("close", OPEN, "closed", effects="close_socket"),
        on("fault", OPEN, "backoff", effects="close_socket"),
    ),
)


def _open(ctx: IngestLinkContext, _event: Event) -> OpenSocket:
    ctx.attempts += 1
    return OpenSocket(attempt=ctx.attempts)


def _note_shutdown(ctx: IngestLinkContext, event: Event) -> None:
    ctx.shutdown_reason = str(event.data.get("reason", "shutdown"))


SPEC = MachineSpec(
    DECLARATION,
    WRAPPER_TIMERS,
    IngestLinkContext,
    effects={
        "open_socket": _open,
        "close_socket": emit(CloseSocket()),
        "send_hello": emit(SendHello()),
        "send_heartbeat": emit(SendHeartbeat()),
        "resend_unacked": emit(ResendUnacked()),
        "note_shutdown": _note_shutdown,
        "exit_on_shutdown": lambda ctx, _e: ExitProcess(0, f"shutdown: {ctx.shutdown_reason}"),
    },
)
