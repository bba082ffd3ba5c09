"""The dashboard's diagrams and timer declarations, derived from the machine declarations only.

Each machine's diagram is ``fsm.engine.graph.dot`` (the DOT ``fsm-agent graph`` writes) rendered
to SVG by Graphviz's ``dot`` once per process and effective timer values, so what the dashboard
draws is what the engine runs. Where ``dot`` is missing the diagram is a plain list of the
states, marked up the same way (one element per state, named by its ``<title>``), so the page's
highlighting works on either.

``declarations`` is what the page needs to show armed timers: per machine and state, the timers
living in it (state, silence and span timers with their effective durations).
"""

from __future__ import annotations

import functools
import html
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from fsm.engine.graph import dot
from fsm.engine.model import TimerKind
from fsm.engine.spec import MachineSpec
from fsm.engine.timer_table import TimerValues
from fsm.machines.catalog import ALL

ORDER = ("session", "wrapper", "agent_link", "turn", "ingest_link", "supervisor")
"""The control plane's own machine first, then the wrapper's as its lifecycle frames report them."""
REPORTED = {
    "session": "control plane",
    "wrapper": "wrapper",
    "agent_link": "wrapper",
    "turn": "wrapper",
}
"""Machines whose state reaches the control plane: its own, and those the wrapper sends as
lifecycle frames (``fsm.serve.core``: every machine but ``ingest_link``; the supervisor is the
wrapper's parent process and sends nothing)."""

_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_ID = re.compile(r'\bid="([^"]*)"')


def specs() -> list[MachineSpec[Any]]:
    by_name = {spec.name: spec for spec in ALL}
    return [by_name[name] for name in ORDER if name in by_name]


def _svg(dot_text: str, program: str, prefix: str) -> str:
    proc = subprocess.run(
        [program, "-Tsvg"], input=dot_text, capture_output=True, text=True, check=True, timeout=30
    )
    svg = _COMMENT.sub("", _PROLOG.sub("", proc.stdout, count=1))
    # Several diagrams share one page: their element ids must not collide.
    return _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)


def _state_list(spec: MachineSpec[Any]) -> str:
    items = "".join(
        f'<li class="node"><title>{html.escape(s.name)}</title>{html.escape(s.name)}</li>'
        for s in spec.definition.states
    )
    return f'<ul class="states">{items}</ul>'


@functools.cache
def _rendered(name: str, dot_text: str, program: str | None) -> str:
    spec = next(s for s in ALL if s.name == name)
    if program is None:
        return _state_list(spec)
    try:
        return _svg(dot_text, program, name)
    except (OSError, subprocess.SubprocessError):
        return _state_list(spec)


def diagram(spec: MachineSpec[Any], values: Mapping[str, TimerValues]) -> str:
    """The machine's diagram as inline SVG (or the state list without Graphviz)."""
    dot_text = dot(spec.definition, values[spec.table.side])
    return _rendered(spec.name, dot_text, shutil.which("dot"))


def declarations(values: Mapping[str, TimerValues]) -> dict[str, Any]:
    """Per machine: its side, whether its state is reported, its initial state and, per state,
    the timers living in it (``seconds`` null for a backoff, whose delay grows per attempt)."""
    out: dict[str, Any] = {}
    for spec in specs():
        machine = spec.definition
        side = values[spec.table.side]
        by_state: dict[str, list[dict[str, Any]]] = {s.name: [] for s in machine.states}
        for state, timer in machine.timers():
            row = {
                "name": timer.name,
                "kind": timer.kind.value,
                "seconds": side[timer.after] if timer.after is not None else None,
                "fires": timer.fires,
                "declared_in": state.name,
                "rearmed_by": list(timer.rearmed_by) if timer.kind is TimerKind.SILENCE else [],
            }
            for name in (state.name, *timer.span):
                by_state[name].append(row)
        out[spec.name] = {
            "side": spec.table.side,
            "reported_by": REPORTED.get(spec.name),
            "initial": machine.initial,
            "timers": by_state,
        }
    return out
