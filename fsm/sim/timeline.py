"""The timeline: what happened in a run, in order, for people (text) and machines (JSON lines).

Every transition of every machine (wrapper side and session side) and every thing the world did
(a scripted fault, a Kilo spawn, a frame lost) becomes one ``Line``. The rendering is a pure
function of the lines, and lines hold only values derived from the seeded run — no wall time, no
object ids — so the same seed prints the same bytes, which is what makes a timeline diffable
between two versions of a machine.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

SHOWN = frozenset({"start", "transition", "fault", "do", "world"})
"""Kinds printed by default; internal transitions (heartbeat re-arms, progress) are in
``--verbose`` and in the JSON lines."""


class Line(msgspec.Struct, frozen=True, omit_defaults=True):
    at: float
    session: str
    machine: str
    """``session``, ``w2.wrapper``, ``w2.turn:m1`` … or ``world``/``do`` for the world's lines."""
    kind: str
    source: str = ""
    dest: str = ""
    trigger: str = ""
    effects: tuple[str, ...] = ()
    detail: str = ""


def clock_label(seconds: float) -> str:
    """``0:01:23.456``: virtual time since the run started."""
    ms = round(seconds * 1000)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours}:{minutes:02d}:{secs:02d}.{ms:03d}"


def render_text(lines: Iterable[Line], *, verbose: bool = False, sessions: int = 1) -> str:
    out: list[str] = []
    for line in lines:
        if not verbose and line.kind not in SHOWN:
            continue
        who = line.machine if sessions == 1 else f"{line.session}/{line.machine}"
        if line.kind in ("do", "world"):
            mark = "▶" if line.kind == "do" else "·"
            text = f"{mark} {line.trigger}" + (f"  {line.detail}" if line.detail else "")
            out.append(f"{clock_label(line.at)}  {who:<18} {text}")
            continue
        if line.kind == "start":
            move = f"⇒ {line.dest}"
        elif line.kind == "internal":
            move = f"({line.source})"
        elif line.kind in ("ignored", "timer_dropped", "fault"):
            move = f"✗ {line.source}"
        else:
            move = f"{line.source} → {line.dest}"
        text = f"{move:<26} {line.trigger}"
        if line.effects:
            text += f"  / {', '.join(line.effects)}"
        if line.detail:
            text += f"  ({line.detail})"
        out.append(f"{clock_label(line.at)}  {who:<18} {text}")
    return "\n".join(out)


_encoder = msgspec.json.Encoder()


def render_json(lines: Iterable[Line], *, verbose: bool = False) -> str:
    return "\n".join(
        _encoder.encode(line).decode() for line in lines if verbose or line.kind in SHOWN
    )
