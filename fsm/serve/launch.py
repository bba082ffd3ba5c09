"""Start the wrapper's Kilo first, then import and run the host.

Kilo's cold start is seconds of its own work; the wrapper's start before it spawns Kilo is the
interpreter plus its imports (the host, uvicorn, websockets, httpx: measured 0.3 s from the
wrapper's exec to Kilo's spawn in the container). Spawning Kilo before importing the host lets
those imports run on the other core while Kilo boots, so a session's container is ready sooner
(issue 14's start-up goal: create → ready within 1.2x of ``docker run`` + Kilo's own start).

The host still owns the start: its wrapper machine's first ``SpawnAgent`` waits for this spawn
(``start_agent(first=...)``) under the same start-up timeout, counted from the spawn. A spawn that
fails here is left to the host, which starts Kilo as always and reports why it cannot; one the host
never took (it stopped first) is killed on the way out.
"""

from __future__ import annotations

import signal

from adapters.agents.registry import agent_spec
from adapters.kilo.process import SpawnedAgent, spawn_agent
from fsm.hosting.logs import JsonLog
from fsm.machines.timers import TimerValues
from fsm.serve.settings import ServeSettings


async def early_agent(settings: ServeSettings) -> SpawnedAgent | None:
    try:
        return await spawn_agent(
            workdir=settings.workdir,
            state_dir=settings.state_dir,
            config=settings.agent_config,
            agent_bin=settings.agent_bin,
            pass_env=settings.agent_pass_env,
            run_as=settings.agent_run_as,
            spec=agent_spec(settings.agent),
        )
    except Exception:  # the host's own start says why, under its machine's budget
        return None


def hold_stop_signals() -> list[int]:
    """SIGTERM and SIGINT received before the host listens for them, in order.

    Kilo now exists while the host is still being imported; a ``docker stop`` in that window
    found Python's default SIGTERM action and the wrapper died with 143 (a crash to the
    supervisor, and Kilo left to its parent watchdog). The host handles these first when its
    own signal receiver is open (``WrapperHost._signals``)."""
    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: received.append(number))
    return received


async def run_wrapper(settings: ServeSettings, values: TimerValues, log: JsonLog) -> int:
    """Spawn Kilo, import the host while it boots, run the host; the process's exit code."""
    held = hold_stop_signals()
    early = await early_agent(settings)
    host = None
    try:
        from fsm.serve.host import WrapperHost  # after the spawn: see the module docstring

        host = WrapperHost(settings, values, log, early_agent=early, early_signals=held)
        return await host.run()
    finally:
        left = early if host is None else host.early_agent
        if left is not None:
            await left.abandon()
