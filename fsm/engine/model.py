"""The declaration of a machine, as plain data.

Theory of operation
-------------------
A lifecycle is declared once, here-shaped, and everything else is derived from it: the engine
runs it, ``fsm-agent graph`` draws it, the docs' timer tables list it, the simulator explores it.
Nothing about a lifecycle may live outside the declaration — no transition written as an ``if`` in
a host, no timer started by hand — so the diagrams cannot drift from the behaviour (the gap h11
admits in its own state module).

A declaration names behaviour but does not contain it: guards and effects are *names*. The machine
module binds each name to a small function over the machine's context (see ``fsm.binding``). That
keeps the declaration serialisable (``to_dict``/``from_dict`` round-trip through JSON) for tools,
the graph and the simulator's explorer.

Timers come in the three kinds OTP's ``gen_statem`` has:

* ``state``   — armed on entering its state, cancelled on leaving it; any transition that exits and
  re-enters the state (a reflexive transition) arms it afresh.
* ``silence`` — armed on entering its span from outside, re-armed by every event whose trigger is in
  ``rearmed_by`` (and by nothing else), cancelled on leaving the span. A silence timer re-armed by
  its own trigger is a periodic tick.
* ``span``    — armed on entering its declaring state from outside its span, kept while the machine
  moves inside the span, cancelled on leaving it (e.g. a max-runtime cap across several states).

Durations are never literals in a declaration: ``after`` is a key into the side's timer table
(``fsm.machines.timers``), or the timer follows a backoff policy. Restart intensity is a ``Budget``
(N uses
in a window), consumed by the transitions that declare it; when a budget is exhausted the next
declared transition for the same trigger and state is tried, exactly as a failed guard does.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

ANY_STATE = "*"
"""A transition source meaning every non-terminal state of the machine."""


class TimerKind(enum.StrEnum):
    STATE = "state"
    SILENCE = "silence"
    SPAN = "span"


class Timer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A timer owned by the state that declares it; on expiry the engine fires ``fires``."""

    name: str
    fires: str
    after: str | None = None
    """Key into the timer table; exactly one of ``after`` and ``backoff`` is set."""
    backoff: str | None = None
    """Name of a ``Backoff`` or of a ``Budget`` with a backoff: the delay grows per attempt."""
    kind: TimerKind = TimerKind.STATE
    span: tuple[str, ...] = ()
    """For span and silence timers: the other states the timer lives on in."""
    rearmed_by: tuple[str, ...] = ()
    """For silence timers: the triggers that push the deadline back."""


class State(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    terminal: bool = False
    timers: tuple[Timer, ...] = ()
    on_enter: tuple[str, ...] = ()
    """Effects emitted every time the state is entered (including by ``start()``)."""
    doc: str = ""


class Transition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trigger: str
    source: tuple[str, ...]
    dest: str | None
    """``None`` makes an internal transition: no exit, no entry, timers untouched."""
    guard: str | None = None
    consumes: str | None = None
    """Budget used by this transition; when the budget is spent the transition is not taken."""
    effects: tuple[str, ...] = ()
    doc: str = ""


class Backoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Delay ``initial * factor**attempt`` capped at ``maximum``, plus up to ``jitter`` of it.

    The attempt count grows each time a timer using this backoff is armed and resets when the
    machine enters ``resets_in`` (e.g. a successful connection).
    """

    name: str
    initial: str
    maximum: str
    factor: float = 2.0
    jitter: float = 0.0
    resets_in: tuple[str, ...] = ()


class Budget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Restart intensity: at most ``limit`` uses in any ``window``; optionally paced by a backoff
    whose attempt number is the count of uses still inside the window."""

    name: str
    limit: int
    window: str
    backoff_initial: str | None = None
    backoff_maximum: str | None = None
    backoff_factor: float = 2.0


class MachineDef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    initial: str
    states: tuple[State, ...]
    transitions: tuple[Transition, ...]
    budgets: tuple[Budget, ...] = ()
    backoffs: tuple[Backoff, ...] = ()
    fault_trigger: str | None = "fault"
    """Trigger the engine fires when a guard or effect raises; must be handled in every
    non-terminal state (usually by one ``*`` transition to ``failed``)."""
    doc: str = ""

    # -- lookups used by the engine, the validator and the graph -----------------------------

    def state(self, name: str) -> State:
        for state in self.states:
            if state.name == name:
                return state
        raise KeyError(f"machine {self.name!r} has no state {name!r}")

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def non_terminal(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states if not s.terminal)

    def sources(self, transition: Transition) -> tuple[str, ...]:
        """Expand ``*`` into the machine's non-terminal states."""
        out: list[str] = []
        for src in transition.source:
            for name in self.non_terminal if src == ANY_STATE else (src,):
                if name not in out:
                    out.append(name)
        return tuple(out)

    def timers(self) -> list[tuple[State, Timer]]:
        return [(state, timer) for state in self.states for timer in state.timers]

    def budget(self, name: str) -> Budget:
        for budget in self.budgets:
            if budget.name == name:
                return budget
        raise KeyError(f"machine {self.name!r} has no budget {name!r}")

    def backoff(self, name: str) -> Backoff:
        for backoff in self.backoffs:
            if backoff.name == name:
                return backoff
        raise KeyError(f"machine {self.name!r} has no backoff {name!r}")

    def timer_keys(self) -> set[str]:
        """Every timer-table key the declaration refers to."""
        keys = {t.after for _, t in self.timers() if t.after}
        for b in self.budgets:
            keys.add(b.window)
            keys.update(k for k in (b.backoff_initial, b.backoff_maximum) if k)
        for bo in self.backoffs:
            keys.update((bo.initial, bo.maximum))
        return keys

    # -- plain-data form ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineDef:
        return msgspec.convert(data, cls)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> MachineDef:
        return msgspec.json.decode(data, type=cls)


# -- small constructors so machine modules read like tables -----------------------------------


def on(
    trigger: str,
    source: str | tuple[str, ...],
    dest: str | None,
    *,
    guard: str | None = None,
    consumes: str | None = None,
    effects: tuple[str, ...] | str = (),
    doc: str = "",
) -> Transition:
    """``on("stale_heartbeat", "running", "stale", effects="fail_turns")``."""
    return Transition(
        trigger=trigger,
        source=(source,) if isinstance(source, str) else tuple(source),
        dest=dest,
        guard=guard,
        consumes=consumes,
        effects=(effects,) if isinstance(effects, str) else tuple(effects),
        doc=doc,
    )


def state_timer(name: str, after: str, fires: str) -> Timer:
    return Timer(name=name, fires=fires, after=after, kind=TimerKind.STATE)


def backoff_timer(name: str, backoff: str, fires: str) -> Timer:
    return Timer(name=name, fires=fires, backoff=backoff, kind=TimerKind.STATE)


def silence_timer(
    name: str, after: str, fires: str, rearmed_by: tuple[str, ...], span: tuple[str, ...] = ()
) -> Timer:
    return Timer(
        name=name,
        fires=fires,
        after=after,
        kind=TimerKind.SILENCE,
        span=span,
        rearmed_by=rearmed_by,
    )


def span_timer(name: str, after: str, fires: str, span: tuple[str, ...]) -> Timer:
    return Timer(name=name, fires=fires, after=after, kind=TimerKind.SPAN, span=span)
