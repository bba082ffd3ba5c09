"""Engine bench: the cost of one transition that cancels a state timer and arms another.

Three machines of the same shape run side by side, round-robin, on the same ``VirtualClock``
(so the timer itself costs the same in all three and the ratio measures the machine layer):

* **ours**: a declaration like the real machines (two working states, each with a state timer,
  plus the ``fault`` → ``failed`` row every machine has), run by ``fsm.engine.machine.StateMachine``
  in a ``MachineGroup`` — the path every host takes: ``handle`` returns ``CancelTimer`` and
  ``ArmTimer`` effects and the group schedules them on the clock;
* **bare transitions**: a ``transitions.Machine`` with the same states and triggers whose
  ``on_enter``/``on_exit`` callbacks arm and cancel the same timers on the clock by hand;
* **python-statemachine**: the same, in that library (reported as not installed if it is not:
  ``pip install -e '.[bench]'``).

Figures: µs per transition (median of several runs) and the ratio to bare ``transitions``; the
issue's target is at most 1.5x. ``ours (handle only)`` is the engine without the group, for
telling engine cost from runner cost.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgspec
from transitions import Machine

from bench.common import Figure, interleaved, median
from fsm.engine.clock import TimerHandle, VirtualClock
from fsm.engine.effects import ArmTimer, CancelTimer, Effect
from fsm.engine.events import Event, TimerFired
from fsm.engine.machine import StateMachine
from fsm.engine.model import MachineDef, State, on, state_timer
from fsm.engine.runner import MachineGroup
from fsm.engine.spec import MachineSpec
from fsm.machines.timers import TimerSetting, TimerTable

TRANSITIONS = 20_000
"""Transitions per measurement (10,000 round trips idle → busy → idle)."""
RUNS = 9

TABLE = TimerTable(
    "bench",
    (
        TimerSetting("idle_timeout", 600.0, "an idle machine gives up"),
        TimerSetting("busy_timeout", 300.0, "a busy machine is stuck"),
    ),
)

DECLARATION = MachineDef(
    name="pingpong",
    initial="idle",
    doc="Two working states, each with a state timer; every event moves between them.",
    states=(
        State("idle", timers=(state_timer("idle_timer", "idle_timeout", "idle_expired"),)),
        State("busy", timers=(state_timer("busy_timer", "busy_timeout", "busy_expired"),)),
        State("failed", terminal=True),
    ),
    transitions=(
        on("go", "idle", "busy"),
        on("back", "busy", "idle"),
        on("idle_expired", "idle", "failed"),
        on("busy_expired", "busy", "failed"),
        on("fault", "*", "failed"),
    ),
)


class PingPongContext(msgspec.Struct):
    pass


SPEC: MachineSpec[Any] = MachineSpec(DECLARATION, TABLE, PingPongContext)
GO = Event("go")
BACK = Event("back")


def _ignore(_machine_id: str, _effect: Effect) -> None:
    pass


def ours_group(n: int = TRANSITIONS) -> float:
    """µs per transition through ``MachineGroup`` (engine + timer effects on the clock)."""
    clock = VirtualClock()
    group = MachineGroup(clock, _ignore)
    machine = group.add(StateMachine(SPEC, history_limit=0))
    send = group.send
    mid = machine.machine_id
    started = time.perf_counter()
    for _ in range(n // 2):
        send(mid, GO)
        send(mid, BACK)
    elapsed = time.perf_counter() - started
    assert machine.state == "idle" and clock.pending() == 1
    return elapsed / n * 1e6


def ours_handle(n: int = TRANSITIONS) -> float:
    """µs per transition calling ``handle`` and scheduling its timer effects by hand."""
    clock = VirtualClock()
    machine = StateMachine(SPEC, history_limit=0)
    handles: dict[str, TimerHandle] = {}

    def execute(effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, ArmTimer):
                fired = TimerFired(effect.timer, effect.token)
                handles[effect.timer] = clock.call_at(effect.deadline, lambda f=fired: None)
            elif isinstance(effect, CancelTimer):
                handles.pop(effect.timer).cancel()

    execute(machine.start(0.0))
    handle = machine.handle
    started = time.perf_counter()
    for _ in range(n // 2):
        execute(handle(GO, 0.0))
        execute(handle(BACK, 0.0))
    elapsed = time.perf_counter() - started
    assert machine.state == "idle" and clock.pending() == 1
    return elapsed / n * 1e6


class _BareModel:
    state: str


def bare_transitions(n: int = TRANSITIONS) -> float:
    """µs per transition of a bare ``transitions.Machine`` arming timers in its callbacks."""
    clock = VirtualClock()
    armed: dict[str, TimerHandle] = {}
    delays = {"idle": 600.0, "busy": 300.0}

    def arm(state: str) -> Callable[[], None]:
        def enter() -> None:
            armed[state] = clock.call_at(clock.now() + delays[state], _noop)

        return enter

    def cancel(state: str) -> Callable[[], None]:
        def leave() -> None:
            armed.pop(state).cancel()

        return leave

    model = _BareModel()
    machine = Machine(
        model=model,
        states=[
            {"name": "idle", "on_enter": arm("idle"), "on_exit": cancel("idle")},
            {"name": "busy", "on_enter": arm("busy"), "on_exit": cancel("busy")},
            "failed",
        ],
        initial="idle",
        auto_transitions=False,
        ignore_invalid_triggers=True,
    )
    machine.add_transition("go", "idle", "busy")
    machine.add_transition("back", "busy", "idle")
    machine.add_transition("idle_expired", "idle", "failed")
    machine.add_transition("busy_expired", "busy", "failed")
    machine.add_transition("fault", ["idle", "busy"], "failed")
    arm("idle")()  # transitions does not run the initial state's on_enter
    go = machine.events["go"].trigger
    back = machine.events["back"].trigger
    started = time.perf_counter()
    for _ in range(n // 2):
        go(model)
        back(model)
    elapsed = time.perf_counter() - started
    assert model.state == "idle" and clock.pending() == 1
    return elapsed / n * 1e6


def _noop() -> None:
    pass


def _statemachine_bench() -> Callable[[int], float] | None:
    try:
        from statemachine import State as PState
        from statemachine import StateMachine as PMachine
    except ImportError:
        return None

    class PingPong(PMachine):  # type: ignore[misc]
        idle = PState(initial=True)
        busy = PState()
        failed = PState(final=True)

        go = idle.to(busy)
        back = busy.to(idle)
        idle_expired = idle.to(failed)
        busy_expired = busy.to(failed)
        fault = idle.to(failed) | busy.to(failed)

        def __init__(self, clock: VirtualClock) -> None:
            self.clock = clock
            self.armed: dict[str, TimerHandle] = {}
            super().__init__()

        def on_enter_idle(self) -> None:
            self.armed["idle"] = self.clock.call_at(self.clock.now() + 600.0, _noop)

        def on_exit_idle(self) -> None:
            self.armed.pop("idle").cancel()

        def on_enter_busy(self) -> None:
            self.armed["busy"] = self.clock.call_at(self.clock.now() + 300.0, _noop)

        def on_exit_busy(self) -> None:
            self.armed.pop("busy").cancel()

    def run(n: int = TRANSITIONS) -> float:
        clock = VirtualClock()
        machine = PingPong(clock)  # runs on_enter_idle for the initial state
        send = machine.send
        started = time.perf_counter()
        for _ in range(n // 2):
            send("go")
            send("back")
        elapsed = time.perf_counter() - started
        assert clock.pending() == 1
        return elapsed / n * 1e6

    return run


def memory_per_instance(count: int = 500) -> tuple[float, float]:
    """KiB and objects per started ``turn`` machine (the most numerous: one per prompt)."""
    from fsm.machines import turn

    def make(i: int) -> StateMachine[Any]:
        machine = StateMachine(
            turn.SPEC, machine_id=f"turn:m{i}", context=turn.TurnContext(message_id=f"m{i}")
        )
        machine.start(0.0)
        return machine

    make(0)  # first-use costs (a compiled declaration, caches) are not per instance
    gc.collect()
    objects = len(gc.get_objects())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [make(i) for i in range(count)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    gc.collect()
    per_objects = (len(gc.get_objects()) - objects) / count
    del kept
    return (after - before) / count / 1024, per_objects


def run() -> list[Figure]:
    fns: dict[str, Callable[[], float]] = {
        "ours": ours_group,
        "ours_handle": ours_handle,
        "bare": bare_transitions,
    }
    psm = _statemachine_bench()
    if psm is not None:
        fns["psm"] = lambda: psm(TRANSITIONS // 4)  # it is slow; fewer transitions per run
    for fn in fns.values():  # warm up: imports, caches, first-call costs
        fn()
    samples = interleaved(fns, RUNS)
    bare = median(samples["bare"])
    target = "<= 1.5x bare transitions"
    note = f"median of {RUNS} runs of {TRANSITIONS:,} transitions, same VirtualClock for all"
    figures = [
        Figure(
            "engine",
            "transition + state timer (ours, MachineGroup)",
            median(samples["ours"]),
            "µs/transition",
            baseline="bare transitions",
            baseline_value=bare,
            ratio=median(samples["ours"]) / bare,
            target=target,
            meets_target=median(samples["ours"]) / bare <= 1.5,
            runs=RUNS,
            note=note,
            samples=samples["ours"],
        ),
        Figure(
            "engine",
            "transition + state timer (ours, handle only)",
            median(samples["ours_handle"]),
            "µs/transition",
            baseline="bare transitions",
            baseline_value=bare,
            ratio=median(samples["ours_handle"]) / bare,
            target=target,
            meets_target=median(samples["ours_handle"]) / bare <= 1.5,
            runs=RUNS,
            note="StateMachine.handle; its timer effects scheduled by hand",
            samples=samples["ours_handle"],
        ),
        Figure(
            "engine",
            "transition + state timer (bare transitions)",
            bare,
            "µs/transition",
            runs=RUNS,
            note="transitions.Machine, on_enter/on_exit arm/cancel on the clock",
            samples=samples["bare"],
        ),
    ]
    if psm is not None:
        value = median(samples["psm"])
        figures.append(
            Figure(
                "engine",
                "transition + state timer (python-statemachine)",
                value,
                "µs/transition",
                baseline="bare transitions",
                baseline_value=bare,
                ratio=value / bare,
                runs=RUNS,
                note=f"python-statemachine {_version('python-statemachine')}",
                samples=samples["psm"],
            )
        )
    else:
        figures.append(
            Figure(
                "engine",
                "transition + state timer (python-statemachine)",
                float("nan"),
                "µs/transition",
                note="python-statemachine not installed: pip install -e '.[bench]'",
            )
        )
    kib, objects = memory_per_instance()
    figures.append(
        Figure(
            "engine",
            "memory per machine instance (turn)",
            kib,
            "KiB",
            note=f"tracemalloc, 500 started turn machines; {objects:.0f} gc objects each",
        )
    )
    return figures


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    for figure in run():
        ratio = f"  {figure.ratio:.2f}x {figure.baseline}" if figure.ratio is not None else ""
        print(f"{figure.name}: {figure.value:.2f} {figure.unit}{ratio}  ({figure.note})")
