"""The wrapper's outbound buffer: sequence numbers, acknowledgements and a bounded drop policy.

Every frame that must reach the control plane gets the next ``seq`` and stays here until the
control plane acknowledges it, across any number of reconnects. The buffer is bounded in frames
and bytes. When it is over a bound, the *oldest events* go first — outcomes and lifecycle frames
are never dropped (the source system dropped the newest events and could drop anything). Dropped
events are replaced in place by one ``events_dropped`` marker per contiguous run, carrying the
count and seq range, so the control plane sees exactly where and how much was lost, and the order
of what remains is untouched.

An event the control plane would refuse (larger than its ``limits.frame_bytes``, or nested deeper
than ``limits.frame_depth``: an agent chooses its tool calls' arguments, and so their depth) is
replaced when it is pushed by a small one of the same type that says so, ``{"type": ...,
"truncated": {"bytes": n, "reason": ...}}``: sent as it was, it would close the socket, be sent
again after the reconnect, and hold the session's stream up forever.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Callable

import msgspec

from fsm.wire.protocol import EventFrame, EventsDropped, SeqFrame, nesting_depth

_MARKER_BYTES = 80
_encode = msgspec.json.Encoder().encode


def _seq_of(entry: tuple[SeqFrame, int]) -> int:
    return entry[0].seq


class Outbox:
    def __init__(
        self,
        max_frames: int = 1000,
        max_bytes: int = 8 * 1024 * 1024,
        *,
        frame_bytes: int | None = None,
        frame_depth: int | None = None,
    ) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frame_bytes = frame_bytes
        self.frame_depth = frame_depth
        self._most = frame_bytes if frame_bytes is not None else sys.maxsize
        self._depth = frame_depth if frame_depth is not None else sys.maxsize
        self.truncated_total = 0
        self._frames: list[tuple[SeqFrame, int]] = []
        self._bytes = 0
        self._next_seq = 1
        self._sent = 0
        """How many frames at the head of ``_frames`` were sent on the current connection."""
        self._no_events = 0
        """``_frames[:_no_events]`` holds no ``EventFrame`` (only markers, outcomes, lifecycle
        frames): where the search for the oldest event starts, so a buffer that stays over its
        bound costs O(1) per push instead of a scan of everything it holds."""
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def push(self, build: Callable[[int], SeqFrame]) -> SeqFrame:
        """Append the frame ``build(seq)``; drops the oldest events if a bound is exceeded."""
        frame = build(self._next_seq)
        self._next_seq += 1
        data = _encode(frame)
        size = len(data)
        # Most of a stream is text deltas, whose shape Kilo fixes (the agent's text is a string
        # in them, never structure): only their size can be out of bounds. Anything else may
        # carry structure the agent chose (a tool call's input) and is measured for depth too,
        # in two C-speed scans before the exact count.
        if isinstance(frame, EventFrame) and (
            size > self._most
            or (
                frame.event.get("type") != "message.part.delta"
                and data.count(b"{") + data.count(b"[") > self._depth
            )
        ):
            frame, size = self._within_limits(frame, data)
        self._frames.append((frame, size))
        self._bytes += size
        self._enforce_bounds()
        return frame

    def _within_limits(self, frame: EventFrame, data: bytes) -> tuple[EventFrame, int]:
        reason = ""
        if self.frame_bytes is not None and len(data) > self.frame_bytes:
            reason = f"larger than {self.frame_bytes} bytes"
        elif (
            self.frame_depth is not None
            and data.count(b"{") + data.count(b"[") > self.frame_depth
            and nesting_depth(data.decode()) > self.frame_depth
        ):
            reason = f"nested deeper than {self.frame_depth}"
        if not reason:
            return frame, len(data)
        self.truncated_total += 1
        kind = frame.event.get("type")
        event = {
            "type": kind if isinstance(kind, str) and len(kind) <= 200 else "unknown",
            "truncated": {"bytes": len(data), "reason": reason},
        }
        small = EventFrame(seq=frame.seq, generation=frame.generation, event=event)
        return small, len(msgspec.json.encode(small))

    def ack(self, seq: int) -> int:
        """Forget every frame up to ``seq`` (cumulative); returns how many were released."""
        frames = self._frames
        released = bisect.bisect_right(frames, seq, key=_seq_of)  # seqs only ever increase
        if released:
            self._bytes -= sum(size for _frame, size in frames[:released])
            del frames[:released]
        self._sent = max(0, self._sent - released)
        self._no_events = max(0, self._no_events - released)
        return released

    def rewind(self) -> None:
        """A new connection: everything unacknowledged must be sent again.

        Adjacent markers are merged here, before anything is sent. While the head of the buffer
        counted as sent, a drop next to it started a new marker rather than growing one the
        control plane might hold (its ack of the marker's first seq would release the growth
        unseen), so one run of drops could sit in the buffer as several markers; the reconnect
        reported it as two adjacent ``events_dropped`` (counts 1 and 2,120). The host applies the
        welcome's ack first, so every frame still here has a seq above what the control plane
        holds: none of them was received, and merging them cannot hide anything.
        """
        self._sent = 0
        self._merge_adjacent_markers()

    def _merge_adjacent_markers(self) -> None:
        merged: list[tuple[SeqFrame, int]] = []
        for entry in self._frames:
            frame = entry[0]
            prev = merged[-1][0] if merged else None
            if (
                isinstance(frame, EventsDropped)
                and isinstance(prev, EventsDropped)
                and prev.last_seq + 1 == frame.seq
            ):
                merged[-1] = (
                    EventsDropped(
                        seq=prev.seq, count=frame.last_seq - prev.seq + 1, last_seq=frame.last_seq
                    ),
                    _MARKER_BYTES,
                )
                self._bytes -= entry[1]
            else:
                merged.append(entry)
        if len(merged) != len(self._frames):
            self._frames = merged
            self._no_events = next(
                (i for i, (f, _) in enumerate(merged) if isinstance(f, EventFrame)), len(merged)
            )

    def take_unsent(self) -> list[SeqFrame]:
        frames = [f for f, _ in self._frames[self._sent :]]
        self._sent = len(self._frames)
        return frames

    def pending(self) -> list[SeqFrame]:
        return [f for f, _ in self._frames]

    def _over(self) -> bool:
        return len(self._frames) > self.max_frames or self._bytes > self.max_bytes

    def _enforce_bounds(self) -> None:
        index = self._no_events
        while self._over():
            index = self._oldest_event(index)
            if index < 0:
                self._no_events = len(self._frames)
                return  # only outcomes, lifecycle frames and markers left: never dropped
            self._drop(index)
            self._no_events = index  # nothing before the dropped one was an event

    def _oldest_event(self, start: int) -> int:
        for i in range(start, len(self._frames)):
            if isinstance(self._frames[i][0], EventFrame):
                return i
        return -1

    def _drop(self, i: int) -> None:
        frame, size = self._frames[i]
        self.dropped_total += 1
        prev = self._frames[i - 1][0] if i > 0 else None
        # Merge into an adjacent marker unless that marker counts as sent on this connection: the
        # control plane may hold it (or the event it replaced) and acks it by its first seq, an
        # ack that would release the growth unseen. A fresh marker keeps the ranges honest until
        # ``rewind`` merges the two.
        if isinstance(prev, EventsDropped) and i - 1 >= self._sent:
            merged = EventsDropped(seq=prev.seq, count=prev.count + 1, last_seq=frame.seq)
            self._frames[i - 1] = (merged, _MARKER_BYTES)
            del self._frames[i]
            self._bytes -= size
        else:
            marker = EventsDropped(seq=frame.seq, count=1, last_seq=frame.seq)
            self._frames[i] = (marker, _MARKER_BYTES)
            self._bytes += _MARKER_BYTES - size
