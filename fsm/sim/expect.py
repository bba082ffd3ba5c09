"""Judging a run: each expectation of a scenario becomes one pass/fail line saying what was seen.

A failing line must let the reader fix the scenario or the machine without re-running anything:
it repeats the claim in words, names the file line it came from, and says what happened instead
(the state seen, the outcome and when, the count and the times it happened).
"""

from __future__ import annotations

import msgspec

from fsm.control.core import TERMINAL
from fsm.sim.scenario import Expectation
from fsm.sim.timeline import clock_label
from fsm.sim.world import TAKEN, World


class ExpectResult(msgspec.Struct, frozen=True):
    index: int
    line: int | None
    passed: bool
    claim: str
    seen: str

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line is not None else f"expect[{self.index}]"
        mark = "PASS" if self.passed else "FAIL"
        text = f"  {mark}  {self.claim}"
        if not self.passed:
            text += f"\n          saw: {self.seen}\n          at:  {where}"
        return text


def _window(window: tuple[float, float] | None) -> str:
    if window is None:
        return ""
    return f" within [{clock_label(window[0])}, {clock_label(window[1])}]"


def _compare(e: Expectation, value: int) -> tuple[bool, str]:
    ok = True
    words: list[str] = []
    if e.equals is not None:
        ok = ok and value == e.equals
        words.append(f"= {e.equals}")
    if e.at_least is not None:
        ok = ok and value >= e.at_least
        words.append(f">= {e.at_least}")
    if e.at_most is not None:
        ok = ok and value <= e.at_most
        words.append(f"<= {e.at_most}")
    return ok, " and ".join(words)


def _machine_matches(label: str, wanted: str) -> bool:
    machine_id = label.split(".", 1)[-1]
    return machine_id == wanted or machine_id.split(":", 1)[0] == wanted


def judge(e: Expectation, world: World, states: dict[int, str]) -> ExpectResult:
    """``states`` holds what the runner saw for each ``state`` expectation at its time."""
    sid = e.session
    if e.kind == "state":
        assert e.machine is not None and e.at is not None
        seen = states.get(e.index, "not sampled")
        claim = f"state of {e.machine} at {clock_label(e.at)} is {' or '.join(e.states)}"
        return ExpectResult(e.index, e.line, seen in e.states, claim, seen)
    if e.kind in ("outcome", "no_outcome"):
        assert e.message is not None
        message = world.message(sid, e.message)
        if e.kind == "no_outcome":
            assert e.before is not None
            claim = f"message {e.message} has no outcome before {clock_label(e.before)}"
            if message is None or message.finished_at is None:
                state = message.state if message else "never sent"
                return ExpectResult(e.index, e.line, True, claim, state)
            seen = f"{message.state} {message.reason} at {clock_label(message.finished_at)}"
            return ExpectResult(e.index, e.line, message.finished_at >= e.before, claim, seen)
        claim = f"message {e.message} ends {e.status}"
        claim += f" ({e.reason})" if e.reason else ""
        claim += f" with error containing {e.error!r}" if e.error else ""
        claim += _window(e.within)
        if message is None:
            return ExpectResult(e.index, e.line, False, claim, "the message was never sent")
        if message.state not in TERMINAL or message.finished_at is None:
            return ExpectResult(e.index, e.line, False, claim, f"still {message.state}")
        seen = f"{message.state} ({message.reason}) at {clock_label(message.finished_at)}"
        if message.error:
            seen += f", error {message.error!r}"
        ok = message.state == e.status
        ok = ok and (e.reason is None or message.reason == e.reason)
        ok = ok and (e.error is None or e.error in message.error)
        if e.within is not None:
            ok = ok and e.within[0] <= message.finished_at <= e.within[1]
        return ExpectResult(e.index, e.line, ok, claim, seen)
    if e.kind == "count":
        return _count(e, world)
    assert e.metric is not None
    value = _metric(world, sid, e.metric)
    ok, words = _compare(e, value)
    return ExpectResult(e.index, e.line, ok, f"{e.metric} {words}", str(value))


def _count(e: Expectation, world: World) -> ExpectResult:
    sid = e.session
    low, high = e.between if e.between is not None else (float("-inf"), float("inf"))
    times: list[float] = []
    if e.action is not None:
        what = f"world action {e.action}"
        times = [
            a.at
            for a in world.actions
            if a.session == sid and a.name == e.action and low <= a.at <= high
        ]
    elif e.log is not None:
        what = f"session log entries {e.log!r}"
        times = [
            row.at
            for row in world.store.events(sid, limit=10**9)
            if row.kind == e.log and low <= row.at <= high
        ]
    else:
        parts = [e.machine or "any machine"]
        if e.source or e.dest:
            parts.append(f"{e.source or '*'} → {e.dest or '*'}")
        if e.trigger:
            parts.append(f"on {e.trigger}")
        what = "transitions of " + " ".join(parts)
        for line in world.lines:
            if line.session != sid or line.kind not in TAKEN or not (low <= line.at <= high):
                continue
            if line.machine in ("world", "do"):
                continue
            if line.kind == "internal" and (e.source or e.dest):
                continue  # an internal transition stays in its state: it moves nowhere
            if e.machine is not None and not _machine_matches(line.machine, e.machine):
                continue
            if e.trigger is not None and line.trigger != e.trigger:
                continue
            if e.source is not None and line.source != e.source:
                continue
            if e.dest is not None and line.dest != e.dest:
                continue
            times.append(line.at)
    ok, words = _compare(e, len(times))
    claim = f"count of {what}{_window(e.between)} {words}"
    shown = ", ".join(clock_label(t) for t in times[:8]) + (" …" if len(times) > 8 else "")
    seen = f"{len(times)}" + (f" (at {shown})" if times else "")
    return ExpectResult(e.index, e.line, ok, claim, seen)


def _metric(world: World, sid: str, metric: str) -> int:
    core = world.controls[sid].core
    wrappers = [w for w in world.launched if w.core.identity.session_id == sid]
    if metric == "events_dropped":
        return core.events_dropped
    if metric == "duplicates":
        return core.duplicates
    if metric == "ignored_outcomes":
        return len(core.ignored_outcomes)
    if metric == "outbox_dropped":
        return sum(w.core.outbox.dropped_total for w in wrappers)
    return sum(w.core.dropped_stale_events for w in wrappers)
