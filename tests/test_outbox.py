"""The outbox keeps order, drops the oldest events first, never outcomes, and resends after
reconnects until acknowledged."""

from __future__ import annotations

from collections.abc import Callable

from fsm.outbox import Outbox
from fsm.protocol import EventFrame, EventsDropped, LifecycleFrame, OutcomeFrame, SeqFrame


def event(n: int) -> Callable[[int], SeqFrame]:
    return lambda seq: EventFrame(seq=seq, generation=1, event={"type": "x", "n": n})


def outcome(mid: str) -> Callable[[int], SeqFrame]:
    return lambda seq: OutcomeFrame(seq=seq, message_id=mid, status="completed")


def test_sequence_numbers_are_consecutive_and_ack_releases_cumulatively() -> None:
    box = Outbox()
    frames = [box.push(event(i)) for i in range(5)]
    assert [f.seq for f in frames] == [1, 2, 3, 4, 5]
    assert box.ack(3) == 3
    assert [f.seq for f in box.pending()] == [4, 5]
    assert box.ack(3) == 0  # a duplicate ack releases nothing


def test_unacked_frames_are_resent_after_rewind_only() -> None:
    box = Outbox()
    for i in range(3):
        box.push(event(i))
    assert [f.seq for f in box.take_unsent()] == [1, 2, 3]
    assert box.take_unsent() == []
    box.ack(1)
    box.push(event(9))
    assert [f.seq for f in box.take_unsent()] == [4]
    box.rewind()  # a new connection
    assert [f.seq for f in box.take_unsent()] == [2, 3, 4]


def test_overflow_drops_oldest_events_keeps_outcomes_and_reports_the_range() -> None:
    box = Outbox(max_frames=4)
    box.push(event(0))
    box.push(outcome("m1"))
    for i in range(1, 6):
        box.push(event(i))
    pending = box.pending()
    assert len(pending) <= 4
    kinds = [type(f).__name__ for f in pending]
    assert kinds[0] == "EventsDropped" and pending[0].seq == 1
    assert any(isinstance(f, OutcomeFrame) and f.message_id == "m1" for f in pending)
    # The newest events survive; the markers account for every dropped one.
    survivors = [f.seq for f in pending if isinstance(f, EventFrame)]
    assert survivors == sorted(survivors) and survivors[-1] == 7
    dropped = sum(f.count for f in pending if isinstance(f, EventsDropped))
    assert dropped == box.dropped_total == 7 - 1 - len(survivors)
    assert [f.seq for f in pending] == sorted(f.seq for f in pending)


def test_byte_bound_and_lifecycle_frames_are_never_dropped() -> None:
    box = Outbox(max_frames=1000, max_bytes=600)
    for i in range(3):
        box.push(lambda seq, i=i: LifecycleFrame(seq=seq, machine="wrapper", state=f"s{i}"))
    for i in range(20):
        box.push(event(i))
    lifecycle = [f for f in box.pending() if isinstance(f, LifecycleFrame)]
    assert len(lifecycle) == 3
    assert box.size_bytes <= 600 or all(not isinstance(f, EventFrame) for f in box.pending())


def test_an_event_the_control_plane_would_refuse_is_replaced_by_a_small_one_that_says_so() -> None:
    """Sent as it was, a too-large or too-deep event would close the socket, be resent after the
    reconnect, be refused again, and hold the session's stream up forever."""
    from fsm.control.api import check_frame
    from fsm.limits import resolve
    from fsm.protocol import encode

    limits = resolve({"frame_bytes": 4096, "frame_depth": 16})
    box = Outbox(frame_bytes=limits.frame_bytes, frame_depth=limits.frame_depth)
    big = {"type": "message.part.updated", "properties": {"text": "x" * 10_000}}
    deep: dict[str, object] = {"type": "tool.input"}
    node = deep
    for _ in range(40):
        child: dict[str, object] = {}
        node["n"] = child
        node = child
    fine = {"type": "message.part.delta", "properties": {"delta": "hi"}}
    frames = [
        box.push(lambda seq, e=e: EventFrame(seq=seq, generation=1, event=e))
        for e in (big, deep, fine)
    ]
    assert [f.seq for f in frames] == [1, 2, 3]
    assert isinstance(frames[0], EventFrame) and isinstance(frames[1], EventFrame)
    assert frames[0].event["truncated"]["reason"] == "larger than 4096 bytes"
    assert frames[1].event["truncated"]["reason"] == "nested deeper than 16"
    assert frames[0].event["type"] == "message.part.updated"
    assert frames[2] == EventFrame(seq=3, generation=1, event=fine)
    assert box.truncated_total == 2
    for frame in frames:  # each one is a frame the control plane accepts
        assert check_frame(encode(frame).decode(), limits) == frame
