"""Detection latency: from a fault to its detection and to recovery, against the thresholds.

Real processes, timers shortened through configuration (as the end-to-end tests do):

* Kilo hung (SIGSTOP) under ``fsm-agent serve``: detected when the wrapper leaves ``ready`` for
  ``stale`` (silence window, then the health probe times out → ``restarting``); recovered at the
  next ``ready``. The threshold is ``stream_silence + health_probe_timeout`` after Kilo's last
  event (Kilo heartbeats every 10 s, so the silence can start up to 10 s before the fault).
* A wrapper killed (SIGKILL) under ``fsm-agent control``: detected when the session enters
  ``restarting`` (the local runtime sees the exit), recovered at the next ``ready``.
* A wrapper frozen (SIGSTOP): detected at ``stale`` (``stale_heartbeat`` without a heartbeat),
  replaced after ``stale_grace``, recovered at ``ready``.

Times come from the machines' own transition records (the wrapper's monotonic clock, the control
plane's wall clock), compared with the moment the bench sent the signal on the same clock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path

from bench.common import Figure, median
from fsm.wire.protocol import LifecycleFrame
from tests.fakes.control_process import Control, running_control, wait_for
from tests.fakes.fake_llm import running_fake_llm
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import running_wrapper

RUNS = 3
SERVE_TIMERS = {
    "stream_silence": "11s",
    "health_probe_timeout": "1s",
    "agent_stop_grace": "1s",
    "agent_restart_backoff_initial": "100ms",
    "ingest_backoff_initial": "100ms",
    "ingest_heartbeat": "1s",
}
CONTROL_TIMERS = {
    "ingest_heartbeat": "1s",
    "ingest_backoff_initial": "100ms",
    "ingest_backoff_max": "500ms",  # below the stale window (fsm/machines/timer_relations.py)
    "agent_stop_grace": "1s",
    "wrapper_backoff_initial": "100ms",
    "wrapper_stop_grace": "2s",
    "stale_heartbeat": "3s",
    "stale_grace": "1s",
}


def _wrapper_states(ingest: FakeIngest) -> list[LifecycleFrame]:
    return [f for f in ingest.ordered() if isinstance(f, LifecycleFrame) and f.machine == "wrapper"]


def _kilo_hang(tmp: Path, kilo_config: dict[str, object]) -> tuple[float, float]:
    ingest = FakeIngest()
    ingest.start()
    try:
        with running_wrapper(tmp, ingest.url, kilo_config, SERVE_TIMERS) as wrapper:
            wrapper.wait_ready()
            time.sleep(1.0)
            pid = wrapper.agent_pid()
            seen = len(_wrapper_states(ingest))
            fault = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                frames = wait_for(
                    "the wrapper to be ready again",
                    lambda: (
                        (got := _wrapper_states(ingest)[seen:])
                        and any(f.state == "ready" for f in got)
                        and got
                    ),
                    timeout=60,
                )
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            detected = next(f.at for f in frames if f.state in ("stale", "restarting"))
            recovered = next(f.at for f in frames if f.state == "ready")
            return detected - fault, recovered - fault
    finally:
        ingest.close()


def _session_times(control: Control, sid: str, since: float, detect: str) -> tuple[float, float]:
    def path() -> list[tuple[str, float]]:
        return [
            (str(e.data["to"]), e.data["at"])
            for e in control.events(sid)
            if e.kind == "transition" and e.data["at"] >= since
        ]

    wait_for(
        "the session to be ready again",
        lambda: any(to == "ready" for to, _ in path()),
        timeout=60,
        tail=control.tail,
    )
    got = path()
    detected = next(at for to, at in got if to == detect)
    recovered = next(at for to, at in got if to == "ready")
    return detected - since, recovered - since


def _wrapper_fault(tmp: Path, kilo_config: dict[str, object], sig: int) -> tuple[float, float]:
    tmp.mkdir(parents=True)
    with running_control(tmp, kilo_config, CONTROL_TIMERS) as control:
        sid = control.create_session()
        control.wait_state(sid, ("ready",))
        time.sleep(1.0)
        pid = control.wrapper_pids()[sid]
        fault = time.time()
        os.kill(pid, sig)
        try:
            return _session_times(
                control, sid, fault, "restarting" if sig == signal.SIGKILL else "stale"
            )
        finally:
            if sig == signal.SIGSTOP:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def _figures(
    name: str,
    samples: list[tuple[float, float]],
    threshold: float,
    threshold_text: str,
    recovered_means: str,
) -> list[Figure]:
    detect = [d for d, _ in samples]
    recover = [r for _, r in samples]
    return [
        Figure(
            "detection",
            f"{name}: fault → detected",
            median(detect),
            "s",
            baseline=f"threshold ({threshold_text})",
            baseline_value=threshold,
            ratio=median(detect) / threshold if threshold else None,
            target="<= threshold",
            meets_target=max(detect) <= threshold + 0.5,
            runs=len(detect),
            samples=detect,
        ),
        Figure(
            "detection",
            f"{name}: fault → recovered (ready again)",
            median(recover),
            "s",
            runs=len(recover),
            note=recovered_means,
            samples=recover,
        ),
    ]


def run() -> list[Figure]:
    figures: list[Figure] = []
    with running_fake_llm() as llm, tempfile.TemporaryDirectory(prefix="fsm-bench-det-") as tmp:
        root = Path(tmp)
        config = llm.provider_config()
        hang = [_kilo_hang(root / f"hang{i}", config) for i in range(RUNS)]
        figures += _figures(
            "Kilo SIGSTOP (serve)",
            hang,
            12.0,
            "stream_silence 11 s + probe 1 s",
            "wrapper ready: a new Kilo healthy, cold start included",
        )
        killed = [_wrapper_fault(root / f"kill{i}", config, signal.SIGKILL) for i in range(RUNS)]
        figures += _figures(
            "wrapper SIGKILL (control)",
            killed,
            0.5,
            "exit seen by the runtime",
            "session ready: the new wrapper connected (its Kilo still starting)",
        )
        frozen = [_wrapper_fault(root / f"stop{i}", config, signal.SIGSTOP) for i in range(RUNS)]
        figures += _figures(
            "wrapper SIGSTOP (control)",
            frozen,
            3.0,
            "stale_heartbeat 3 s",
            "session ready: stale_grace 1 s, stop, new wrapper connected",
        )
    return figures
