"""Exhaustive exploration: every reachable state of the composed machines, up to a bound.

Theory of operation
-------------------
The explorer runs the *same* world as the simulator — ``SessionCore``, ``WrapperCore`` with its
``wrapper``, ``agent_link``, ``ingest_link`` and ``turn`` machines, the same fakes — on a
``ChoiceClock`` instead of the virtual clock. Time is abstracted the way model checkers abstract
timeouts: **every armed timer may expire at any moment**, in any order with the others, and so may
every slow thing the world does (Kilo's 4 s start, its 10 s heartbeat, a token, a tool, a stop
grace, a partition healing). Only the world's *fast* reactions — network latency, HTTP answers, a
process exiting after SIGTERM, anything due within ``prompt`` seconds of being scheduled — run at
once and in order after each step, like a network that is fast compared with every timeout.

A *step* is one such choice, or one injected event from a small alphabet (a prompt, an answer, a
stop, a Kilo crash/hang/silence/stream drop, a wrapper crash, an ingest drop/partition), each
bounded in number. The search is breadth-first, so the first violation found comes with a
shortest trace. A world cannot be copied (its machines hold closures), so each state is reached
by replaying its trace from scratch — deterministic, since every random choice is seeded — and
states are told apart by a *signature*: the machines' states, armed timers, budgets and the flags
of their contexts, the messages, the fakes' states, and what is pending. Counters that only grow
(generations, sequence numbers, spawn counts) are left out, so that the space is finite.

After every step the simulator's invariants are checked (``fsm.sim.invariants``), plus one only
exploration can check: a state in which the system has nothing left to do — no timer armed, no
reaction pending — while a message is still queued or accepted is a deadlock (waiting for the
client's *next* message does not count as a way out).
"""

from __future__ import annotations

import gc
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from fsm.control.core import UNFINISHED
from fsm.engine.clock import TimerHandle
from fsm.engine.runner import TimerEntry
from fsm.sim.invariants import Invariants, Violation
from fsm.sim.scenario import Action, Segment, WorldConfig
from fsm.sim.timeline import render_text
from fsm.sim.world import World

EXPLORE_WORLD = WorldConfig(
    token_interval=2.0,
    plan=(Segment("text", 2.0),),
    agent_heartbeat=10.0,
)
"""One token per text part, so a turn is a handful of steps."""


class _Pending:
    __slots__ = ("callback", "cancelled", "deadline", "label", "prompt", "seq")

    def __init__(
        self, seq: int, deadline: float, callback: Callable[[], None], label: str, prompt: bool
    ) -> None:
        self.seq = seq
        self.deadline = deadline
        self.callback = callback
        self.label = label
        self.prompt = prompt
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _Pending) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


def _describe(callback: Callable[[], None]) -> tuple[str, bool]:
    """(label, is a machine timer) for a scheduled callback, looking through ``SimProcess``."""
    inner: Any = callback
    while (nested := getattr(inner, "sim_inner", None)) is not None:
        inner = nested
    owner = getattr(inner, "__self__", None)
    if isinstance(owner, TimerEntry):
        machine_id, timer = owner.key
        return f"timer {machine_id}.{timer}", True
    name = getattr(inner, "__qualname__", type(inner).__name__).replace(".<locals>", "")
    if owner is not None and hasattr(owner, "name"):
        name = f"{owner.name}:{name}"
    return name, False


class ChoiceClock:
    """A scheduler whose slow callbacks are choices and whose fast ones run at once, in order."""

    runs_in_deadline_order = False
    """Any slow callback may run next: a machine timer gets a clock entry per arm, never one
    kept and moved on (``fsm.engine.runner``), so that firing a timer is one step of the search."""

    def __init__(self, prompt: float = 1.0) -> None:
        self.prompt = prompt
        self._now = 0.0
        self._seq = itertools.count()
        self._fast: list[_Pending] = []
        self.slow: list[_Pending] = []

    def now(self) -> float:
        return self._now

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        label, is_timer = _describe(callback)
        fast = not is_timer and deadline - self._now <= self.prompt
        item = _Pending(next(self._seq), max(deadline, self._now), callback, label, fast)
        if fast:
            heapq.heappush(self._fast, item)
        else:
            self.slow.append(item)
        return item

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self._now + delay, callback)

    def choices(self) -> list[_Pending]:
        self.slow = [p for p in self.slow if not p.cancelled]
        return list(self.slow)

    def fire(self, item: _Pending) -> None:
        self.slow.remove(item)
        self._now = max(self._now, item.deadline)
        item.callback()
        self.drain()

    def drain(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            while self._fast and self._fast[0].cancelled:
                heapq.heappop(self._fast)
            if not self._fast:
                return
            item = heapq.heappop(self._fast)
            self._now = max(self._now, item.deadline)
            item.callback()
        raise RuntimeError("the world's fast reactions never settle: a tight loop of callbacks")


# -- the alphabet of injected events -----------------------------------------------------------

PROMPT_PLANS: dict[str, tuple[Segment, ...]] = {
    "prompt": (Segment("text", 2.0),),
    "prompt.ask": (Segment("question"), Segment("text", 2.0)),
}
FAULTS = (
    "stop",
    "agent.crash",
    "agent.hang",
    "agent.silence",
    "agent.drop_stream",
    "wrapper.crash",
    "ingest.drop",
    "ingest.partition",
)


class Step(msgspec.Struct, frozen=True):
    kind: str
    """``run`` (a pending callback, by index) or ``do`` (an injected event)."""
    index: int = 0
    name: str = ""


def _inject(world: World, name: str, count: int) -> None:
    at = world.now
    if name in PROMPT_PLANS:
        world.do(Action(at=at, do="prompt", message=f"m{count}", plan=PROMPT_PLANS[name]))
    elif name == "answer":
        world.do(Action(at=at, do="answer", answers=("yes",)))
    elif name in ("ingest.drop", "ingest.partition"):
        world.do(Action(at=at, do=name, duration=30.0))
    else:
        world.do(Action(at=at, do=name))


class Explorer:
    def __init__(self, *, prompts: int, faults: int, prompt_window: float = 1.0) -> None:
        self.prompts = prompts
        self.faults = faults
        self.prompt_window = prompt_window

    def replay(
        self, trace: tuple[Step, ...], keep_timeline: bool = False
    ) -> tuple[World, ChoiceClock, list[int]]:
        """The world after ``trace``; and for each step, how many timeline lines it had before."""
        clock = ChoiceClock(self.prompt_window)
        world = World(
            EXPLORE_WORLD,
            seed=0,
            scheduler=clock,
            keep_timeline=keep_timeline,
            invariants=Invariants(),
        )
        world.start()
        clock.drain()
        marks: list[int] = []
        for i, step in enumerate(trace):
            marks.append(len(world.lines))
            self.apply(world, clock, step, trace[:i])
        return world, clock, marks

    def apply(self, world: World, clock: ChoiceClock, step: Step, before: tuple[Step, ...]) -> None:
        """Take ``step`` in the world reached by ``before``, then check the invariants."""
        if step.kind == "run":
            clock.fire(clock.choices()[step.index])
        else:
            prompts = sum(1 for s in before if s.name in PROMPT_PLANS)
            _inject(world, step.name, prompts + (step.name in PROMPT_PLANS))
            clock.drain()
        world.check_state()

    def steps(self, world: World, clock: ChoiceClock, trace: tuple[Step, ...]) -> list[Step]:
        out = [Step("run", i) for i in range(len(clock.choices()))]
        used_prompts = sum(1 for s in trace if s.name in PROMPT_PLANS)
        used_faults = sum(1 for s in trace if s.name in FAULTS)
        if used_prompts < self.prompts:
            out.extend(Step("do", name=n) for n in PROMPT_PLANS)
        process = world.agents["s1"].process
        if process is not None and process.requests:
            out.append(Step("do", name="answer"))
        if used_faults < self.faults:
            out.extend(Step("do", name=n) for n in FAULTS)
        return out

    def signature(self, world: World, clock: ChoiceClock) -> tuple[Any, ...]:
        control = world.controls["s1"]
        parts: list[Any] = [_machine(control.core.machine)]
        parts.append(
            tuple(sorted((m.id, m.state, m.reason) for m in control.core.messages.values()))
        )
        w = world.wrapper("s1")
        if w is None:
            parts.append(None)
        else:
            parts.append(
                (
                    w.proc.state,
                    tuple(sorted(_machine(m) for m in w.core.group.machines.values())),
                    min(len(w.core.outbox), 4),
                    w.agent is not None,
                    w.spawning is not None,
                    w.conn.state if w.conn is not None else None,
                    w.core.stops_pending,
                )
            )
        process = world.agents["s1"].process
        if process is None:
            parts.append(None)
        else:
            run = process.run
            parts.append(
                (
                    process.proc.state,
                    (run.prompt, run.index, run.waiting is not None) if run else None,
                    len(process.queue),
                    tuple(sorted((s.silent, s.open) for s in process.subscriptions.values())),
                )
            )
        parts.append(world.channels["s1"].state)
        parts.append(tuple(sorted(p.label for p in clock.choices())))
        return tuple(parts)


def _machine(m: Any) -> tuple[Any, ...]:
    ctx = msgspec.to_builtins(m.context)
    flags = tuple(
        sorted((k, v) for k, v in ctx.items() if isinstance(v, bool | str) or k == "active_turns")
    )
    budgets = tuple(sorted((b, m.budget_remaining(b)) for b in m.budget_uses))
    return (m.machine_id, m.state, tuple(sorted(m.timers)), budgets, flags)


class ExploreReport(msgspec.Struct):
    depth: int
    prompts: int
    faults: int
    states: int
    transitions: int
    deepest: int
    wall: float
    complete: bool
    """True when no state was left unexpanded below the depth bound (the frontier emptied)."""
    violation: Violation | None = None
    trace: str = ""

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "depth": self.depth,
            "prompts": self.prompts,
            "faults": self.faults,
            "states": self.states,
            "transitions": self.transitions,
            "wall_seconds": round(self.wall, 2),
            "exhausted": self.complete,
            "passed": self.violation is None,
        }
        if self.violation is not None:
            out["violation"] = str(self.violation)
            out["trace"] = self.trace
        return out

    def render(self) -> str:
        head = (
            f"check: {self.states} states and {self.transitions} transitions explored "
            f"(wrapper x agent_link x ingest_link x session x turn; every timer may expire), "
            f"depth <= {self.depth}, at most {self.prompts} prompt(s) and {self.faults} fault(s), "
            f"in {self.wall:.1f} s"
        )
        if self.violation is None:
            scope = (
                "every reachable state"
                if self.complete
                else f"every state within {self.depth} steps"
            )
            return head + f"\nno invariant violated in {scope}"
        return f"{head}\nVIOLATION {self.violation}\nshortest trace:\n{self.trace}"


def explore(
    depth: int = 5,
    prompts: int = 1,
    faults: int = 1,
    *,
    explorer: Explorer | None = None,
    keep_worlds: int = 4000,
    progress: Callable[[int, int, int], None] | None = None,
) -> ExploreReport:
    """Breadth-first search of the composed machines; the first violation has a shortest trace.

    A world reached for the first time is kept for its own expansion (up to ``keep_worlds`` of
    them; beyond that it is replayed when its turn comes), and the last step tried from a state
    is applied to that state's own world: each transition then costs about one replay.
    ``progress`` is told (transitions, states, depth) before each state is expanded.
    """
    old = gc.get_threshold()
    # Thousands of live worlds full of reference cycles: the default thresholds make the cyclic
    # collector rescan them all the time (half the run, measured). Collect far less often.
    gc.set_threshold(50_000, 20, 100)
    try:
        return _explore(depth, prompts, faults, explorer, keep_worlds, progress)
    finally:
        gc.set_threshold(*old)


def _explore(
    depth: int,
    prompts: int,
    faults: int,
    explorer: Explorer | None,
    keep_worlds: int,
    progress: Callable[[int, int, int], None] | None = None,
) -> ExploreReport:
    started = time.perf_counter()
    ex = explorer or Explorer(prompts=prompts, faults=faults)
    root = ex.replay(())
    seen = {ex.signature(root[0], root[1])}
    frontier: deque[tuple[tuple[Step, ...], tuple[World, ChoiceClock] | None]] = deque(
        [((), (root[0], root[1]))]
    )
    kept = 1
    transitions = 0
    deepest = 0
    truncated = False
    while frontier:
        if progress is not None:
            progress(transitions, len(seen), deepest)  # (transitions, states, depth) so far
        trace, live = frontier.popleft()
        if live is None:
            world, clock, _ = ex.replay(trace)
        else:
            kept -= 1
            world, clock = live
        options = ex.steps(world, clock, trace)
        # Only what the system itself will still do counts: a client's next prompt or a fault
        # is not a way out for a message that is already waiting.
        if not clock.choices() and any(
            m.state in UNFINISHED for m in world.controls["s1"].core.messages.values()
        ):
            violation = Violation(world.now, "deadlock", "s1", "nothing can happen any more")
            return _report(
                ex,
                depth,
                prompts,
                faults,
                seen,
                transitions,
                deepest,
                started,
                violation,
                trace,
                truncated,
            )
        if len(trace) >= depth:
            truncated = truncated or bool(options)
            continue
        for number, step in enumerate(options):
            child = (*trace, step)
            if number == len(options) - 1:
                ex.apply(world, clock, step, trace)  # the parent's own world: not needed after
                child_world, child_clock = world, clock
            else:
                child_world, child_clock, _ = ex.replay(child)
            transitions += 1
            if child_world.invariants.violations:
                return _report(
                    ex,
                    depth,
                    prompts,
                    faults,
                    seen,
                    transitions,
                    deepest,
                    started,
                    child_world.invariants.violations[0],
                    child,
                    truncated,
                )
            sig = ex.signature(child_world, child_clock)
            if sig not in seen:
                seen.add(sig)
                deepest = max(deepest, len(child))
                keep = kept < keep_worlds
                kept += keep
                frontier.append((child, (child_world, child_clock) if keep else None))
    return _report(
        ex, depth, prompts, faults, seen, transitions, deepest, started, None, (), truncated
    )


def _report(
    ex: Explorer,
    depth: int,
    prompts: int,
    faults: int,
    seen: set[Any],
    transitions: int,
    deepest: int,
    started: float,
    violation: Violation | None,
    trace: tuple[Step, ...],
    truncated: bool,
) -> ExploreReport:
    text = ""
    if violation is not None:
        text = render_trace(ex, trace)
    return ExploreReport(
        depth=depth,
        prompts=prompts,
        faults=faults,
        states=len(seen),
        transitions=transitions,
        deepest=deepest,
        wall=time.perf_counter() - started,
        complete=not truncated,
        violation=violation,
        trace=text,
    )


def render_trace(ex: Explorer, trace: tuple[Step, ...]) -> str:
    """Each step of ``trace`` and what the machines did in it."""
    labels: list[str] = []
    world, clock, _ = ex.replay((), keep_timeline=True)
    for i in range(len(trace)):
        world, clock, _ = ex.replay(trace[:i], keep_timeline=True)
        step = trace[i]
        labels.append(
            clock.choices()[step.index].label + " expires" if step.kind == "run" else step.name
        )
    world, clock, marks = ex.replay(trace, keep_timeline=True)
    out: list[str] = []
    bounds = [*marks, len(world.lines)]
    for i, label in enumerate(labels):
        out.append(f"step {i + 1}: {label}")
        chunk = [line for line in world.lines[bounds[i] : bounds[i + 1]] if line.kind != "internal"]
        if chunk:
            out.append(render_text(chunk, verbose=True))
    for v in world.invariants.violations[:1]:
        out.append(f"=> {v}")
    return "\n".join(out)
