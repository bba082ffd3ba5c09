"""Every duration of the system, in one table per side.

The source system's worst timer bug was a production config silently overriding the stale
threshold (10 min instead of 90 s). Here a duration exists only as a row of one of these tables;
machines refer to rows by key, overrides are checked against the table (an unknown key is an
error naming the nearest known one), and the effective values are what the engine runs, what
``/job/status`` and the metrics show and what ``fsm-agent graph --config`` draws.

Defaults follow ``shared/DESIGN.md``: the source design for the health layers (15 s silence, 90 s
stale heartbeat) and the refined control-plane document for the rest (7 min no-progress, 120 min
hard cap, budgets and backoffs). Timer ownership is the later Kilo design's: the wrapper owns a
turn's clocks, and the control plane's hung session (16.5 min) and max runtime (125 min) are
backstops above them — the source design's 5 min and 30 min killed a pending question or a long
tool the wrapper was rightly holding.
"""

from __future__ import annotations

from fsm.engine.durations import parse_duration
from fsm.engine.timer_table import TimerConfigError, TimerSetting, TimerTable, TimerValues

__all__ = [
    "CONTROL_TIMERS",
    "SUPERVISOR_TIMERS",
    "TABLES",
    "WRAPPER_TIMERS",
    "TimerConfigError",
    "TimerSetting",
    "TimerTable",
    "TimerValues",
]


def _t(key: str, default: str, doc: str) -> TimerSetting:
    return TimerSetting(key=key, default=parse_duration(default), doc=doc)


WRAPPER_TIMERS = TimerTable(
    "wrapper",
    (
        # wrapper lifecycle
        _t("agent_startup", "30s", "Kilo spawn to healthy; cold start is ~4 s, up to ~7 s loaded"),
        _t("agent_restart_window", "10m", "window of the agent restart budget (3 restarts)"),
        _t("agent_restart_backoff_initial", "1s", "first delay before restarting the agent"),
        _t("agent_restart_backoff_max", "30s", "largest delay before restarting the agent"),
        _t("agent_stop_grace", "5s", "SIGTERM to SIGKILL when stopping Kilo"),
        _t("wrapper_idle", "15m", "idle wrapper exits (orphan backstop; control stops it at 10m)"),
        # agent_link: the wrapper's event subscription to Kilo
        _t("stream_silence", "15s", "no Kilo event (not even a heartbeat) before probing health"),
        _t("health_probe_timeout", "5s", "GET /global/health answer time before Kilo is hung"),
        _t("first_event_grace", "12s", "a (re)subscribed stream must deliver its first event"),
        _t("stream_reconnect_delay", "500ms", "pause before resubscribing to Kilo's events"),
        _t("stream_reconnect_window", "2m", "window of the stream reconnect budget (6)"),
        # ingest_link: wrapper to control plane
        _t("ingest_connect_timeout", "10s", "WebSocket connect to the control plane"),
        _t("ingest_handshake_timeout", "10s", "hello to welcome/shutdown"),
        _t("ingest_heartbeat", "5s", "heartbeat period while connected"),
        _t("ingest_backoff_initial", "1s", "first reconnect delay"),
        _t("ingest_backoff_max", "30s", "largest reconnect delay (reconnects never stop)"),
        # turn: one prompt
        _t("turn_no_progress", "7m", "no text/reasoning/tool progress and no running tool"),
        _t("turn_hard_cap", "120m", "hard cap on one turn"),
        _t("turn_finalize_grace", "1s", "wait after turn close for the error that explains it"),
        _t("turn_abort_grace", "10s", "abort sent to Kilo, waiting for its turn close"),
        # the job API
        _t("job_first_request", "10s", "a new job-API connection must send its request"),
    ),
)

CONTROL_TIMERS = TimerTable(
    "control",
    (
        _t("first_connect", "5m", "wrapper start to its first hello"),
        _t("stale_heartbeat", "90s", "no heartbeat or frame from the wrapper (about 3 missed)"),
        _t("ingest_hello", "10s", "an accepted ingest socket must send its hello (else 1008)"),
        _t("http_first_request", "10s", "a new connection must send its first request's headers"),
        _t("stale_grace", "15s", "stale wrapper may reconnect before it is replaced"),
        _t(
            "hung_session",
            "16m30s",
            "backstop: an accepted message, no agent event (paused while the user is asked); "
            "above the wrapper's own turn_no_progress (7m), which owns the turn's clock",
        ),
        _t(
            "max_runtime",
            "125m",
            "backstop: a running session's cap, above the wrapper's own turn_hard_cap (120m)",
        ),
        _t("idle_stop", "10m", "idle session stops its wrapper (the agent's session is kept)"),
        _t(
            "runtime_notice_window",
            "1m",
            "a runtime's notice (an OOM kill in the container) explains a message lost this soon",
        ),
        _t("wrapper_restart_window", "10m", "window of the wrapper restart budget (5)"),
        _t("wrapper_backoff_initial", "1s", "first delay before restarting a wrapper"),
        _t("wrapper_backoff_max", "30s", "largest delay before restarting a wrapper"),
        _t("wrapper_stop_grace", "30s", "release/shutdown to wrapper exit"),
        _t(
            "replica_lease",
            "15s",
            "a replica's hold on a session (PostgreSQL), renewed every third of it; another "
            "replica claims the session once it expires",
        ),
    ),
)

SUPERVISOR_TIMERS = TimerTable(
    "supervisor",
    (
        # the in-container supervisor (fsm/machines/supervisor.py): restarts a crashed wrapper
        _t("supervisor_restart_window", "10m", "window of the in-container restart budget (5)"),
        _t("supervisor_backoff_initial", "1s", "first delay before restarting the wrapper"),
        _t("supervisor_backoff_max", "30s", "largest delay before restarting the wrapper"),
        _t("supervisor_stable", "1m", "a wrapper running this long was healthy: backoff resets"),
        _t(
            "supervisor_stop_grace",
            "8s",
            "forwarded SIGTERM to SIGKILL of the wrapper; above agent_stop_grace (5s), below "
            "Docker's stop timeout (10s)",
        ),
    ),
)

TABLES = {t.side: t for t in (WRAPPER_TIMERS, CONTROL_TIMERS, SUPERVISOR_TIMERS)}
