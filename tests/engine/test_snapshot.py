"""Snapshot and restore: a machine moved or paused keeps its timers' *remaining* time.

The control plane stores sessions (SQLite) and may rebuild a machine in another process or after a
restart; a restored timer restarting its full delay would let a session that was 29 minutes into
its 30-minute cap run another 30. ``keep="deadline"`` is the other choice, for wall-clock hosts.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from fsm.engine.effects import ArmTimer
from fsm.engine.machine import Snapshot, StateMachine
from fsm.engine.spec import MachineSpec
from fsm.machines import catalog, session
from tests.engine.harness import Driver
from tests.engine.test_engine_timers import ALARM
from tests.engine.toy import ToyContext

MIN = 60.0


def through_json(snapshot: Snapshot) -> Snapshot:
    return msgspec.json.decode(msgspec.json.encode(snapshot), type=Snapshot)


def test_a_restored_machine_fires_its_timers_at_the_remaining_time() -> None:
    d = Driver(ALARM)
    d.start()  # ring due at 10
    d.advance(4.0)
    snap = through_json(d.snapshot())
    machine, effects = StateMachine.restore(ALARM, snap, 1000.0)
    assert effects == [ArmTimer("toy", "ring", 1, 1006.0, 6.0)]
    r = Driver(ALARM, machine=machine, start_at=1000.0)
    r.adopt(effects)
    r.advance(1005.999)
    assert r.state == "a"
    r.advance(1006.0)
    assert r.moves() == [(1006.0, "rang", "a", "c")]


def test_keep_deadline_keeps_absolute_deadlines_and_a_passed_one_fires_at_once() -> None:
    d = Driver(ALARM)
    d.start()
    snap = d.snapshot()
    _, effects = StateMachine.restore(ALARM, snap, 7.0, keep="deadline")
    assert effects == [ArmTimer("toy", "ring", 1, 10.0, 3.0)]
    machine, effects = StateMachine.restore(ALARM, snap, 50.0, keep="deadline")
    assert effects == [ArmTimer("toy", "ring", 1, 10.0, 0.0)]
    r = Driver(ALARM, machine=machine, start_at=50.0)
    r.adopt(effects)
    r.advance(50.0)
    assert r.moves() == [(50.0, "rang", "a", "c")]


def test_restore_keeps_tokens_so_old_expiries_still_match_and_new_ones_do_not_collide() -> None:
    d = Driver(ALARM)
    d.start()
    machine, _ = StateMachine.restore(ALARM, d.snapshot(), 0.0)
    assert machine.timers["ring"].token == 1
    r = Driver(ALARM, machine=machine)
    r.send("stay")  # re-arms
    assert machine.timers["ring"].token == 2
    assert r.fire("ring", 1) == []
    assert r.history[-1].kind == "timer_dropped"


def test_a_snapshot_cannot_restore_another_machine() -> None:
    snap = StateMachine(ALARM).snapshot(0.0)
    other: MachineSpec[Any] = catalog.BY_NAME["wrapper"]
    with pytest.raises(ValueError, match="snapshot of 'toy' cannot restore a 'wrapper'"):
        StateMachine.restore(other, snap, 0.0)


def test_a_session_124_minutes_into_its_cap_is_capped_a_minute_after_restore() -> None:
    d = Driver(session.SPEC)
    d.start()
    d.send("wrapper_connected")
    d.send("message_accepted")
    for _ in range(124 * 12):
        d.advance_by(5.0)
        d.send("heartbeat")
        d.send("frame")
    snap = through_json(d.snapshot())
    assert snap.context == {"active_messages": 1, "starts": 1}
    machine, effects = StateMachine.restore(session.SPEC, snap, 5000.0)
    r = Driver(session.SPEC, machine=machine, start_at=5000.0)
    r.adopt(effects)
    # max runtime 125 min, hung 16.5 min (backstops above the wrapper's own clocks)
    assert r.machine.deadlines() == {"stale": 5090.0, "hung": 5990.0, "max_runtime": 5060.0}
    r.advance(5060.0)
    assert r.moves() == [(5060.0, "max_runtime_exceeded", "running", "idle")]


def test_budget_uses_move_with_the_snapshot() -> None:
    d = Driver(catalog.BY_NAME["wrapper"])
    d.start()
    for _ in range(2):
        d.send("agent_ready")
        d.send("agent_exited")
        d.advance_by(5.0)
    snap = through_json(d.snapshot())
    machine, _ = StateMachine.restore(d.machine.spec, snap, 1000.0)
    assert machine.budget_uses["agent_restarts"] == [1000.0 - 10.0, 1000.0 - 5.0]
    assert machine.budget_remaining("agent_restarts") == 1
    late, _ = StateMachine.restore(d.machine.spec, snap, 1000.0, keep="deadline")
    assert late.budget_remaining("agent_restarts") == 3, "both uses are older than 10 min"


@pytest.mark.parametrize("spec", catalog.ALL, ids=[s.name for s in catalog.ALL])
def test_every_machine_behaves_after_restore_as_it_would_have_shifted_in_time(
    spec: MachineSpec[Any],
) -> None:
    """Snapshot one second after start, restore 999 s later: the next three hours of timers
    (restarts, backoffs, periodic heartbeats) happen at the same offsets."""
    original = Driver(spec)
    original.start()
    original.advance(1.0)
    machine, effects = StateMachine.restore(spec, through_json(original.snapshot()), 1000.0)
    restored = Driver(spec, machine=machine, start_at=1000.0)
    restored.adopt(effects)
    original.advance(3 * 3600.0)
    restored.advance(999.0 + 3 * 3600.0)
    shifted = restored.moves()
    assert len(shifted) == len(original.moves()) > 0
    for (at, *rest), (orig_at, *orig_rest) in zip(shifted, original.moves(), strict=True):
        assert rest == orig_rest
        assert at - 999.0 == pytest.approx(orig_at)
    assert restored.state == original.state
    assert restored.machine.context == original.machine.context


def test_the_snapshot_carries_the_context_as_plain_data() -> None:
    machine = StateMachine(ALARM, context=ToyContext(allowed=True, count=3))
    machine.start(0.0)
    snap = machine.snapshot(0.0)
    assert snap.context == {"allowed": True, "count": 3}
    restored, _ = StateMachine.restore(ALARM, through_json(snap), 0.0)
    assert restored.context == ToyContext(allowed=True, count=3)
