"""The fakes behave like what they stand for: details a scenario's expectations cannot see."""

from __future__ import annotations

from fsm.engine.clock import VirtualClock
from fsm.sim.process import SimProcess
from fsm.sim.scenario import Action, Segment, WorldConfig
from fsm.sim.world import World
from fsm.wire.protocol import EventFrame, EventsDropped, LifecycleFrame, OutcomeFrame


def test_a_stopped_process_runs_nothing_until_continued_and_a_killed_one_never() -> None:
    clock = VirtualClock()
    proc = SimProcess(clock, "p")
    ran: list[float] = []
    proc.call_later(1, lambda: ran.append(clock.now()))
    proc.call_later(2, lambda: ran.append(clock.now()))
    proc.pause()
    clock.advance(5)
    assert ran == []
    proc.resume()  # SIGCONT: overdue work runs at once, in order
    assert ran == [5, 5]
    proc.call_later(1, lambda: ran.append(-1))
    proc.kill()
    clock.advance(10)
    assert ran == [5, 5] and clock.pending() == 0


def test_outbox_overflow_drops_the_oldest_events_and_keeps_lifecycle_and_outcomes() -> None:
    world = World(WorldConfig(outbox_frames=30))
    world.start()
    world.run_until(10)
    world.do(Action(at=10, do="prompt", message="m1", plan=(Segment("text", 100.0),)))
    world.run_until(20)
    world.do(Action(at=20, do="ingest.drop", duration=80))
    world.run_until(99)
    wrapper = world.wrapper()
    assert wrapper is not None
    pending = wrapper.core.outbox.pending()
    markers = [f for f in pending if isinstance(f, EventsDropped)]
    events = [f for f in pending if isinstance(f, EventFrame)]
    assert markers and events and wrapper.core.outbox.dropped_total >= 40
    # Everything dropped is older than everything kept.
    assert min(e.seq for e in events) > max(m.last_seq for m in markers)
    assert all(isinstance(f, EventFrame | EventsDropped | LifecycleFrame) for f in pending)
    world.run_until(200)
    message = world.message("s1", "m1")
    assert message is not None and message.state == "completed"
    assert world.controls["s1"].core.events_dropped == wrapper.core.outbox.dropped_total
    assert not world.invariants.violations


def test_the_outcome_is_never_dropped_even_from_a_full_outbox() -> None:
    world = World(WorldConfig(outbox_frames=5))
    world.start()
    world.run_until(10)
    world.do(Action(at=10, do="prompt", message="m1", plan=(Segment("text", 20.0),)))
    world.run_until(11)
    world.do(Action(at=11, do="ingest.drop", duration=60))
    world.run_until(70)
    wrapper = world.wrapper()
    assert wrapper is not None
    assert any(isinstance(f, OutcomeFrame) for f in wrapper.core.outbox.pending())
    world.run_until(120)
    assert world.state_of("s1", "message:m1") == "completed"


def test_a_partition_healed_before_keepalive_delivers_late_frames_in_order() -> None:
    world = World(WorldConfig(keepalive=30.0))
    world.start()
    world.run_until(10)
    world.do(Action(at=10, do="prompt", message="m1", plan=(Segment("text", 10.0),)))
    world.do(Action(at=10, do="ingest.partition", duration=20))
    world.run_until(29)
    # The prompt is held up in the partition, not lost: queued until the wrapper has it.
    assert world.state_of("s1", "message:m1") == "queued"
    world.run_until(45)  # healed at 30 s: the prompt arrives, the 10 s turn runs
    assert world.state_of("s1", "message:m1") == "completed"
    assert world.state_of("s1", "ingest_link") == "connected"  # never noticed: no reconnect
    assert world.controls["s1"].core.duplicates == 0
    assert not world.invariants.violations


def test_every_component_draws_from_its_own_seeded_random_source() -> None:
    def lines(seed: int) -> list[object]:
        world = World(WorldConfig(jitter=0.05), seed=seed)
        world.start()
        world.do(Action(at=0, do="prompt", message="m1", plan=(Segment("text", 5.0),)))
        world.run_until(60)
        return list(world.lines)

    assert lines(1) == lines(1)
    assert lines(1) != lines(2)
