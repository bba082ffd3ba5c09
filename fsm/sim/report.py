"""The fleet picture: a self-contained HTML (or SVG) drawing of a run's timeline.

Theory of operation
-------------------
Everything is derived from the run's ``Line``s (``fsm.sim.timeline``), the same lines the text and
JSON timelines print, so the picture can show nothing the timeline does not say:

* **fleet**: for each of ``BUCKETS`` instants, how many sessions are in each state of the session
  machine (the state at that instant: its last ``start``/``transition`` line so far), drawn as
  stacked areas, one colour per state in the machine's declared order; under it, one tick per
  fault injected (a ``do`` line other than a prompt or an answer), one row per kind of fault;
* **one session**: a lane per machine of that session (``session``, ``w1.wrapper``,
  ``w1.turn:m3`` …), each a row of rectangles, one per state it was in, from the line that
  entered it to the next one (or the end of the run), with that session's faults marked.

The output has no script, no font and no link to fetch: it opens offline, and the same run draws
the same bytes. Tooltips are SVG ``<title>`` elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from fsm.machines import catalog
from fsm.machines import session as session_machine
from fsm.sim.timeline import Line, clock_label

BUCKETS = 240
WIDTH = 960
LEFT = 150
"""Room for the lane labels and the axis."""
SESSION_STATES: tuple[str, ...] = tuple(s.name for s in session_machine.SPEC.definition.states)
ALL_STATES: tuple[str, ...] = tuple(
    dict.fromkeys(state.name for spec in catalog.ALL for state in spec.definition.states)
)
"""Every state name of every machine, in declaration order: each gets one colour everywhere."""
TERMINAL: dict[str, frozenset[str]] = {
    name: frozenset(s.name for s in spec.definition.states if s.terminal)
    for name, spec in catalog.BY_NAME.items()
}
FIXED = {"failed": "#d62728", "stopped": "#c7c7c7", "closed": "#c7c7c7", "exited": "#c7c7c7"}
NOT_FAULTS = frozenset({"prompt", "answer", "stop", "abort"})
"""``do`` lines that are a client's requests, not injected faults."""


def _colour(state: str) -> str:
    """A fixed colour per state name (golden-angle hues), grey for the ends, red for failed."""
    if state in FIXED:
        return FIXED[state]
    index = ALL_STATES.index(state) if state in ALL_STATES else len(ALL_STATES)
    return f"hsl({index * 137.508 % 360:.0f},55%,62%)"


def _spec_name(label: str) -> str:
    """``w2.turn:m3`` → ``turn``; ``session`` → ``session``."""
    return label.rsplit(".", 1)[-1].split(":", 1)[0]


def _x(at: float, span: float) -> float:
    return LEFT + (WIDTH - LEFT - 10) * (at / span if span > 0 else 0.0)


def _entered(line: Line) -> bool:
    return line.kind in ("start", "transition") and bool(line.dest)


def fleet_counts(
    lines: Sequence[Line], span: float, buckets: int = BUCKETS
) -> list[dict[str, int]]:
    """Sessions per session-machine state at each of ``buckets`` instants (the last at ``span``)."""
    state: dict[str, str] = {}
    counts: list[dict[str, int]] = []
    changes = [line for line in lines if line.machine == "session" and _entered(line)]
    i = 0
    for b in range(1, buckets + 1):
        at = span * b / buckets
        while i < len(changes) and changes[i].at <= at:
            state[changes[i].session] = changes[i].dest
            i += 1
        tally: dict[str, int] = {}
        for current in state.values():
            tally[current] = tally.get(current, 0) + 1
        counts.append(tally)
    return counts


def faults(lines: Sequence[Line]) -> list[Line]:
    return [line for line in lines if line.kind == "do" and line.trigger not in NOT_FAULTS]


def _axis(span: float, y: float) -> str:
    out = [f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - 10}" y2="{y}" stroke="#555"/>']
    for k in range(7):
        at = span * k / 6
        x = _x(at, span)
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#555"/>')
        label = clock_label(at)[:-4]
        out.append(f'<text x="{x:.1f}" y="{y + 16}" text-anchor="middle">{label}</text>')
    return "\n".join(out)


def fleet_svg(lines: Sequence[Line], span: float, sessions: int) -> str:
    """Stacked session states over time, and the faults injected under them."""
    counts = fleet_counts(lines, span)
    seen = {s for tally in counts for s in tally}
    states = [s for s in SESSION_STATES if s in seen] + sorted(seen - set(SESSION_STATES))
    top, height = 30, 220
    injected = faults(lines)
    kinds = sorted({f.trigger for f in injected})
    rows_top = top + height + 40
    total_height = rows_top + 18 * len(kinds) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="fleet" width="{WIDTH}" '
        f'height="{total_height}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="18" font-size="13">Sessions in each state '
        f"({sessions:,} sessions, {clock_label(span)[:-4]} simulated)</text>",
    ]
    step = (WIDTH - LEFT - 10) / len(counts)
    for state in states:
        below = states[: states.index(state)]
        points_top: list[str] = []
        points_bottom: list[str] = []
        for b, tally in enumerate(counts):
            base = sum(tally.get(s, 0) for s in below)
            value = tally.get(state, 0)
            for x in (LEFT + b * step, LEFT + (b + 1) * step):
                points_top.append(f"{x:.1f},{top + height * (1 - (base + value) / sessions):.1f}")
                points_bottom.append(f"{x:.1f},{top + height * (1 - base / sessions):.1f}")
        peak = max(tally.get(state, 0) for tally in counts)
        polygon = " ".join(points_top + points_bottom[::-1])
        out.append(
            f'<polygon class="state" data-state="{state}" points="{polygon}" '
            f'fill="{_colour(state)}"><title>{state}: up to {peak:,} '
            f"sessions</title></polygon>"
        )
    out.append(f'<text x="{LEFT - 6}" y="{top + 4}" text-anchor="end">{sessions:,}</text>')
    out.append(f'<text x="{LEFT - 6}" y="{top + height}" text-anchor="end">0</text>')
    out.append(_axis(span, top + height))
    legend_x = 10
    for i, state in enumerate(states):
        y = top + 14 * i
        out.append(
            f'<rect x="{legend_x}" y="{y}" width="10" height="10" '
            f'fill="{_colour(state)}"/>'
            f'<text x="{legend_x + 14}" y="{y + 9}">{state}</text>'
        )
    out.append(f'<text x="{LEFT}" y="{rows_top - 8}" font-size="13">Faults injected</text>')
    for row, kind in enumerate(kinds):
        y = rows_top + 18 * row
        mine = [f for f in injected if f.trigger == kind]
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 10}" text-anchor="end" class="fault-kind">'
            f"{escape(kind)} ({len(mine)})</text>"
        )
        for f in mine:
            x = _x(f.at, span)
            out.append(
                f'<line class="fault" x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 12}" '
                f'stroke="#c00"><title>{clock_label(f.at)} {escape(f.session)} '
                f"{escape(kind)} {escape(f.detail)}</title></line>"
            )
    out.append("</svg>")
    return "\n".join(out)


def _lanes(mine: Sequence[Line], span: float) -> dict[str, list[tuple[float, float, str]]]:
    """Per machine: (from, to, state). A terminal state is a short mark (the machine is gone);
    a wrapper's machines end when its process exits (the ``wrapper.exit`` world line)."""
    entered: dict[str, list[tuple[float, str]]] = {}
    exits: dict[str, float] = {}
    for line in mine:
        if line.kind == "world" and line.trigger == "wrapper.exit":
            exits.setdefault(line.detail.split(" ", 1)[0], line.at)
        elif _entered(line) and line.machine not in ("world", "do"):
            entered.setdefault(line.machine, []).append((line.at, line.dest))
    mark = span / 300
    lanes: dict[str, list[tuple[float, float, str]]] = {}
    for machine, changes in entered.items():
        gone = exits.get(machine.split(".", 1)[0], span) if "." in machine else span
        terminal = TERMINAL.get(_spec_name(machine), frozenset())
        spans: list[tuple[float, float, str]] = []
        for k, (at, state) in enumerate(changes):
            end = changes[k + 1][0] if k + 1 < len(changes) else gone
            if state in terminal:
                end = min(end, at + mark)
            spans.append((at, max(at, min(end, gone)), state))
        lanes[machine] = spans
    return lanes


def lanes_svg(lines: Sequence[Line], span: float, session: str) -> str:
    """One session's machines, a lane each, coloured by state over time."""
    mine = [line for line in lines if line.session == session]
    lanes = _lanes(mine, span)
    states = [s for s in ALL_STATES if any(st == s for v in lanes.values() for *_, st in v)]
    lane_h, top = 16, 30
    injected = faults(mine)
    legend_top = top + lane_h * len(lanes) + 30
    height = legend_top + 14 * ((len(states) + 5) // 6) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lanes" width="{WIDTH}" '
        f'height="{height}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="18" font-size="13">Session {escape(session)}: '
        f"its machines' states over time</text>",
    ]
    if not lanes:
        out.append(f'<text x="{LEFT}" y="{top + 12}">no transitions of {escape(session)}</text>')
    for row, (machine, spans) in enumerate(lanes.items()):
        y = top + lane_h * row
        out.append(
            f'<text x="{LEFT - 6}" y="{y + 11}" text-anchor="end" class="lane">'
            f"{escape(machine)}</text>"
        )
        for at, end, state in spans:
            x0, x1 = _x(at, span), _x(end, span)
            out.append(
                f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{lane_h - 3}" fill="{_colour(state)}" '
                f'data-state="{escape(state)}"><title>{escape(machine)} {escape(state)} '
                f"{clock_label(at)} to {clock_label(end)}</title></rect>"
            )
    y = top + lane_h * len(lanes)
    for f in injected:
        x = _x(f.at, span)
        out.append(
            f'<line class="fault" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y}" stroke="#c00" '
            f'stroke-dasharray="3,2"><title>{clock_label(f.at)} {escape(f.trigger)} '
            f"{escape(f.detail)}</title></line>"
        )
    out.append(_axis(span, y + 4))
    for i, state in enumerate(states):
        x = LEFT + (i % 6) * 130
        ly = legend_top + 14 * (i // 6)
        out.append(
            f'<rect x="{x}" y="{ly}" width="10" height="10" fill="{_colour(state)}"/>'
            f'<text x="{x + 14}" y="{ly + 9}">{state}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def render_html(lines: Sequence[Line], span: float, sessions: int, session: str, title: str) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            "<style>body{font-family:sans-serif;margin:16px;color:#222}"
            "svg{display:block;margin:12px 0}</style>",
            "</head><body>",
            f"<h1>{escape(title)}</h1>",
            fleet_svg(lines, span, sessions),
            lanes_svg(lines, span, session),
            "</body></html>",
            "",
        ]
    )


def render_svg(lines: Sequence[Line], span: float, sessions: int, session: str) -> str:
    """Both drawings stacked in one SVG document."""
    fleet = fleet_svg(lines, span, sessions)
    lanes = lanes_svg(lines, span, session)
    h1 = int(fleet.split('height="', 1)[1].split('"', 1)[0])
    h2 = int(lanes.split('height="', 1)[1].split('"', 1)[0])
    inner2 = lanes.replace("<svg ", f'<svg y="{h1}" ', 1)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h1 + h2}">\n'
        f"{fleet}\n{inner2}\n</svg>\n"
    )
