"""Relations between durations: a watchdog outlasts what it watches, a backstop the cap it backs.

Each timer is checked alone where it is declared (``fsm/machines/timers.py``: a known key, a
positive
duration), but most of them only make sense against another one: a silence watchdog shorter than
the heartbeat that re-arms it fires on a healthy link (a ``stream_silence`` below Kilo's 10 s
heartbeat was accepted and reconnected the idle link every few seconds), and a control-plane
backstop at or below the wrapper's own cap fails a turn the wrapper was still entitled to finish.
So the relations are declared here once, as data, and :func:`fsm.settings.config.timer_values`
refuses a
configuration that breaks one, with a message naming both sides: every command and host that
loads a config then refuses it the same way (``fsm-agent ... --config`` exits 2).

A side of a relation is a timer key, a sum of keys (``"turn_hard_cap + turn_abort_grace"``: the
wrapper's verdict arrives only after its cap, the abort and the finalize grace) or a measured
constant of a program we do not configure (:data:`CONSTANTS`, e.g. Kilo's heartbeat period).
Keys of both tables may meet in one relation: the control plane hands its own config file to the
wrappers it starts (``fsm/control/main.py``), so one file holds both sides.

Budgets and backoffs against their windows are checked by ``fsm.engine.validate`` from the machine
declarations (their limits and factors live there); the relations below are what no single
declaration states.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import msgspec

from fsm.engine.durations import format_duration
from fsm.machines.timers import TABLES

AGENT_HEARTBEAT_PERIOD = 10.0
"""The agent's ``server.heartbeat`` period on ``/event`` and ``/global/event``, in seconds.
Measured on Kilo (``shared/kilo/README.md``, "heartbeat interval"): 10.00 s over 31 samples,
median 10.002 s, largest 10.057 s, the first beat 10 s after connect; after SIGCONT one beat at
once, then every 10 s again. OpenCode, whose API Kilo forked, sends the same event (its period is
not measured separately). No agent has a setting for it, so it is a constant here, not a row of
a timer table."""

CONSTANTS: Mapping[str, float] = {"agent_heartbeat": AGENT_HEARTBEAT_PERIOD}
"""Durations of programs we do not configure, by the name a relation uses for them."""

_CONSTANT_LABELS = {"agent_heartbeat": "the agent's heartbeat period"}


class Relation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``longer`` must exceed ``factor`` times ``shorter`` (or equal it, with ``or_equal``).

    Each side is a timer key, a constant of :data:`CONSTANTS` or a sum of them joined by ``+``.
    """

    shorter: str
    longer: str
    why: str
    factor: float = 1.0
    or_equal: bool = False

    def terms(self, side: str) -> tuple[str, ...]:
        return tuple(t.strip() for t in side.split("+"))

    def keys(self) -> tuple[str, ...]:
        """Every timer key the relation reads (constants excluded)."""
        return tuple(
            t
            for side in (self.shorter, self.longer)
            for t in self.terms(side)
            if t not in CONSTANTS
        )

    def holds(self, values: Mapping[str, float]) -> bool:
        low = self.factor * _total(self.terms(self.shorter), values)
        high = _total(self.terms(self.longer), values)
        return high >= low if self.or_equal else high > low

    def message(self, values: Mapping[str, float]) -> str:
        """Both sides by name and value, and why the relation matters."""
        low = _describe(self.terms(self.shorter), values)
        high = _describe(self.terms(self.longer), values)
        scale = f"{self.factor:g} x " if self.factor != 1 else ""
        bound = "at least" if self.or_equal else "longer than"
        return f"{high} must be {bound} {scale}{low}: {self.why}"


def _value(term: str, values: Mapping[str, float]) -> float:
    return CONSTANTS[term] if term in CONSTANTS else values[term]


def _total(terms: Iterable[str], values: Mapping[str, float]) -> float:
    return sum(_value(t, values) for t in terms)


def _name(term: str) -> str:
    label = _CONSTANT_LABELS.get(term)
    return f"{label} {term}" if label else f"timers.{term}"


def _describe(terms: tuple[str, ...], values: Mapping[str, float]) -> str:
    names = " + ".join(_name(t) for t in terms)
    return f"{names} ({format_duration(_total(terms, values))})"


RELATIONS: tuple[Relation, ...] = (
    # agent_link: the wrapper's watch over Kilo's event stream
    Relation(
        "agent_heartbeat",
        "stream_silence",
        "the silence watchdog is re-armed by Kilo's heartbeat, so an idle, healthy stream would "
        "go silent every period, be probed and resubscribed",
    ),
    Relation(
        "agent_heartbeat",
        "first_event_grace",
        "a new subscription may carry nothing but heartbeats, the first 10 s after connect; a "
        "shorter grace replaces a healthy stream before it could speak",
        or_equal=True,
    ),
    Relation(
        "stream_silence + health_probe_timeout",
        "turn_no_progress",
        "a hung Kilo must be found by the silence watchdog and its health probe (restarted, the "
        "turn resubmitted) before the turn's no-progress clock fails the turn instead",
        or_equal=True,
    ),
    # ingest_link and the control plane's stale watchdog over it
    Relation(
        "ingest_heartbeat",
        "stale_heartbeat",
        "the stale watchdog is re-armed by the wrapper's heartbeat; with less than two periods "
        "one late beat makes a healthy wrapper stale",
        factor=2.0,
        or_equal=True,
    ),
    Relation(
        "ingest_backoff_max",
        "stale_heartbeat + stale_grace",
        "a wrapper that lost its socket waits up to its longest reconnect delay plus 20% jitter "
        "(ingest_link's backoff) before trying again; a control plane that replaces it sooner "
        "restarts a wrapper that was about to come back",
        factor=1.2,
    ),
    # the turn's clocks belong to the wrapper; the control plane's are backstops above them
    Relation(
        "turn_no_progress + turn_abort_grace + turn_finalize_grace",
        "hung_session",
        "the hung timer is the control plane's backstop: the wrapper's own no-progress verdict "
        "(its clock, the abort, the finalize grace) must reach it first, or a turn the wrapper "
        "still watches (a long tool, a pending question) is failed behind its back",
    ),
    Relation(
        "turn_hard_cap + turn_abort_grace + turn_finalize_grace",
        "max_runtime",
        "max_runtime is the control plane's backstop: the wrapper's own hard-cap verdict (its "
        "cap, the abort, the finalize grace) must reach it first",
    ),
    # stopping and idling: each side's own timer is the backstop of the other's
    Relation(
        "agent_stop_grace",
        "wrapper_stop_grace",
        "a stopping wrapper first stops Kilo (SIGTERM, SIGKILL after agent_stop_grace); a control "
        "plane that gives up on the wrapper sooner kills it mid-stop and may orphan Kilo",
    ),
    Relation(
        "idle_stop",
        "wrapper_idle",
        "the wrapper's own idle exit is the orphan backstop for a control plane that is gone; "
        "sooner, it exits under a control plane that meant to keep it",
    ),
    # backoffs: the first delay is not above the largest
    Relation(
        "agent_restart_backoff_initial",
        "agent_restart_backoff_max",
        "the restart delay grows from its initial value up to its maximum",
        or_equal=True,
    ),
    Relation(
        "ingest_backoff_initial",
        "ingest_backoff_max",
        "the reconnect delay grows from its initial value up to its maximum",
        or_equal=True,
    ),
    Relation(
        "wrapper_backoff_initial",
        "wrapper_backoff_max",
        "the wrapper restart delay grows from its initial value up to its maximum",
        or_equal=True,
    ),
)


def broken(
    values: Mapping[str, float], relations: Iterable[Relation] = RELATIONS
) -> list[Relation]:
    """The relations ``values`` (keys of both tables together) do not satisfy."""
    return [r for r in relations if not r.holds(values)]


def problems(
    values: Mapping[str, float],
    configured: Collection[str] | None = None,
    relations: Iterable[Relation] = RELATIONS,
) -> list[str]:
    """One message per broken relation; with ``configured``, only those reading one of its keys.

    ``timer_values`` passes the keys a config set: a relation the defaults alone break is the
    timer table's business (tested there), not a fault of the file being loaded; refusing every
    config for it would stop every host. (The source design's backstops, ``hung_session`` 5 min
    and ``max_runtime`` 30 min, broke theirs until they were raised above the wrapper's caps.)
    """
    chosen = set(configured) if configured is not None else None
    return [
        r.message(values)
        for r in broken(values, relations)
        if chosen is None or chosen.intersection(r.keys())
    ]


def _undeclared(relations: Iterable[Relation]) -> list[str]:
    known = {k for table in TABLES.values() for k in table} | set(CONSTANTS)
    return [
        f"{r.shorter} < {r.longer}: {term!r} is neither a timer nor a constant"
        for r in relations
        for side in (r.shorter, r.longer)
        for term in r.terms(side)
        if term not in known
    ]


# A relation naming a key no table has would fail every config with a KeyError: refuse it here,
# at import, like an unknown key in a machine declaration.
if _problems := _undeclared(RELATIONS):
    raise ValueError("timer relations: " + "; ".join(_problems))
