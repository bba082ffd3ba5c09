"""Prometheus text exposition, from counters the control host updates as records arrive.

Hand-written rather than a client library: the exposition format is a few lines, the counters are
plain dicts, and the effective timer values (weakness 4 of the source design: a config silently
overriding a threshold) are exported beside them so a dashboard shows what is really in force.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from fsm.engine.machine import Record


class Metrics:
    def __init__(self) -> None:
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.timer_expiries: Counter[tuple[str, str]] = Counter()
        self.frames_in: Counter[str] = Counter()
        self.frames_out: Counter[str] = Counter()
        self.events_dropped = 0
        self.refused_connections = 0
        self.violations: Counter[int] = Counter()
        """Ingest sockets closed for a protocol violation, by close code."""
        self.store_failures = 0

    def record(self, rec: Record) -> None:
        if rec.kind in ("transition", "internal"):
            self.transitions[(rec.machine, rec.trigger)] += 1
        if rec.timer and rec.kind in ("transition", "internal"):
            self.timer_expiries[(rec.machine, rec.timer)] += 1

    def render(
        self, sessions_by_state: Mapping[str, int], timers: Iterable[tuple[str, float]]
    ) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("fsm_agent_sessions", "gauge", "Sessions by session machine state.")
        for state, count in sorted(sessions_by_state.items()):
            out.append(f'fsm_agent_sessions{{state="{state}"}} {count}')
        family("fsm_agent_transitions_total", "counter", "Transitions by machine and trigger.")
        for (machine, trigger), count in sorted(self.transitions.items()):
            out.append(
                f'fsm_agent_transitions_total{{machine="{machine}",trigger="{trigger}"}} {count}'
            )
        family("fsm_agent_timer_expiries_total", "counter", "Timer expiries by timer.")
        for (machine, timer), count in sorted(self.timer_expiries.items()):
            out.append(
                f'fsm_agent_timer_expiries_total{{machine="{machine}",timer="{timer}"}} {count}'
            )
        family("fsm_agent_frames_in_total", "counter", "Frames received from wrappers by type.")
        for kind, count in sorted(self.frames_in.items()):
            out.append(f'fsm_agent_frames_in_total{{type="{kind}"}} {count}')
        family("fsm_agent_frames_out_total", "counter", "Frames sent to wrappers by type.")
        for kind, count in sorted(self.frames_out.items()):
            out.append(f'fsm_agent_frames_out_total{{type="{kind}"}} {count}')
        family("fsm_agent_events_dropped_total", "counter", "Events wrappers reported dropped.")
        out.append(f"fsm_agent_events_dropped_total {self.events_dropped}")
        family("fsm_agent_refused_connections_total", "counter", "Wrappers refused (bad token).")
        out.append(f"fsm_agent_refused_connections_total {self.refused_connections}")
        family("fsm_agent_ingest_closed_total", "counter", "Ingest sockets closed by close code.")
        for code, count in sorted(self.violations.items()):
            out.append(f'fsm_agent_ingest_closed_total{{code="{code}"}} {count}')
        family("fsm_agent_store_failures_total", "counter", "Session writes that failed.")
        out.append(f"fsm_agent_store_failures_total {self.store_failures}")
        family("fsm_agent_timer_seconds", "gauge", "Effective timer values in force.")
        for key, seconds in timers:
            out.append(f'fsm_agent_timer_seconds{{timer="{key}"}} {seconds:g}')
        return "\n".join(out) + "\n"
