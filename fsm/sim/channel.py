"""The in-memory ingest channel: one session's WebSocket path, with its faults.

Theory of operation
-------------------
Frames cross as production sends them — encoded by ``fsm.wire.protocol`` on one side, decoded on the
other — so a frame that would not survive JSON does not survive here either. A connection is a
WebSocket over TCP, and its faults are TCP's, not a datagram's:

* **latency and jitter**: each frame arrives ``latency + U(0, jitter)`` later, but never before
  the frame sent ahead of it on the same connection (a byte stream does not reorder);
* **loss**: a lost segment that is never recovered breaks the connection; both ends see it close
  and the frames in flight are gone — the frame is not silently skipped;
* **drop** (``ingest.drop``): the connection resets now and new connects are refused for a while;
* **partition** (``ingest.partition``): nothing moves and nothing is closed; if the path heals
  before keepalive notices (``keepalive``), the frames held up arrive late, in order; otherwise
  the wrapper's end closes and its frames in flight are lost;
* **reorder**: the one reordering a WebSocket can show the control plane — a broken connection
  whose server end has not noticed yet still hands its late frames to the control plane after
  the wrapper's *new* connection has started (the control host keeps reading a replaced socket).

Each scheduled delivery takes the head of its direction's queue, so order holds even when the
explorer runs pending callbacks in any order.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable
from typing import Literal

from fsm.sim.process import Scheduler, SimProcess
from fsm.sim.scenario import WorldConfig
from fsm.wire.protocol import (
    ControlFrame,
    Frame,
    WrapperFrame,
    decode_from_control,
    decode_from_wrapper,
    encode,
)

PathState = Literal["up", "down", "partitioned"]
Note = Callable[[str, str], None]


class WrapperEnd:
    """The wrapper host's callbacks for one connection (those of ``IngestConnection``)."""

    def __init__(
        self,
        on_open: Callable[[], None],
        on_failed: Callable[[], None],
        on_closed: Callable[[], None],
        on_frame: Callable[[ControlFrame], None],
    ) -> None:
        self.on_open = on_open
        self.on_failed = on_failed
        self.on_closed = on_closed
        self.on_frame = on_frame


class Connection:
    def __init__(self, channel: IngestChannel, number: int, wrapper: SimProcess, end: WrapperEnd):
        self.channel = channel
        self.number = number
        self.wrapper = wrapper
        self.end = end
        self.state: Literal["connecting", "open", "closed"] = "connecting"
        self.control_on_frame: Callable[[WrapperFrame], None] | None = None
        self.control_on_closed: Callable[[], None] | None = None
        self.control_reading = False
        """The control plane's reader still runs (it may outlive the wrapper's end)."""
        self._up: deque[bytes] = deque()
        self._down: deque[bytes] = deque()
        self._up_due = 0.0
        self._down_due = 0.0

    # -- sending ---------------------------------------------------------------------------------

    def send_up(self, frames: list[Frame]) -> bool:
        """Wrapper → control plane. False when the connection is not open."""
        if self.state != "open":
            return False
        for frame in frames:
            if self.state != "open":
                return False
            if self.channel.lose():
                self.channel.note("ingest.lost", f"conn#{self.number} {type(frame).__name__}")
                self.channel.reset(self)
                return False
            self._up.append(encode(frame))
            if self.channel.state != "partitioned":
                self._schedule_up()
        return True

    def send_down(self, frames: list[Frame]) -> bool:
        """Control plane → wrapper."""
        if self.state != "open":
            return False
        for frame in frames:
            if self.state != "open":
                return False
            if self.channel.lose():
                self.channel.note("ingest.lost", f"conn#{self.number} {type(frame).__name__}")
                self.channel.reset(self)
                return False
            self._down.append(encode(frame))
            if self.channel.state != "partitioned":
                self._schedule_down()
        return True

    def _schedule_up(self) -> None:
        due = max(self._up_due, self.channel.now() + self.channel.delay())
        self._up_due = due
        self.channel.scheduler.call_at(due, self._deliver_up)

    def _schedule_down(self) -> None:
        due = max(self._down_due, self.channel.now() + self.channel.delay())
        self._down_due = due
        self.wrapper.call_at(due, self._deliver_down)

    def _deliver_up(self) -> None:
        if not self._up or not self.control_reading or self.channel.state == "partitioned":
            return
        data = self._up.popleft()
        if self.control_on_frame is not None:
            self.control_on_frame(decode_from_wrapper(data))

    def _deliver_down(self) -> None:
        if not self._down or self.state != "open" or self.channel.state == "partitioned":
            return
        self.end.on_frame(decode_from_control(self._down.popleft()))

    def resume(self) -> None:
        """The path healed: what was held up moves again, in order."""
        for _ in self._up:
            self._schedule_up()
        if self.state == "open":
            for _ in self._down:
                self._schedule_down()

    # -- closing ---------------------------------------------------------------------------------

    def close_by_wrapper(self) -> None:
        """``CloseSocket``: frames already written still reach the control plane, then EOF."""
        if self.state == "closed":
            return
        self.state = "closed"
        self._down.clear()
        if self.channel.state != "up":
            self._up.clear()  # nothing gets through a broken path, not even the close
        self.channel.scheduler.call_at(
            max(self._up_due, self.channel.now()) + self.channel.delay(), self._control_closed
        )

    def close_by_control(self) -> None:
        """The control plane closes its end (after a ``shutdown``): the wrapper sees EOF after
        the frames already on their way."""
        if self.state == "closed":
            return
        self.state = "closed"
        self.control_reading = False
        pending = list(self._down)
        self._down.clear()

        def arrive() -> None:
            for data in pending:
                self.end.on_frame(decode_from_control(data))
            self.end.on_closed()

        self.wrapper.call_at(max(self._down_due, self.channel.now()) + self.channel.delay(), arrive)

    def _control_closed(self) -> None:
        if not self.control_reading:
            return
        while self._up and self.control_on_frame is not None:
            self.control_on_frame(decode_from_wrapper(self._up.popleft()))
        self.control_reading = False
        if self.control_on_closed is not None:
            self.control_on_closed()


class IngestChannel:
    """The path between one session's wrapper(s) and the control plane."""

    def __init__(
        self,
        scheduler: Scheduler,
        rng: random.Random,
        config: WorldConfig,
        accept: Callable[[Connection], None],
        note: Note,
    ) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.config = config
        self.accept = accept
        self.note = note
        self.state: PathState = "up"
        self.connections: list[Connection] = []
        self._numbers = itertools.count(1)
        self._epoch = 0
        """Bumped by every drop/partition/heal: a stale "heal at" timer does nothing."""
        self._stale: list[Connection] = []
        """Connections the wrapper gave up on whose server end still reads (see reorder)."""

    def now(self) -> float:
        return self.scheduler.now()

    def delay(self) -> float:
        jitter = self.rng.uniform(0.0, self.config.jitter) if self.config.jitter else 0.0
        return self.config.latency + jitter

    def lose(self) -> bool:
        return self.config.loss > 0 and self.rng.random() < self.config.loss

    # -- the wrapper's side ----------------------------------------------------------------------

    def connect(self, wrapper: SimProcess, end: WrapperEnd) -> Connection:
        conn = Connection(self, next(self._numbers), wrapper, end)

        def at_server() -> None:
            if conn.state != "connecting":
                return  # the wrapper gave up (connect timeout) before the handshake got here
            if self.state == "down":
                conn.state = "closed"
                wrapper.call_later(self.delay(), end.on_failed)
                return
            if self.state == "partitioned":
                return  # SYN lost: the wrapper's own connect timeout decides
            conn.state = "open"
            conn.control_reading = True
            self.connections.append(conn)
            self.accept(conn)
            wrapper.call_later(
                self.delay(), lambda: end.on_open() if conn.state == "open" else None
            )

        self.scheduler.call_later(self.delay(), at_server)
        return conn

    def close(self, conn: Connection) -> None:
        if conn.state == "connecting":
            conn.state = "closed"
            return
        conn.close_by_wrapper()
        self._forget(conn)

    # -- faults ----------------------------------------------------------------------------------

    def reset(self, conn: Connection) -> None:
        """The connection breaks: both ends see it close; frames in flight are lost."""
        if conn.state == "closed":
            return
        conn.state = "closed"
        conn._up.clear()
        conn._down.clear()
        self._forget(conn)
        conn.wrapper.call_later(self.delay(), conn.end.on_closed)

        def control_closed() -> None:
            if conn.control_reading:
                conn.control_reading = False
                if conn.control_on_closed is not None:
                    conn.control_on_closed()

        self.scheduler.call_later(self.delay(), control_closed)

    def drop(self, duration: float) -> None:
        self._epoch += 1
        self.state = "down"
        for conn in list(self.connections):
            self.reset(conn)
        self._heal_after(duration)

    def partition(self, duration: float) -> None:
        self._epoch += 1
        self.state = "partitioned"
        epoch = self._epoch
        self.scheduler.call_later(self.config.keepalive, lambda: self._keepalive(epoch))
        self._heal_after(duration)

    def _keepalive(self, epoch: int) -> None:
        """Still partitioned when the keepalive gives up: the wrapper's end closes."""
        if epoch != self._epoch or self.state != "partitioned":
            return
        for conn in list(self.connections):
            late = self.config.reorder > 0 and self.rng.random() < self.config.reorder
            conn.state = "closed"
            conn._down.clear()
            self._forget(conn)
            conn.wrapper.deliver(conn.end.on_closed)
            if late and conn._up:
                # delivered to the still-reading server end when the path heals
                self.note("ingest.late", f"conn#{conn.number} keeps {len(conn._up)} frames")
            else:
                conn._up.clear()
                conn.control_reading = False
                if conn.control_on_closed is not None:
                    conn.control_on_closed()
            self._stale.append(conn)

    def _heal_after(self, duration: float) -> None:
        epoch = self._epoch
        self.scheduler.call_later(duration, lambda: self.heal() if epoch == self._epoch else None)

    def heal(self) -> None:
        if self.state == "up":
            return
        was = self.state
        self._epoch += 1
        self.state = "up"
        self.note("ingest.healed", f"after {was}")
        for conn in list(self.connections):
            conn.resume()
        for conn in self._stale:
            if conn.control_reading:
                conn.resume()
                self.scheduler.call_later(
                    self.config.keepalive,
                    lambda c=conn: c._control_closed(),  # type: ignore[misc]
                )
        self._stale.clear()

    def _forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
