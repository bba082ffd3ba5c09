"""The outbox keeps order, drops the oldest events first, never outcomes, and resends after
reconnects until acknowledged."""

from __future__ import annotations

from collections.abc import Callable

from fsm.wire.outbox import Outbox
from fsm.wire.protocol import (
    EventFrame,
    EventsDropped,
    LifecycleFrame,
    OutcomeFrame,
    SeqFrame,
    encode,
)


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
    from fsm.settings.limits import resolve
    from fsm.wire.protocol import encode

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


def _outage(acked: int) -> tuple[Outbox, list[SeqFrame]]:
    """Two events sent, the socket lost, 38 more pushed, a welcome with ``acked``, the resend."""
    box = Outbox(max_frames=6)
    box.push(event(0))
    box.push(event(1))
    assert [f.seq for f in box.take_unsent()] == [1, 2]
    for i in range(2, 40):  # no flush while disconnected
        box.push(event(i))
    box.ack(acked)
    box.rewind()
    return box, box.take_unsent()


def test_one_run_of_drops_across_a_reconnect_is_one_marker() -> None:
    """The head of the buffer was sent before the link dropped; the drops during the outage then
    started a new marker next to the one standing for it (counts 1 and 2,120 on a real run). What
    the reconnect sends reports the run once, with ``count == last_seq - seq + 1``."""
    box, sent = _outage(acked=0)  # the control plane holds none of it
    assert sent == [
        EventsDropped(seq=1, count=37, last_seq=37),
        *(EventFrame(seq=s, generation=1, event={"type": "x", "n": s - 1}) for s in (38, 39, 40)),
    ]
    assert box.dropped_total == 37
    box.push(event(40))  # the merged marker is one frame of the bound
    assert [f.seq for f in box.pending()] == [1, 38, 39, 40, 41]
    assert (
        box.size_bytes
        == sum(len(encode(f)) for f in box.pending() if isinstance(f, EventFrame)) + 80
    )


def test_a_marker_the_control_plane_may_hold_is_not_grown_past_its_ack() -> None:
    """The control plane got event 1 before the socket broke and acks it in the welcome: had the
    drops been merged into the marker standing for seq 1, that ack would have released seqs
    2..37 unreported. The rest of the run still goes out as one marker."""
    _box, sent = _outage(acked=1)
    assert sent[0] == EventsDropped(seq=2, count=36, last_seq=37)
    assert [f.seq for f in sent[1:]] == [38, 39, 40]


def test_random_outages_lose_nothing_and_each_resend_reports_a_run_once() -> None:
    """A model of the control plane's ingest (a seq at or below the last one held is a duplicate;
    a marker is acked by its first seq) against random pushes, deliveries, acks and reconnects:
    every seq reaches it once, as itself or inside a marker, and no resend carries two adjacent
    markers."""
    import itertools
    import random

    rng = random.Random(13)
    for _ in range(200):
        box = Outbox(max_frames=rng.randint(2, 8))
        held = 0  # the control plane's last seq
        covered: list[int] = []
        wire: list[SeqFrame] = []  # sent on the current connection, not yet delivered
        connected = True
        for step in range(rng.randint(5, 80)):
            roll = rng.random()
            if roll < 0.5:
                box.push(outcome(f"m{step}") if rng.random() < 0.1 else event(step))
                if connected:
                    wire.extend(box.take_unsent())
            elif roll < 0.75 and wire:  # deliver some of the wire, acking what was new
                for frame in wire[: rng.randint(1, len(wire))]:
                    wire.remove(frame)
                    if frame.seq <= held:
                        continue
                    assert frame.seq == (covered[-1] if covered else 0) + 1, "a gap"
                    last = frame.last_seq if isinstance(frame, EventsDropped) else frame.seq
                    covered.extend(range(frame.seq, last + 1))
                    held = frame.seq
                    if rng.random() < 0.7:
                        box.ack(held)
            elif roll < 0.9:  # the socket is lost with whatever was on the wire
                connected, wire = False, []
            elif not connected:  # reconnect: the welcome carries what the control plane holds
                connected = True
                box.ack(held)
                box.rewind()
                wire = box.take_unsent()
                assert not any(
                    isinstance(a, EventsDropped) and isinstance(b, EventsDropped)
                    for a, b in itertools.pairwise(wire)
                ), wire
        assert covered == list(range(1, len(covered) + 1))
