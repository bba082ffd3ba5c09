"""The simulated world: one control plane, its sessions, their containers, on one clock.

Theory of operation
-------------------
``World`` wires the production cores to the fakes exactly as the hosts wire them to adapters:
per session a ``SimControl`` (``SessionCore``), a ``FakeAgent`` installation and an
``IngestChannel``; one ``FakeRuntime`` that launches ``SimWrapper`` processes (``WrapperCore``).
Everything is scheduled on one ``Scheduler`` — the ``VirtualClock`` for simulation, or the
explorer's clock — and every random choice comes from a ``random.Random`` seeded from the run's
seed and the component's name, so adding a component never shifts another's random numbers.

``do(action)`` injects what a scenario step says (a prompt, a SIGSTOP of Kilo, a partition …);
``run_until(t)`` advances virtual time one instant at a time and checks the invariants after each
instant; ``settle()`` lifts every fault and lets the timers finish their work, for the checks
that only make sense at rest (every message ended, both sides agree).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, cast

from fsm.control.core import LogEntry, Message
from fsm.engine.clock import VirtualClock
from fsm.engine.machine import Record, StateMachine
from fsm.settings.config import timer_values
from fsm.sim.agent import FakeAgent
from fsm.sim.channel import IngestChannel
from fsm.sim.container import SimWrapper
from fsm.sim.control import SimControl
from fsm.sim.fastforward import FastForward
from fsm.sim.invariants import Invariants
from fsm.sim.process import Scheduler
from fsm.sim.runtime import FakeRuntime
from fsm.sim.scenario import Action, WorldConfig
from fsm.sim.store import MemoryStore
from fsm.sim.timeline import SHOWN, Line
from fsm.wire.protocol import PermissionReply, SeqFrame, WrapperFrame

TAKEN = ("start", "transition", "internal")

Records = Literal["all", "transitions", "none"]
_KEPT: dict[str, frozenset[str]] = {
    "all": frozenset({"start", "transition", "internal", "ignored", "timer_dropped", "fault"}),
    "transitions": SHOWN,
    "none": frozenset(),
}
"""Record kinds each ``records`` setting keeps as timeline lines (world lines follow
``keep_timeline``)."""


class WorldAction:
    """Something the world did, for ``count`` expectations (``agent.spawn``, ``do:agent.hang``)."""

    __slots__ = ("at", "detail", "name", "session")

    def __init__(self, at: float, session: str, name: str, detail: str) -> None:
        self.at = at
        self.session = session
        self.name = name
        self.detail = detail


class World:
    def __init__(
        self,
        config: WorldConfig,
        timers: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        scheduler: Scheduler | None = None,
        keep_timeline: bool = True,
        invariants: Invariants | None = None,
        check_states: bool = True,
        only: Sequence[str] | None = None,
        records: Records | None = None,
        fast_forward: bool = False,
    ) -> None:
        self.config = config
        self.check_states = check_states
        """Check machine states after every instant (off for benchmarks: it walks every session
        at every instant, quadratic in sessions; the record, log and frame checks stay on)."""
        self.seed = seed
        self.scheduler: Scheduler = scheduler if scheduler is not None else VirtualClock()
        self.fast_forward = FastForward(self) if fast_forward else None
        """Jumps over quiet stretches (``fsm.sim.fastforward``); needs ``plan`` to know when each
        session next acts, and every action to come from the plan."""
        self.clocks: dict[str, Scheduler] = {}
        """Each session's scheduler: the world's, or its ``SessionClock`` when fast-forwarding."""
        self._upcoming: dict[str, deque[float]] | None = None
        self._plan_end: float | None = None
        self._run_end = math.inf
        self.values = timer_values(overrides=timers)
        self.records: Records = (
            records if records is not None else ("all" if keep_timeline else "none")
        )
        """Which lines the timeline keeps: ``all``; ``transitions`` (what the default text
        shows: no heartbeat re-arms, progress or ignored events, the bulk of a long run); or
        ``none`` (benchmarks: the invariants still see every record)."""
        self.keep_timeline = self.records != "none"
        self._kept_kinds = _KEPT[self.records]
        self.lines: list[Line] = []
        self.actions: list[WorldAction] = []
        self.invariants = invariants if invariants is not None else Invariants()
        self.store = MemoryStore()
        self.runtime = FakeRuntime(self._launch, self._wrapper_exited, self.note)
        self.sessions = [f"s{i + 1}" for i in range(config.sessions)]
        if only is not None:
            unknown = sorted(set(only) - set(self.sessions))
            if unknown:
                raise ValueError(f"sessions {unknown} are not in a world of {config.sessions}")
            # A shard of a larger world: the same names, prefixes and random streams as in the
            # whole world (each component's stream is named after its session, and sessions
            # share nothing), so each session's part of the run is the same.
            wanted = set(only)
            self.sessions = [sid for sid in self.sessions if sid in wanted]
        self.agents: dict[str, FakeAgent] = {}
        self.channels: dict[str, IngestChannel] = {}
        self.controls: dict[str, SimControl] = {}
        self.last_frames: dict[str, WrapperFrame] = {}
        self.launched: list[SimWrapper] = []
        self._wrapper_numbers: dict[str, Iterator[int]] = {}
        for sid in self.sessions:
            self._add_session(sid)

    def _add_session(self, sid: str) -> None:
        ff = self.fast_forward
        clock = self.clocks[sid] = ff.clock_for(sid) if ff is not None else self.scheduler
        fake_agent = FakeAgent(clock, self.config, lambda a, d: self.note(sid, a, d))
        fake_agent.prefix = f"{sid}_" if self.config.sessions > 1 else ""
        if self.config.agent_session.startswith("ses"):
            fake_agent.sessions.add(self.config.agent_session)
        self.agents[sid] = fake_agent
        control = SimControl(
            scheduler=clock,
            values=self.values["control"],
            session_id=sid,
            runtime=self.runtime,
            store=self.store,
            first_version=self.config.wrapper_version,
            seed=f"{self.seed}",
            on_record=lambda record: self._record(sid, "session", record),
            on_log=self._on_log,
            on_frame=self._on_frame,
        )
        self.controls[sid] = control
        self.channels[sid] = IngestChannel(
            clock,
            random.Random(f"{self.seed}/{sid}/channel"),
            self.config,
            control.accept,
            lambda a, d: self.note(sid, a, d),
        )
        self._wrapper_numbers[sid] = itertools.count(1)

    def start(self) -> None:
        for control in self.controls.values():
            control.core.start()

    @property
    def now(self) -> float:
        return self.scheduler.now()

    # -- wiring ---------------------------------------------------------------------------------

    def _launch(self, sid: str, version: str | None) -> SimWrapper:
        number = next(self._wrapper_numbers[sid])
        wrapper = SimWrapper(
            scheduler=self.clocks[sid],
            config=self.config,
            values=self.values["wrapper"],
            session_id=sid,
            number=number,
            version=version,
            agent_session=self.config.agent_session or f"agent_{sid}",
            fake_agent=self.agents[sid],
            channel=self.channels[sid],
            seed=f"{self.seed}",
            note=lambda a, d: self.note(sid, a, d),
            on_record=lambda w, record: self._record(sid, w.tag, record),
        )
        self.launched.append(wrapper)
        return wrapper

    def _wrapper_exited(self, sid: str, code: int | None) -> None:
        self.controls[sid].wrapper_exited(code)

    def note(self, sid: str, name: str, detail: str, *, kind: str = "world") -> None:
        self.actions.append(WorldAction(self.now, sid, name, detail))
        self.invariants.on_note(sid, name, detail)
        if self.keep_timeline:
            self.lines.append(Line(self.now, sid, kind, kind, trigger=name, detail=detail))

    def _record(self, sid: str, host: str, record: Record) -> None:
        label = record.machine_id if host == "session" else f"{host}.{record.machine_id}"
        if host == "session":
            label = "session"
        self.invariants.on_record(sid, label, record)
        if record.kind in self._kept_kinds:
            self.lines.append(
                Line(
                    record.at,
                    sid,
                    label,
                    record.kind,
                    source=record.source,
                    dest=record.dest,
                    trigger=record.trigger,
                    effects=record.effects,
                    detail=record.reason,
                )
            )

    def _on_log(self, sid: str, entry: LogEntry) -> None:
        self.invariants.on_log(sid, entry)

    def _on_frame(self, sid: str, frame: WrapperFrame, _before: int, _w: str | None) -> None:
        self.last_frames[sid] = frame
        if isinstance(frame, SeqFrame):
            self.invariants.on_frame(sid, self.now, frame, self.controls[sid].core.wrapper_id)

    # -- queries --------------------------------------------------------------------------------

    def wrapper(self, sid: str = "s1") -> SimWrapper | None:
        w = self.runtime.wrappers.get(sid)
        return w if isinstance(w, SimWrapper) else None

    def state_of(self, sid: str, machine: str) -> str:
        """State of ``session``, ``wrapper``, ``agent_link``, ``ingest_link``, ``turn:<id>`` (in
        the current wrapper) or ``message:<id>`` (on the control plane); ``absent`` if none."""
        control = self.controls[sid]
        if machine == "session":
            return control.core.state
        if machine.startswith("message:"):
            message = control.core.messages.get(machine.split(":", 1)[1])
            return message.state if message is not None else "absent"
        w = self.wrapper(sid)
        if w is None:
            return "absent"
        found = w.core.group.machines.get(machine)
        if machine == "agent_link":
            found = w.core.link
        return found.state if found is not None else "absent"

    def message(self, sid: str, message_id: str) -> Message | None:
        return self.controls[sid].core.messages.get(message_id)

    # -- driving --------------------------------------------------------------------------------

    def plan(self, actions: Iterable[Action], end: float) -> None:
        """What the driver will do, and until when it runs the world (the scripted part; a
        later ``run_until`` past ``end``, as ``settle`` does, bounds itself)."""
        upcoming: dict[str, list[float]] = {sid: [] for sid in self.sessions}
        for action in actions:
            if action.session in upcoming:
                upcoming[action.session].append(action.at)
        self._upcoming = {sid: deque(sorted(times)) for sid, times in upcoming.items()}
        self._plan_end = end

    def horizon(self, sid: str) -> float:
        """Until when ``sid`` certainly does nothing it was not already doing: its next planned
        action, or the end of the run; -inf without a plan (nothing may be skipped)."""
        if self._upcoming is None:
            return -math.inf
        queue = self._upcoming[sid]
        return min(queue[0], self._run_end) if queue else self._run_end

    def do(self, action: Action) -> None:
        if self.fast_forward is not None:
            queue = self._upcoming.get(action.session) if self._upcoming is not None else None
            if not queue or queue[0] != action.at or action.at != self.now:
                raise RuntimeError(
                    f"a fast-forwarding world does only what was planned, when planned: {action}"
                )
            queue.popleft()
        self.note(action.session, action.do, _detail(action), kind="do")
        handler = _HANDLERS[action.do]
        handler(self, action)

    def run_until(self, until: float) -> None:
        clock = self.scheduler
        assert isinstance(clock, VirtualClock), "run_until needs the virtual clock"
        plan_end = self._plan_end
        self._run_end = plan_end if plan_end is not None and until <= plan_end else until
        if not self.check_states:
            clock.advance(until)  # the same callbacks in the same order, without the stops
            return
        while (deadline := clock.next_deadline()) is not None and deadline <= until:
            clock.advance(deadline)
            self.check_state()
        clock.advance(until)

    def check_state(self) -> None:
        for sid, control in self.controls.items():
            at = self.now
            self.invariants.check_machines(at, sid, [("session", control.core.machine)])
            w = self.wrapper(sid)
            if w is not None and w.proc.state == "running":
                self.invariants.check_machines(
                    at, sid, [(f"{w.tag}.{mid}", m) for mid, m in w.core.group.machines.items()]
                )

    def heal(self) -> None:
        """Lift every fault that could keep the world from coming to rest."""
        for sid in self.sessions:
            process = self.agents[sid].process
            if process is not None:
                process.proc.resume()
            w = self.wrapper(sid)
            if w is not None:
                w.resume()
            self.channels[sid].heal()

    def quiet(self) -> bool:
        for sid, control in self.controls.items():
            if any(
                m.state not in ("completed", "failed", "cancelled")
                for m in control.core.messages.values()
            ):
                return False
            w = self.wrapper(sid)
            if w is not None and w.proc.alive and w.core.active_turns():
                return False
        return True

    def settle(self, limit: float = 3 * 3600.0, step: float = 60.0) -> None:
        """Heal, run until at rest (or ``limit``), then check what must hold at rest."""
        self.heal()
        end = self.now + limit
        while self.now < end:
            self.run_until(min(end, self.now + step))
            if self.quiet():
                break
        for sid, control in self.controls.items():
            w = self.wrapper(sid)
            live: dict[str, str] = {}
            if w is not None and w.proc.alive:
                live = {m.context.message_id: m.state for m in w.core.active_turns()}
            self.invariants.check_settled(
                self.now, sid, {m.id: m.state for m in control.core.messages.values()}, live
            )

    def all_machines(self, sid: str) -> list[tuple[str, StateMachine[Any]]]:
        out: list[tuple[str, StateMachine[Any]]] = [("session", self.controls[sid].core.machine)]
        w = self.wrapper(sid)
        if w is not None:
            out.extend((f"{w.tag}.{mid}", m) for mid, m in w.core.group.machines.items())
        return out


def _detail(action: Action) -> str:
    text = action.describe()
    return text[len(action.do) :].strip()


# -- what each scripted action does --------------------------------------------------------------


def _prompt(world: World, a: Action) -> None:
    control = world.controls[a.session]
    mid = a.message or f"m{len(control.core.messages) + 1}"
    text = a.text or f"prompt {mid}"
    if a.plan is not None:
        world.agents[a.session].plans[text] = a.plan
    try:
        control.core.send_message(text, message_id=mid)
    except RuntimeError as exc:
        world.note(a.session, "client.refused", str(exc))


def _answer(world: World, a: Action) -> None:
    process = world.agents[a.session].process
    core = world.controls[a.session].core
    if process is None or not process.requests:
        world.note(a.session, "client.nothing_to_answer", "")
        return
    request, kind = next(iter(process.requests.items()))
    if kind == "permission":
        # Scenarios and the fuzzer may send replies no client could (the wire would refuse them).
        core.reply_permission(request, cast(PermissionReply, a.reply or "once"))
    elif a.reply == "reject":
        core.reply_question(request, None)
    else:
        core.reply_question(request, [list(a.answers or ("yes",))])


def _agent(world: World, a: Action, fn: Callable[[Any], None]) -> None:
    process = world.agents[a.session].process
    if process is None or not process.proc.alive:
        world.note(a.session, "world.no_agent", f"{a.do} has no Kilo to act on")
        return
    fn(process)


def _agent_hang(world: World, a: Action) -> None:
    def hang(process: Any) -> None:
        process.proc.pause()
        if a.duration is not None:
            world.clocks[a.session].call_later(a.duration, process.proc.resume)

    _agent(world, a, hang)


def _wrapper(world: World, a: Action, fn: Callable[[SimWrapper], None]) -> None:
    w = world.wrapper(a.session)
    if w is None:
        world.note(a.session, "world.no_wrapper", f"{a.do} has no wrapper to act on")
        return
    fn(w)


def _wrapper_hang(world: World, a: Action) -> None:
    def hang(w: SimWrapper) -> None:
        w.pause()
        if a.duration is not None:
            world.clocks[a.session].call_later(a.duration, w.resume)

    _wrapper(world, a, hang)


def _duplicate(world: World, a: Action) -> None:
    frame = world.last_frames.get(a.session)
    if frame is None:
        world.note(a.session, "world.nothing_to_duplicate", "")
        return
    world.controls[a.session].receive(frame)


def _refuse(world: World, a: Action) -> None:
    world.agents[a.session].refuse_starts += a.count


_HANDLERS: dict[str, Callable[[World, Action], None]] = {
    "prompt": _prompt,
    "stop": lambda w, a: w.controls[a.session].core.stop(),
    "abort": lambda w, a: w.controls[a.session].core.abort(a.message),
    "answer": _answer,
    "agent.crash": lambda w, a: _agent(w, a, lambda p: p.kill(-9)),
    "agent.hang": _agent_hang,
    "agent.resume": lambda w, a: _agent(w, a, lambda p: p.proc.resume()),
    "agent.silence": lambda w, a: _agent(w, a, lambda p: p.silence()),
    "agent.drop_stream": lambda w, a: _agent(w, a, lambda p: p.drop_streams()),
    "agent.fail_turn": lambda w, a: _agent(
        w, a, lambda p: p.proc.deliver(lambda: p.fail_turn(a.error or "APIError: fake error"))
    ),
    "agent.refuse_port": _refuse,
    "wrapper.crash": lambda w, a: w.runtime.crash(a.session),
    "wrapper.hang": _wrapper_hang,
    "wrapper.resume": lambda w, a: _wrapper(w, a, lambda x: x.resume()),
    "ingest.drop": lambda w, a: w.channels[a.session].drop(a.duration or 0.0),
    "ingest.partition": lambda w, a: w.channels[a.session].partition(a.duration or 0.0),
    "ingest.heal": lambda w, a: w.channels[a.session].heal(),
    "ingest.duplicate": _duplicate,
}
