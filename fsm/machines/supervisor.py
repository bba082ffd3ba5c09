"""``supervisor``: the in-container supervisor's life, between tini and ``fsm-agent serve``.

Theory of operation
-------------------
In a container the wrapper is not PID 1: tini is (signals, zombies), and under it this machine's
host (``fsm/serve/supervise.py``) starts the wrapper and starts it again when it crashes, as the
later Kilo design's in-container supervisor does. The control plane would notice a dead wrapper
only through its stale heartbeat (90 s) or the runtime's exit event, and replacing the container
costs a cold start; restarting the process in place costs a second and keeps the workspace, the
container and Kilo's state where they are.

A wrapper that exits 0 meant it (idle exit, a shutdown from the control plane, SIGTERM handled):
the supervisor ends with it, and so does the container. Exit 2 is the wrapper refusing its
command line, token or config file (``fsm-agent serve`` says why on stderr): a restart would be
refused the same way, so the supervisor ends ``failed`` at once, with 2. Any other exit is a
crash and restarts it through ``restarting``, paced by a backoff (1 s doubling to 30 s; a
wrapper that ran for a minute was healthy, so the next crash starts from 1 s again) and limited
by a restart budget (5 in 10 min, however the starts were paced); with the budget spent the
supervisor ends ``failed`` with the wrapper's exit code, the container exits, and the runtime
reports that exit to the control plane, whose own ``session`` machine decides what happens next.

SIGTERM and SIGINT (``docker stop``, forwarded by tini) are passed on to the wrapper, which stops
Kilo gracefully and exits 0; the supervisor exits with the wrapper's code. A wrapper that does
not exit within the stop grace is killed. A signal while waiting out a backoff ends the
supervisor at once: there is no wrapper to stop.

Timers:
* ``stable_after`` (state, ``running``): a wrapper still running after it is ``stable``, which
  resets the backoff.
* ``restart_delay`` (state, ``restarting``): the backoff before the next start.
* ``stop_grace`` (state, ``stopping``): the forwarded signal to SIGKILL; longer than the
  wrapper's own grace for Kilo (``agent_stop_grace``), shorter than Docker's stop timeout (10 s).
"""

from __future__ import annotations

import msgspec

from fsm.engine.effects import Effect, ExitProcess, StartWrapper
from fsm.engine.events import Event
from fsm.engine.model import Backoff, Budget, MachineDef, State, backoff_timer, on, state_timer
from fsm.engine.spec import MachineSpec
from fsm.machines.timers import SUPERVISOR_TIMERS


class SignalWrapper(Effect, frozen=True):
    """Send ``signal`` (a ``signal.Signals`` name) to the running wrapper."""

    signal: str


class SupervisorContext(msgspec.Struct):
    starts: int = 0
    exit_code: int = 0
    """What the supervisor exits with: the last wrapper's exit status (128+N for signal N)."""
    signal: str = "SIGTERM"
    """The last stop signal received, forwarded to the wrapper."""


UP = ("running", "stable")
USAGE_ERROR = 2
"""``fsm-agent serve``'s exit status for a command line, token or config it cannot use."""

DECLARATION = MachineDef(
    name="supervisor",
    initial="running",
    doc="In the container: starts fsm-agent serve, restarts it when it crashes, ends when it "
    "exits 0.",
    budgets=(Budget("wrapper_restarts", limit=5, window="supervisor_restart_window"),),
    backoffs=(
        Backoff(
            "restart_backoff",
            initial="supervisor_backoff_initial",
            maximum="supervisor_backoff_max",
            resets_in=("stable",),
        ),
    ),
    states=(
        State(
            "running",
            on_enter=("start_wrapper",),
            timers=(state_timer("stable_after", "supervisor_stable", "wrapper_stable"),),
            doc="the wrapper was just started",
        ),
        State("stable", doc="the wrapper has run long enough to count as healthy"),
        State(
            "restarting",
            timers=(backoff_timer("restart_delay", "restart_backoff", "restart_due"),),
            doc="the wrapper crashed; waiting out the backoff before starting it again",
        ),
        State(
            "stopping",
            on_enter=("forward_signal",),
            timers=(state_timer("stop_grace", "supervisor_stop_grace", "stop_timeout"),),
            doc="a stop signal was forwarded; waiting for the wrapper to exit",
        ),
        State("exited", terminal=True, on_enter=("exit_as_wrapper",)),
        State("failed", terminal=True, on_enter=("exit_failed",)),
    ),
    transitions=(
        on("wrapper_stable", "running", "stable"),
        on(
            "wrapper_exited",
            UP,
            "exited",
            guard="clean_exit",
            effects="note_exit",
            doc="exit 0: the wrapper meant to stop",
        ),
        on(
            "wrapper_exited",
            UP,
            "failed",
            guard="usage_error",
            effects="note_exit",
            doc="exit 2: the wrapper refused its command line or config; it would again",
        ),
        on(
            "wrapper_exited",
            UP,
            "restarting",
            consumes="wrapper_restarts",
            effects="note_exit",
            doc="a crash",
        ),
        on("wrapper_exited", UP, "failed", effects="note_exit"),
        on("restart_due", "restarting", "running"),
        on("stop_requested", UP, "stopping", effects="note_signal"),
        on(
            "stop_requested",
            "stopping",
            None,
            effects=("note_signal", "forward_signal"),
            doc="a second signal is passed on too",
        ),
        on(
            "stop_requested",
            "restarting",
            "exited",
            effects="stopped_between_starts",
            doc="no wrapper to stop",
        ),
        on("wrapper_exited", "stopping", "exited", effects="note_exit"),
        on("stop_timeout", "stopping", None, effects="kill_wrapper"),
        on("fault", "*", "failed"),
    ),
)


def exit_status(code: object) -> int:
    """A child's return code as a shell reports it: ``-N`` (killed by signal N) is 128+N; a code
    the host could not learn is 1."""
    if not isinstance(code, int):
        return 1
    return 128 - code if code < 0 else code


def _start(ctx: SupervisorContext, _event: Event) -> StartWrapper:
    ctx.starts += 1
    return StartWrapper(attempt=ctx.starts)


def _note_exit(ctx: SupervisorContext, event: Event) -> None:
    ctx.exit_code = exit_status(event.data.get("code"))


def _note_signal(ctx: SupervisorContext, event: Event) -> None:
    ctx.signal = str(event.data.get("signal") or "SIGTERM")


def _stopped_between_starts(ctx: SupervisorContext, _event: Event) -> None:
    ctx.exit_code = 0


SPEC = MachineSpec(
    DECLARATION,
    SUPERVISOR_TIMERS,
    SupervisorContext,
    guards={
        "clean_exit": lambda _ctx, event: event.data.get("code") == 0,
        "usage_error": lambda _ctx, event: event.data.get("code") == USAGE_ERROR,
    },
    effects={
        "start_wrapper": _start,
        "note_exit": _note_exit,
        "note_signal": _note_signal,
        "stopped_between_starts": _stopped_between_starts,
        "forward_signal": lambda ctx, _e: SignalWrapper(ctx.signal),
        "kill_wrapper": lambda _ctx, _e: SignalWrapper("SIGKILL"),
        "exit_as_wrapper": lambda ctx, _e: ExitProcess(ctx.exit_code, "wrapper exited"),
        "exit_failed": lambda ctx, _e: ExitProcess(
            ctx.exit_code or 1,
            "wrapper refused its command line"
            if ctx.exit_code == USAGE_ERROR
            else "wrapper restart budget spent",
        ),
    },
)
