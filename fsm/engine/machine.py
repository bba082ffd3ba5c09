"""The sans-I/O engine: a declared machine that takes events and returns effects.

Theory of operation
-------------------
``StateMachine.handle(event, now)`` is the whole interface. The caller supplies the time (the
engine never reads a clock) and gets back a list of typed effects, among them ``ArmTimer`` and
``CancelTimer`` for the caller's clock. Nothing here opens a socket, starts a process or sleeps, so
the same object runs under ``fsm-agent serve``, in the simulator and in the exhaustive explorer.

State bookkeeping is delegated to a synchronous ``transitions.Machine``: the declaration is
compiled into one once per declaration (``_Compiled``), guards and budgets become its conditions,
and every instance is a model of that shared machine (``transitions`` keeps a model's state on
the model, so one compiled machine serves them all). The tables the engine needs per event
(terminal states, which triggers leave which states, each timer's span, what entering a state
arms) are computed there too, once, not per instance or per event. Around it the engine adds
what ``transitions`` does not have:

* timers of three kinds, each armed with a fresh generation token; an expiry whose token is not
  the armed one was cancelled or re-armed since and is dropped, never fired;
* the initial state's entry effects and timers (``start()``), which ``transitions``' own
  ``Timeout`` extension misses;
* budgets (N uses in a window) and backoffs, with their counters in the snapshot;
* a record of every transition, ignored event and dropped timer, for timelines and logs;
* faults: a guard or effect that raises becomes the declared fault event, so a bug in a callback
  moves the machine to ``failed`` visibly instead of killing a task silently.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, Literal

import msgspec
from transitions import Machine

from fsm.engine.effects import ArmTimer, CancelTimer, Effect
from fsm.engine.events import Event, TimerFired
from fsm.engine.model import MachineDef, State, Timer, TimerKind, Transition
from fsm.engine.spec import Ctx, MachineSpec
from fsm.engine.timer_table import TimerValues
from fsm.engine.validate import timer_span

RecordKind = Literal["start", "transition", "internal", "ignored", "timer_dropped", "fault"]


class Record(msgspec.Struct, frozen=True, gc=False):
    """One line of a machine's history: a transition taken, or an event not taken and why.

    ``gc=False``: a record holds only strings and numbers, so it can be in no reference cycle
    and the cyclic collector need not track it; a simulated world holds hundreds of thousands
    of them, and tracking them made every full collection walk them all.
    """

    at: float
    machine: str
    machine_id: str
    kind: RecordKind
    trigger: str
    source: str
    dest: str
    effects: tuple[str, ...] = ()
    reason: str = ""
    timer: str = ""
    """The timer whose expiry caused this record, if any."""


class ArmedTimer(msgspec.Struct, gc=False):  # strings and numbers only, like Record
    name: str
    deadline: float
    token: int


class Snapshot(msgspec.Struct, frozen=True):
    """Everything needed to rebuild a machine elsewhere or later (e.g. from SQLite)."""

    machine: str
    machine_id: str
    state: str
    taken_at: float
    timers: list[ArmedTimer]
    budgets: dict[str, list[float]]
    backoffs: dict[str, int]
    context: dict[str, Any]
    next_token: int


class _Entry:
    """What entering one state does, worked out once per declaration."""

    __slots__ = ("on_enter", "resets", "silences", "state", "timers")

    def __init__(self, d: MachineDef, state: State) -> None:
        self.state = state
        self.on_enter = state.on_enter
        self.resets = tuple(b.name for b in d.backoffs if state.name in b.resets_in)
        """Backoffs whose attempt count entering this state resets."""
        self.timers = state.timers
        self.silences = tuple(
            (timer, timer_span(declaring.name, timer))
            for declaring, timer in d.timers()
            if timer.kind is TimerKind.SILENCE
            and declaring.name != state.name
            and state.name in timer.span
        )
        """Silence timers declared elsewhere whose span holds this state (and their spans)."""


_Candidate = tuple[Transition, Callable[[Any, Event], bool] | None, str | None]
"""A transition with its guard function and the budget it consumes, in declaration order."""


class _Compiled:
    """One declaration compiled for the engine: shared by every instance of it.

    A ``transitions.Machine`` per instance cost ~60 KiB and the compile time of every transition
    each time a turn or link machine was created; the machine carries no per-instance state (the
    model does), so one per declaration serves them all. Its conditions and ``before`` callbacks
    reach the instance through ``EventData.model``, which is the ``StateMachine`` itself.
    """

    def __init__(self, spec: MachineSpec[Any]) -> None:
        d = spec.definition
        self.spec_ref = weakref.ref(spec)
        self.states = {state.name: state for state in d.states}
        self.terminal = frozenset(state.name for state in d.states if state.terminal)
        self.timers: dict[str, tuple[str, Timer, frozenset[str]]] = {
            t.name: (s.name, t, timer_span(s.name, t)) for s, t in d.timers()
        }
        """Timer name: (declaring state, timer, the states it lives in)."""
        self.rearm_triggers = frozenset(
            trigger for _, timer, _ in self.timers.values() for trigger in timer.rearmed_by
        )
        self.entries = {state.name: _Entry(d, state) for state in d.states}
        machine = Machine(
            model=None,
            states=list(d.state_names),
            initial=d.initial,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=True,
            model_attribute="_state",
        )
        candidates: dict[tuple[str, str], list[_Candidate]] = {}
        for t in d.transitions:
            guard = spec.guards[t.guard] if t.guard is not None else None
            for source in d.sources(t):
                candidates.setdefault((t.trigger, source), []).append((t, guard, t.consumes))
        self.sure: dict[tuple[str, str], Transition] = {
            pair: found[0][0]
            for pair, found in candidates.items()
            if len(found) == 1 and found[0][1] is None and found[0][2] is None
        }
        """(trigger, state) with one unconditional transition: if ``transitions`` took one, it
        was this, so it needs no ``before`` callback to say so (most state changes)."""
        for t in d.transitions:
            conditions: list[str | Callable[..., bool | None]] = []
            if t.guard is not None:
                conditions.append(_guard_condition(spec.guards[t.guard]))
            if t.consumes is not None:
                conditions.append(_budget_condition(t.consumes))
            mark = _mark_fired(t)
            for source in d.sources(t):
                machine.add_transition(
                    t.trigger,
                    source,
                    t.dest,
                    conditions=conditions,
                    before=[] if (t.trigger, source) in self.sure else mark,
                )
        self.machine = machine
        self.events: dict[str, Any] = dict(machine.events)
        self.handled: dict[str, frozenset[str]] = {
            trigger: frozenset(source for source, ts in event.transitions.items() if ts)
            for trigger, event in machine.events.items()
        }
        """Trigger: the states some transition for it leaves (guards aside)."""
        self.internal: dict[str, dict[str, tuple[_Candidate, ...]]] = {}
        """Trigger: state: its candidates, where every one is internal (changes no state)."""
        for (trigger, source), found in candidates.items():
            if all(t.dest is None for t, _, _ in found):
                self.internal.setdefault(trigger, {})[source] = tuple(found)


# ``transitions`` calls these with an ``EventData`` whose ``model`` is the ``StateMachine``
# (typed ``Any`` here: its stubs say ``object``).


def _guard_condition(guard: Callable[[Any, Event], bool]) -> Callable[[Any], bool]:
    def check(ed: Any) -> bool:
        machine = ed.model
        return bool(guard(machine.context, machine._event))

    return check


def _budget_condition(name: str) -> Callable[[Any], bool]:
    return lambda ed: bool(ed.model.budget_remaining(name) > 0)


def _mark_fired(transition: Transition) -> Callable[[Any], None]:
    def mark(ed: Any) -> None:
        ed.model._fired = transition

    return mark


_COMPILED: dict[int, _Compiled] = {}


def _compiled(spec: MachineSpec[Any]) -> _Compiled:
    """The shared compilation of ``spec``, made on first use and dropped with the spec."""
    key = id(spec)
    found = _COMPILED.get(key)
    if found is not None and found.spec_ref() is spec:
        return found
    found = _Compiled(spec)
    _COMPILED[key] = found
    weakref.finalize(spec, _COMPILED.pop, key, None)
    return found


HISTORY_LIMIT = 256
"""Records an instance keeps by default (``history_limit=None`` keeps all). The history is for
people and tests; timelines and logs take every record through ``on_record``. Unbounded, a
session machine kept one record per heartbeat for as long as the session lived."""


@contextmanager
def without_internal_records() -> Iterator[None]:
    """Internal transitions leave no record while inside (every machine of the process): for
    benchmark worlds, whose timelines keep none of them anyway. Effects and timers are the same;
    only the records (and what reads them: the history, the hosts' ``on_record``) are not made."""
    before = StateMachine.internal_records
    StateMachine.internal_records = False
    try:
        yield
    finally:
        StateMachine.internal_records = before


_NO_EVENT = Event("")
_EMPTY: frozenset[str] = frozenset()


class StateMachine(Generic[Ctx]):
    """One running instance of a declared machine."""

    internal_records: ClassVar[bool] = True
    """Whether an internal transition (a heartbeat's re-arm, a streamed delta's progress: nine
    events in ten) leaves a record. Always on in the hosts; only a benchmark world turns it off
    (``without_internal_records``), since no core reads those records and making them was a fifth
    of a simulated fleet's time (measured: 100 sessions x 20 min, 1.85 s -> 1.52 s)."""

    def __init__(
        self,
        spec: MachineSpec[Ctx],
        values: TimerValues | None = None,
        *,
        machine_id: str | None = None,
        context: Ctx | None = None,
        rng: random.Random | None = None,
        history_limit: int | None = HISTORY_LIMIT,
        on_record: Callable[[Record], None] | None = None,
        initial: str | None = None,
    ) -> None:
        self.spec = spec
        self.definition: MachineDef = spec.definition
        self.values = values if values is not None else spec.table.defaults()
        self.machine_id = machine_id or spec.name
        self.context: Ctx = context if context is not None else spec.context()
        self._rng = rng
        self.history: list[Record] = []
        self._history_limit = history_limit
        self._on_record = on_record
        self.timers: dict[str, ArmedTimer] = {}
        self.budget_uses: dict[str, list[float]] = {b.name: [] for b in self.definition.budgets}
        self.backoff_attempts: dict[str, int] = {b.name: 0 for b in self.definition.backoffs}
        self._next_token = 1
        self._now = 0.0
        self._started = False
        self._event: Event = _NO_EVENT
        self._fired: Transition | None = None
        self._expired: str | None = None
        self._compiled = _compiled(spec)
        state = initial or self.definition.initial
        if state not in self._compiled.states:
            raise ValueError(f"machine {spec.name!r} has no state {state!r}")
        self._state = state
        """The current state; ``transitions`` sets it (``model_attribute``)."""

    @property
    def rng(self) -> random.Random:
        """Jitter's random numbers; made on first use (most machines have no jitter)."""
        if self._rng is None:
            self._rng = random.Random(0)
        return self._rng

    @rng.setter
    def rng(self, value: random.Random) -> None:
        self._rng = value

    # -- public surface ------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def terminal(self) -> bool:
        return self._state in self._compiled.terminal

    def start(self, now: float) -> list[Effect]:
        """Enter the initial state: run its entry effects and arm its timers."""
        if self._started:
            raise RuntimeError(f"machine {self.machine_id!r} was already started")
        self._started = True
        self._now = now
        self._event = Event("start")
        effects: list[Effect] = []
        try:
            names, _ = self._enter(self._state, effects)
        except Exception as exc:  # an entry effect raised: fail as declared, like any callback
            self._record("start", "start", "", self._state)
            return effects + self._fault(self._event, self._state, exc, in_fault=False)
        self._record("start", "start", "", self._state, names)
        return effects

    def handle(self, event: Event | TimerFired, now: float) -> list[Effect]:
        """Feed one event; return the effects to execute. Never raises for a bad event."""
        if not self._started:
            raise RuntimeError(f"machine {self.machine_id!r} must be start()ed before handle()")
        self._now = now
        if isinstance(event, TimerFired):
            armed = self.timers.get(event.timer)
            if armed is None or armed.token != event.token:
                self._record(
                    "timer_dropped",
                    event.timer,
                    self.state,
                    self.state,
                    reason=f"timer {event.timer!r} token {event.token} is no longer armed",
                )
                return []
            del self.timers[event.timer]
            fires = self._compiled.timers[event.timer][1].fires
            self._expired = event.timer
            try:
                return self._dispatch(Event(fires, {"timer": event.timer}))
            finally:
                self._expired = None
        return self._dispatch(event)

    def budget_remaining(self, name: str) -> int:
        budget = self.definition.budget(name)
        window = self.values[budget.window]
        uses = [t for t in self.budget_uses[name] if t > self._now - window]
        self.budget_uses[name] = uses
        return budget.limit - len(uses)

    def deadlines(self) -> dict[str, float]:
        return {name: armed.deadline for name, armed in self.timers.items()}

    def can_handle(self, trigger: str) -> bool:
        """Whether some transition for ``trigger`` leaves the current state (guards aside)."""
        return self._state in self._compiled.handled.get(trigger, _EMPTY)

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, event: Event, *, in_fault: bool = False) -> list[Effect]:
        source = self._state
        compiled = self._compiled
        if source in compiled.terminal:
            self._record("ignored", event.trigger, source, source, reason="machine is terminal")
            return []
        if source not in compiled.handled.get(event.trigger, _EMPTY):
            self._record(
                "ignored",
                event.trigger,
                source,
                source,
                reason=f"no transition for {event.trigger!r} in state {source!r}",
            )
            return []
        self._event = event
        self._fired = None
        internal = compiled.internal.get(event.trigger)
        direct = internal.get(source) if internal is not None else None
        try:
            if direct is None:
                if compiled.events[event.trigger].trigger(self) and self._fired is None:
                    self._fired = compiled.sure[event.trigger, source]
            else:
                self._take_internal(direct, event)
        except Exception as exc:  # a guard raised: the state has not changed
            return self._fault(event, source, exc, in_fault)
        fired = self._fired
        if fired is None:
            guards = [
                t.guard or f"budget {t.consumes}"
                for t in self.definition.transitions
                if t.trigger == event.trigger and source in self.definition.sources(t)
            ]
            self._record(
                "ignored",
                event.trigger,
                source,
                source,
                reason=f"blocked in {source!r} by {', '.join(g for g in guards if g)}",
            )
            return []
        if fired.consumes is not None:
            self.budget_uses[fired.consumes].append(self._now)
        effects: list[Effect] = []
        names = fired.effects
        ran = 0
        try:
            for name in names:
                ran += 1
                self._run_effect(name, effects)
        except Exception as exc:
            self._transition_timers(source, fired, event, effects)
            self._record("transition", event.trigger, source, self._state, names[:ran])
            return effects + self._fault(event, self._state, exc, in_fault)
        try:
            entered = self._transition_timers(source, fired, event, effects)
        except Exception as exc:
            self._record("transition", event.trigger, source, self._state, names)
            return effects + self._fault(event, self._state, exc, in_fault)
        if entered:
            names = (*names, *entered)
        if fired.dest is not None:
            self._record("transition", event.trigger, source, self._state, names)
        elif StateMachine.internal_records:
            self._record("internal", event.trigger, source, self._state, names)
        return effects

    def _take_internal(self, candidates: tuple[_Candidate, ...], event: Event) -> None:
        """Choose among internal transitions as ``transitions`` would, without its machinery.

        Heartbeats, stream events and progress (nine events in ten) are internal transitions:
        they change no state, so ``transitions`` has nothing to do for them but evaluate their
        conditions in order and take the first whose conditions hold, which is all this does.
        Every state change still goes through ``transitions``."""
        for transition, guard, budget in candidates:
            if guard is not None and not guard(self.context, event):
                continue
            if budget is not None and not self.budget_remaining(budget) > 0:
                continue
            self._fired = transition
            return

    def _run_effect(self, name: str, out: list[Effect]) -> None:
        produced = self.spec.effects[name](self.context, self._event)
        if produced is None:
            return
        if isinstance(produced, Effect):
            out.append(produced)
        else:
            out.extend(produced)

    def _fault(self, event: Event, state: str, exc: Exception, in_fault: bool) -> list[Effect]:
        reason = f"{type(exc).__name__}: {exc} (while handling {event.trigger!r} in {state!r})"
        self._record("fault", event.trigger, state, state, reason=reason)
        trigger = self.definition.fault_trigger
        if in_fault or trigger is None:
            raise RuntimeError(f"machine {self.machine_id!r}: {reason}") from exc
        return self._dispatch(Event(trigger, {"error": reason}), in_fault=True)

    # -- timers --------------------------------------------------------------------------------

    def _transition_timers(
        self, source: str, fired: Transition, event: Event, out: list[Effect]
    ) -> list[str]:
        """Cancel, arm and re-arm timers for a transition that has been taken."""
        dest = self._state
        compiled = self._compiled
        entered: list[str] = []
        fresh: set[str] | frozenset[str] = _EMPTY
        if fired.dest is not None:
            for name in list(self.timers):
                _, timer, span = compiled.timers[name]
                if timer.kind is TimerKind.STATE or dest not in span:
                    self._cancel(name, out)
            entered, fresh = self._enter(dest, out, source)
        if event.trigger not in compiled.rearm_triggers:
            return entered  # nothing this trigger could re-arm (most events)
        candidates = list(self.timers)
        expired = self._expired
        if (
            expired is not None
            and expired not in self.timers
            and dest in compiled.timers[expired][2]
        ):
            candidates.append(expired)  # a periodic timer re-armed by its own expiry
        for name in candidates:
            timer = compiled.timers[name][1]
            if event.trigger in timer.rearmed_by and name not in fresh:
                self._arm(timer, out)
        return entered

    def _enter(
        self, dest: str, out: list[Effect], source: str | None = None
    ) -> tuple[list[str], set[str] | frozenset[str]]:
        """Entry actions of ``dest``: backoff resets, entry effects, its timers.

        ``source`` is the state left (``None`` for ``start()``): a silence timer is armed on
        entering its span from outside, through any state of the span, not only its declaring
        one (a session back from ``stale`` into ``running`` must watch heartbeats again).
        """
        entry = self._compiled.entries[dest]
        for name in entry.resets:
            self.backoff_attempts[name] = 0
        for name in entry.on_enter:
            self._run_effect(name, out)
        if not entry.timers and not entry.silences:
            return list(entry.on_enter), _EMPTY
        fresh: set[str] = set()
        timers = self.timers
        for timer in entry.timers:
            if timer.kind is TimerKind.STATE or timer.name not in timers:
                self._arm(timer, out)
                fresh.add(timer.name)
        for timer, span in entry.silences:
            if timer.name not in timers and (source is None or source not in span):
                self._arm(timer, out)
                fresh.add(timer.name)
        return list(entry.on_enter), fresh

    def _arm(self, timer: Timer, out: list[Effect]) -> None:
        name = timer.name
        old = self.timers.get(name)
        if old is not None:
            out.append(CancelTimer(self.machine_id, name, old.token))
        delay = self.values[timer.after] if timer.after is not None else self._delay(timer)
        token = self._next_token
        self._next_token = token + 1
        deadline = self._now + delay
        self.timers[name] = ArmedTimer(name, deadline, token)
        out.append(ArmTimer(self.machine_id, name, token, deadline, delay))

    def _cancel(self, name: str, out: list[Effect]) -> None:
        armed = self.timers.pop(name)
        out.append(CancelTimer(self.machine_id, name, armed.token))

    def _delay(self, timer: Timer) -> float:
        if timer.after is not None:
            return self.values[timer.after]
        assert timer.backoff is not None
        name = timer.backoff
        if name in self.backoff_attempts:
            bo = self.definition.backoff(name)
            attempt = self.backoff_attempts[name]
            self.backoff_attempts[name] = attempt + 1
            base = min(self.values[bo.initial] * bo.factor**attempt, self.values[bo.maximum])
            return base + (self.rng.uniform(0, bo.jitter * base) if bo.jitter else 0.0)
        budget = self.definition.budget(name)
        assert budget.backoff_initial is not None and budget.backoff_maximum is not None
        attempt = max(0, self.definition.budget(name).limit - self.budget_remaining(name) - 1)
        return min(
            self.values[budget.backoff_initial] * budget.backoff_factor**attempt,
            self.values[budget.backoff_maximum],
        )

    # -- history -------------------------------------------------------------------------------

    def _record(
        self,
        kind: RecordKind,
        trigger: str,
        source: str,
        dest: str,
        effects: Iterable[str] = (),
        reason: str = "",
    ) -> None:
        rec = Record(
            self._now,
            self.definition.name,
            self.machine_id,
            kind,
            trigger,
            source,
            dest,
            tuple(effects),
            reason,
            self._expired or "",
        )
        history = self.history
        history.append(rec)
        limit = self._history_limit
        if limit is not None and len(history) > limit:
            del history[: len(history) - limit]
        if self._on_record is not None:
            self._on_record(rec)

    # -- snapshot and restore ------------------------------------------------------------------

    def snapshot(self, now: float) -> Snapshot:
        self._now = now
        for name in self.budget_uses:
            self.budget_remaining(name)  # prune uses outside the window
        return Snapshot(
            machine=self.definition.name,
            machine_id=self.machine_id,
            state=self.state,
            taken_at=now,
            timers=[ArmedTimer(t.name, t.deadline, t.token) for t in self.timers.values()],
            budgets={k: list(v) for k, v in self.budget_uses.items()},
            backoffs=dict(self.backoff_attempts),
            context=msgspec.to_builtins(self.context),
            next_token=self._next_token,
        )

    @classmethod
    def restore(
        cls,
        spec: MachineSpec[Ctx],
        snapshot: Snapshot,
        now: float,
        values: TimerValues | None = None,
        *,
        keep: Literal["remaining", "deadline"] = "remaining",
        rng: random.Random | None = None,
        on_record: Callable[[Record], None] | None = None,
    ) -> tuple[StateMachine[Ctx], list[Effect]]:
        """Rebuild a machine and return the ``ArmTimer`` effects for its timers.

        ``keep="remaining"`` gives each timer the time it had left when snapshotted (a machine
        moved or paused). ``keep="deadline"`` keeps absolute deadlines, for a wall-clock host
        restarted after downtime: a deadline that passed while down fires at once.
        """
        if snapshot.machine != spec.name:
            raise ValueError(f"snapshot of {snapshot.machine!r} cannot restore a {spec.name!r}")
        context = msgspec.convert(snapshot.context, spec.context)
        machine = cls(
            spec,
            values,
            machine_id=snapshot.machine_id,
            context=context,
            rng=rng,
            on_record=on_record,
            initial=snapshot.state,
        )
        machine._started = True
        machine._now = now
        machine._next_token = snapshot.next_token
        shift = now - snapshot.taken_at if keep == "remaining" else 0.0
        machine.budget_uses = {k: [t + shift for t in v] for k, v in snapshot.budgets.items()}
        machine.backoff_attempts = dict(snapshot.backoffs)
        effects: list[Effect] = []
        for armed in snapshot.timers:
            deadline = armed.deadline + shift
            machine.timers[armed.name] = ArmedTimer(armed.name, deadline, armed.token)
            effects.append(
                ArmTimer(
                    machine.machine_id, armed.name, armed.token, deadline, max(0.0, deadline - now)
                )
            )
        machine._record("start", "restore", snapshot.state, snapshot.state, reason=f"keep={keep}")
        return machine, effects
