"""The clock port, and its two implementations.

Machines never read time; hosts pass ``now`` in and schedule the ``ArmTimer`` effects on a
``Clock``. Production uses ``RealClock`` (anyio); tests and the simulator use ``VirtualClock``, a
discrete-event scheduler in which a 30-minute timeout takes microseconds and timers due at the same
instant run in the order they were scheduled, every time.

freezegun is deliberately not used for engine time: it freezes the event loop's own clock too.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Literal, Protocol

import anyio


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle: ...


class _Scheduled:
    __slots__ = ("callback", "cancelled", "deadline", "queue", "seq")

    def __init__(self, deadline: float, callback: Callable[[], None], queue: _TimerQueue) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self.queue: _TimerQueue | None = queue
        """Set while the item is in the queue's heap."""
        self.seq = 0
        """Its place among items of the same deadline (scheduling order): the simulator's
        fast-forward (``fsm.sim.fastforward``) orders what it skips by it."""

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.callback = _never  # what it held (closures, effects) is freed now, not at expiry
        queue = self.queue
        if queue is not None:
            queue._dead += 1
            if queue._dead >= queue._COMPACT_MIN and queue._dead * 2 > len(queue._heap):
                queue._compact()


def _never() -> None:  # pragma: no cover - a cancelled item is never run
    raise AssertionError("a cancelled timer ran")


class _TimerQueue:
    """A heap of callbacks ordered by (deadline, scheduling order): deterministic ties.

    Heap entries are ``(deadline, seq, item)`` tuples: ``seq`` is unique, so the heap compares
    floats and ints in C and never reaches the item (an item with its own ``__lt__`` made the
    comparisons the simulator's largest single cost).

    Cancelling only marks an item; marked items leave the heap when they reach its top. A timer
    re-armed by every event (a silence window) would otherwise fill the heap with dead items for
    a whole window (a turn's no-progress window is minutes), so when most of the heap is dead it
    is rebuilt without them: the order of what remains is the same (its keys are unique)."""

    _COMPACT_MIN = 256

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Scheduled]] = []
        self._seq = itertools.count()
        self._dead = 0

    def push(self, deadline: float, callback: Callable[[], None]) -> _Scheduled:
        item = _Scheduled(deadline, callback, self)
        item.seq = seq = next(self._seq)
        heapq.heappush(self._heap, (deadline, seq, item))
        return item

    def _compact(self) -> None:
        """Drop the dead items (``_Scheduled.cancel`` calls it when they are most of the heap)."""
        # in place: ``VirtualClock.advance`` holds the list while callbacks cancel timers
        self._heap[:] = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._dead = 0

    def _pop(self) -> _Scheduled:
        item = heapq.heappop(self._heap)[2]
        item.queue = None
        if item.cancelled:
            self._dead -= 1
        return item

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            self._pop()
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> _Scheduled | None:
        deadline = self.next_deadline()
        if deadline is None or deadline > now:
            return None
        return self._pop()

    def __len__(self) -> int:
        return len(self._heap) - self._dead


class VirtualClock:
    """Discrete-event time. Nothing happens until the test or simulator advances it."""

    runs_in_deadline_order = True
    """Callbacks run in deadline order (``fsm.engine.runner`` relies on it to keep a pushed-back
    timer's
    entry instead of replacing it)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._queue = _TimerQueue()
        self.fired = 0

    def now(self) -> float:
        return self._now

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        return self._queue.push(deadline if deadline > self._now else self._now, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self._now + delay, callback)

    def pending(self) -> int:
        return len(self._queue)

    def next_deadline(self) -> float | None:
        return self._queue.next_deadline()

    def advance(self, to: float) -> int:
        """Run every callback due up to ``to`` (including ones they schedule), then set now=to."""
        if to < self._now:
            raise ValueError(f"virtual time cannot go back from {self._now} to {to}")
        ran = 0
        queue = self._queue
        heap = queue._heap  # the hot loop of every simulation: the queue's pop_due, inlined
        pop = heapq.heappop
        while heap:
            deadline, _, item = heap[0]
            if item.cancelled:
                queue._pop()
                continue
            if deadline > to:
                break
            pop(heap)
            item.queue = None
            self._now = deadline
            item.callback()
            ran += 1
        self._now = to
        self.fired += ran
        return ran

    def advance_by(self, delta: float) -> int:
        return self.advance(self._now + delta)

    def run_until_idle(self, max_steps: int = 100_000, until: float | None = None) -> int:
        """Run callbacks in deadline order until none is left (or ``until``, if given).

        ``max_steps`` guards against periodic timers that would never let it finish.
        """
        ran = 0
        while (deadline := self._queue.next_deadline()) is not None:
            if until is not None and deadline > until:
                break
            if ran >= max_steps:
                raise RuntimeError(
                    f"virtual clock still busy after {max_steps} callbacks at t={self._now}; "
                    "a periodic timer never stops - pass until= to bound the run"
                )
            item = self._queue.pop_due(deadline)
            assert item is not None
            self._now = item.deadline
            item.callback()
            ran += 1
        if until is not None:
            self._now = max(self._now, until)
        self.fired += ran
        return ran


class RealClock:
    """Real time on anyio: one scheduler task (``run``) serves every timer of a host.

    ``timebase="wall"`` reads ``time.time()`` so that deadlines stored in a database survive a
    restart of the host; ``"monotonic"`` (default) is immune to wall-clock jumps.
    """

    runs_in_deadline_order = True
    """As ``VirtualClock``'s."""

    def __init__(self, timebase: Literal["monotonic", "wall"] = "monotonic") -> None:
        self._read = time.time if timebase == "wall" else time.monotonic
        self._queue = _TimerQueue()
        self._wake: anyio.Event | None = None

    def now(self) -> float:
        return self._read()

    def call_at(self, deadline: float, callback: Callable[[], None]) -> TimerHandle:
        earliest = self._queue.next_deadline()
        handle = self._queue.push(deadline, callback)
        if self._wake is not None and (earliest is None or deadline < earliest):
            self._wake.set()
        return handle

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return self.call_at(self.now() + delay, callback)

    def pending(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """Fire callbacks at their deadlines until cancelled (run it in the host's task group)."""
        while True:
            self._wake = anyio.Event()
            deadline = self._queue.next_deadline()
            if deadline is None:
                await self._wake.wait()
            else:
                with anyio.move_on_after(max(0.0, deadline - self.now())):
                    await self._wake.wait()
            now = self.now()
            while (item := self._queue.pop_due(now)) is not None:
                item.callback()
