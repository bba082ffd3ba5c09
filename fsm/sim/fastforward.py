"""Exact fast-forward of a simulated session's quiet stretches (issue 19).

Theory of operation
-------------------
Between prompts a session's world only keeps itself alive: the wrapper's ingest heartbeat (every
5 s) crosses the channel and re-arms the session's stale window; Kilo's ``server.heartbeat``
(every 10 s) reaches the wrapper and re-arms the agent link's silence window (it goes no further:
``WrapperCore.agent_event``); the lazily re-armed windows wake now and then to find their deadline
moved on. Step by step that is six scheduler callbacks per 10 s through the production hosts'
plumbing (the channel's encode and decode, the cores' dispatch, the runner), about half of a
fleet run's callbacks.

The fast-forward runs those stretches without the plumbing, and only those. When a session's
wrapper heartbeat comes due, ``FastForward.jump`` checks that the session is quiet (its machines
in states where every beat is an internal transition, the channel up and empty, Kilo running with
one open, empty stream, no tool or question holding the session's clock) and finds the next thing
the session will do that is not a beat: its next item on the clock (``SessionClock`` keeps each
session's items) or its next scripted action (``World.plan``), bounded by the end of the run. Up
to there it replays the beats in a small heap of its own, in the order the world's clock would
run them (deadline, then scheduling order: items already on the clock keep their sequence
numbers, new ones come after, in the order they would have been scheduled):

* a wrapper beat is fed to the real ``ingest_link`` machine as the timer's expiry, so its record,
  its re-armed period and its token are the production code's; the frame's arrival time takes the
  channel's own random draw (``IngestChannel.delay``), in the same order;
* an arrival is fed to the real session machine as ``heartbeat`` and its re-arm executed by the
  real runner (``MachineGroup._execute``: a pushed-back deadline is two assignments);
* Kilo's beat takes its event id from the real process (``AgentProcess._payload``) and its arrival
  is fed to the real agent-link machine as ``event``;
* a lazily re-armed window's wake-up moves its clock entry to the deadline then current, as
  ``MachineGroup._due`` does; one that would *fire* ends the stretch there.

Whatever is still pending at the end of the stretch (the next beats, frames in flight, the
windows' wake-ups) is put on the world's clock in that order, as the step-by-step run would have
left it, and the world goes on from there. Records, tokens, deadlines, random draws and event ids
are therefore the step-by-step run's; what differs is only how many callbacks the clock ran and
when, in wall time, the records were made (``tests/sim/test_fast_forward.py`` compares whole
timelines and final states of the scenario library, fuzzed worlds and fleets both ways).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from fsm.engine.clock import TimerHandle, VirtualClock, _Scheduled
from fsm.engine.effects import ArmTimer, CancelTimer, Effect, SendHeartbeat
from fsm.engine.events import Event, TimerFired
from fsm.engine.machine import StateMachine
from fsm.engine.runner import MachineGroup, TimerEntry
from fsm.sim.process import _Handle
from fsm.wire.protocol import Heartbeat, encode

if TYPE_CHECKING:
    from fsm.sim.agent import AgentProcess, Subscription
    from fsm.sim.container import SimWrapper
    from fsm.sim.world import World

MIN_STRETCH = 10.0
"""Shorter quiet stretches run step by step: a jump costs a few checks, worth it past one beat
of each kind."""

_TIMER_DUE = TimerEntry._due
_BEAT = ("ingest_link", "heartbeat")
"""The clock entry a jump starts from: the wrapper's ingest heartbeat timer coming due."""

_H, _U, _K, _D, _W = range(5)
"""Kinds of the jump's own heap: wrapper beat, its arrival, Kilo beat, its arrival, wake-up."""


class FastForwardError(AssertionError):
    """A beat did something besides re-arming timers: the quiet check let a stretch through
    that was not quiet. A bug of this module, never a behaviour of the world."""


class _Beat:
    """What the clock runs for the wrapper's heartbeat timer: a jump, else the timer itself."""

    __slots__ = ("handle", "jump")

    def __init__(self, handle: _Handle, jump: Callable[[_Handle], bool]) -> None:
        self.handle = handle
        self.jump = jump

    def __call__(self) -> None:
        if not self.jump(self.handle):
            self.handle()


class SessionClock:
    """One session's view of the world's clock: the same clock, keeping the session's items.

    Every component of a session schedules through it, so ``pending`` tells when the session
    next has anything to do; the wrapper heartbeat timer's entries are wrapped in a ``_Beat``."""

    runs_in_deadline_order = True
    __slots__ = ("_keep", "clock", "items", "jump")

    def __init__(self, clock: VirtualClock, jump: Callable[[_Handle], bool]) -> None:
        self.clock = clock
        self.jump = jump
        self.items: list[_Scheduled] = []
        self._keep = 64

    def now(self) -> float:
        return self.clock.now()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        if type(callback) is _Handle:
            inner = callback.sim_inner
            if (
                getattr(inner, "__func__", None) is _TIMER_DUE
                and getattr(inner, "__self__").key == _BEAT  # noqa: B009 - a bound method's
            ):
                callback = _Beat(callback, self.jump)
        item = self.clock.call_at(deadline, callback)
        assert isinstance(item, _Scheduled)
        items = self.items
        items.append(item)
        if len(items) > self._keep:
            self.items = items = [i for i in items if i.queue is not None and not i.cancelled]
            self._keep = 2 * len(items) + 64
        return item

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self.clock.now() + delay, callback)

    def pending(self) -> Iterator[_Scheduled]:
        """The session's items still on the clock."""
        items = [i for i in self.items if i.queue is not None and not i.cancelled]
        self.items = items
        return iter(items)


def _internal(machine: StateMachine[Any], trigger: str) -> bool:
    """Whether ``trigger`` can only be an internal transition in ``machine``'s state."""
    by_state = machine._compiled.internal.get(trigger)
    return by_state is not None and machine.state in by_state


def _rearmed(machine: StateMachine[Any], trigger: str) -> list[str]:
    timers = machine._compiled.timers
    return [name for name in machine.timers if trigger in timers[name][1].rearmed_by]


def _item(entry: TimerEntry) -> _Scheduled | None:
    handle = entry.handle
    if isinstance(handle, _Handle):
        handle = handle.inner
    return handle if isinstance(handle, _Scheduled) and handle.queue is not None else None


def _pushed_back(group: MachineGroup, effects: list[Effect]) -> bool:
    """Effects that only push armed timers' deadlines back (``MachineGroup._arm``'s lazy case)."""
    for effect in effects:
        kind = type(effect)
        if kind is CancelTimer:
            continue
        if kind is not ArmTimer:
            return False
        assert isinstance(effect, ArmTimer)
        armed = group._armed.get((effect.machine_id, effect.timer))
        if armed is None or armed.scheduled_for > effect.deadline:
            return False
    return True


class FastForward:
    """The jumps of one world (``World(fast_forward=True)``), and what they skipped."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.clocks: dict[str, SessionClock] = {}
        self.jumps = 0
        self.beats = 0
        """Beats replayed by jumps (each kind counted once per beat)."""

    def clock_for(self, sid: str) -> SessionClock:
        clock = self.world.scheduler
        assert isinstance(clock, VirtualClock), "the fast-forward needs the virtual clock"
        made = SessionClock(clock, lambda handle: self.jump(sid, handle))
        self.clocks[sid] = made
        return made

    # -- the quiet check ---------------------------------------------------------------------

    def jump(self, sid: str, handle: _Handle) -> bool:
        """Replay ``sid``'s quiet stretch from this wrapper beat on; False to run it as is."""
        world = self.world
        now = world.scheduler.now()
        bound = world.horizon(sid)
        if bound - now <= MIN_STRETCH:
            return False
        from fsm.sim.container import SimWrapper

        wrapper = world.runtime.wrappers.get(sid)
        if not isinstance(wrapper, SimWrapper) or handle.owner is not wrapper.proc:
            return False
        beat = self._quiet(sid, wrapper, handle)
        if beat is None:
            return False
        entry, process, sub, agent_beat, windows = beat
        clock = self.clocks[sid]
        chained = {id(agent_beat.inner)} | {id(item) for _, item in windows}
        until = min((i.deadline for i in clock.pending() if id(i) not in chained), default=math.inf)
        until = min(until, bound)
        if until - now <= MIN_STRETCH:
            return False
        return self._replay(
            sid, wrapper, handle, entry, process, sub, agent_beat, windows, now, until
        )

    def _quiet(
        self, sid: str, wrapper: SimWrapper, handle: _Handle
    ) -> (
        tuple[TimerEntry, AgentProcess, Subscription, _Handle, list[tuple[TimerEntry, _Scheduled]]]
        | None
    ):
        """What a jump from this beat needs, if the session is quiet: the beat's timer, Kilo,
        its stream, Kilo's next beat and the windows the beats re-arm (with their entries)."""
        inner = handle.sim_inner
        entry = getattr(inner, "__self__", None)
        core = wrapper.core
        now = self.world.scheduler.now()
        if (
            not isinstance(entry, TimerEntry)
            or core.group._armed.get(entry.key) is not entry
            or entry.deadline > now
            or wrapper.proc.state != "running"
        ):
            return None
        ingest, link = core.ingest, core.link
        fires = ingest._compiled.timers[entry.key[1]][1].fires
        if (
            link is None
            or not _internal(ingest, fires)
            or not _internal(link, "event")
            or core._batch
            or core._held
            or core.active_turns()
        ):
            return None
        conn = wrapper.conn
        if (
            conn is None
            or conn.state != "open"
            or not conn.control_reading
            or conn._up
            or conn._down
            or conn.control_on_frame is None
            or conn.channel.state != "up"
        ):
            return None
        control = self.world.controls[sid].core
        if (
            control.tools_running
            or "waiting_user" in control.turn_states.values()
            or not _internal(control.machine, "heartbeat")
        ):
            return None
        process = wrapper.agent
        if process is None or process.proc.state != "running" or len(process.subscriptions) != 1:
            return None
        sub = wrapper.subscriptions.get(core.generation)
        if (
            sub is None
            or process.subscriptions.get(sub.generation) is not sub
            or not sub.open
            or sub.silent
            or sub.cancelled
            or sub._queue
            or sub.reader is not wrapper.proc
        ):
            return None
        beats = [h for h in process.proc._live.values() if h.sim_inner == process._heartbeat]
        if len(beats) != 1 or beats[0].inner is None:
            return None
        windows: list[tuple[TimerEntry, _Scheduled]] = []
        for machine, group, trigger in (
            (link, core.group, "event"),
            (control.machine, control.group, "heartbeat"),
        ):
            for name in _rearmed(machine, trigger):
                armed = group._armed.get((machine.machine_id, name))
                item = _item(armed) if armed is not None else None
                if armed is None or item is None:
                    return None
                windows.append((armed, item))
        return entry, process, sub, beats[0], windows

    # -- the replay --------------------------------------------------------------------------

    def _replay(
        self,
        sid: str,
        wrapper: SimWrapper,
        handle: _Handle,
        entry: TimerEntry,
        process: AgentProcess,
        sub: Subscription,
        agent_beat: _Handle,
        windows: list[tuple[TimerEntry, _Scheduled]],
        now: float,
        until: float,
    ) -> bool:
        core = wrapper.core
        control = self.world.controls[sid].core
        conn = wrapper.conn
        assert conn is not None and core.link is not None
        channel = conn.channel
        ingest, link, session = core.ingest, core.link, control.machine
        wgroup, sgroup = core.group, control.group
        frame = Heartbeat(state=core.wrapper.state, active=False, degraded=core.degraded)
        beat_data = {"state": frame.state}
        link_data = {"generation": core.generation}
        rng, loss = channel.rng, channel.config.loss
        agent_period = process.config.agent_heartbeat
        stream_delay = process.config.http_latency / 2
        up_due = conn._up_due
        numbers = itertools.count()
        heap: list[tuple[float, tuple[int, int], int, Any]] = []

        def push(at: float, kind: int, what: Any) -> None:
            heapq.heappush(heap, (at, (1, next(numbers)), kind, what))

        # What the clock holds now: this beat (running), Kilo's next beat, the windows' wake-ups.
        heap.append((now, (0, -1), _H, (entry.token, True)))
        agent_first = agent_beat.inner
        assert isinstance(agent_first, _Scheduled)
        heap.append((agent_first.deadline, (0, agent_first.seq), _K, None))
        woken: dict[int, TimerEntry] = {}
        for armed, item in windows:
            heap.append((item.deadline, (0, item.seq), _W, armed))
        heapq.heapify(heap)

        beats = 0
        while heap:
            at, order, kind, what = heap[0]
            if at >= until or (kind == _W and what.deadline <= at):
                break  # past the stretch, or a window that would expire: the world takes over
            if kind == _H and loss > 0:
                drawn = rng.getstate()
                lost = rng.random() < loss  # the draw ``IngestChannel.lose`` will make
                rng.setstate(drawn)
                if lost:
                    break  # this beat's frame breaks the connection: not a quiet beat
            heapq.heappop(heap)
            beats += 1
            if kind == _H:
                token, running = what
                if running:
                    # This beat's clock entry has run (``_Handle.__call__``, then
                    # ``MachineGroup._due``): from here on the stretch is the jump's.
                    handle.inner = None
                    handle.sim_inner = None
                    handle.owner._live.pop(id(handle), None)
                    del wgroup._armed[entry.key]
                    entry.handle = None
                effects = ingest.handle(TimerFired(entry.key[1], token), at)
                for effect in effects:
                    if type(effect) is ArmTimer and (effect.machine_id, effect.timer) == _BEAT:
                        push(effect.deadline, _H, (effect.token, False))
                    elif type(effect) is SendHeartbeat:
                        if loss > 0:
                            rng.random()  # ``IngestChannel.lose``: kept (see above)
                        up_due = max(up_due, at + channel.delay())
                        push(up_due, _U, None)
                    else:
                        raise FastForwardError(f"{sid}: a wrapper beat did {effect!r}")
            elif kind == _U:
                # As ``SessionCore.frame`` for a heartbeat while nothing holds the clock.
                effects = session.handle(Event("heartbeat", beat_data), at)
                if not _pushed_back(sgroup, effects):
                    raise FastForwardError(f"{sid}: a heartbeat's arrival did {effects!r}")
                sgroup._execute(session.machine_id, effects)
            elif kind == _K:
                if order[0] == 0:
                    agent_beat.cancel()  # it has run
                payload = process._payload("server.heartbeat", {})
                push(at + stream_delay, _D, payload)
                push(at + agent_period, _K, None)
            elif kind == _D:
                effects = link.handle(Event("event", link_data), at)
                if not _pushed_back(wgroup, effects):
                    raise FastForwardError(f"{sid}: Kilo's heartbeat did {effects!r}")
                wgroup._execute(link.machine_id, effects)
            else:
                armed = what
                if order[0] == 0:
                    woken[id(armed)] = armed
                armed.scheduled_for = armed.deadline
                push(armed.deadline, _W, armed)
        if not beats:
            return False  # the first beat already is not quiet: it runs as it is
        self.jumps += 1
        self.beats += beats
        # What is left goes on the clock in the order it would have been scheduled.
        for armed in woken.values():
            armed.cancel()
        conn._up_due = up_due
        for at, order, kind, what in sorted(heap, key=lambda e: e[1]):
            if order[0] == 0:
                continue  # still on the clock as it was
            if kind == _H:
                wgroup._armed[_BEAT] = TimerEntry(wgroup, _BEAT, at, what[0])
            elif kind == _U:
                conn._up.append(encode(frame))
                channel.scheduler.call_at(at, conn._deliver_up)
            elif kind == _K:
                process.proc.call_at(at, process._heartbeat)
            elif kind == _D:
                sub._queue.append(what)
                sub.reader.call_at(at, sub._deliver_head)
            else:
                what.scheduled_for = at
                what.handle = what.group.clock.call_at(at, what._due)
        return True
