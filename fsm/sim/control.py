"""One session on the simulated control plane: ``SessionCore`` with the control host's habits.

Theory of operation
-------------------
This is ``fsm.control.host``'s handling of one session with its I/O replaced: ``StartWrapper``
stops a wrapper that still runs before starting the new one, and a start the machine no longer
wants is skipped and counted as if its wrapper had come and gone; the *first* start announces the
scenario's wrapper version (so a mismatch can be simulated) and later ones the pinned version;
wrapper exits are accounted so that an old wrapper's exit is never taken for the new one's death;
a command that cannot be sent now goes to ``SessionCore.hold`` and whatever follows a ``welcome``
comes from ``SessionCore.commands_after_welcome`` — the host's rule, by the same code (a prompt is
never held: the next welcome derives it from its message's state); a newer ingest
connection replaces the older one for sending, while the older one's reader keeps feeding frames
to the core (as the host's socket task does until it notices the close).

Everything the core logs is written to the store as it happens; the simulator has no crash of the
control plane, so the host's flush batching would only blur the timeline.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import msgspec

from adapters.store.sqlite import EventRow, MessageRow, SessionRow, hash_token
from fsm.control.core import LogEntry, SessionCore
from fsm.engine.effects import Effect, StartWrapper, StopWrapper
from fsm.engine.machine import Record
from fsm.machines.timers import TimerValues
from fsm.sim.channel import Connection
from fsm.sim.process import Scheduler
from fsm.sim.runtime import FakeRuntime
from fsm.sim.store import MemoryStore
from fsm.wire.protocol import Ack, Frame, SeqFrame, Shutdown, Welcome, WrapperFrame
from fsm.wire.transmit import Transmit


class SimControl:
    def __init__(
        self,
        *,
        scheduler: Scheduler,
        values: TimerValues,
        session_id: str,
        runtime: FakeRuntime,
        store: MemoryStore,
        first_version: str,
        seed: str,
        on_record: Callable[[Record], None],
        on_log: Callable[[str, LogEntry], None],
        on_frame: Callable[[str, WrapperFrame, int, str | None], None],
    ) -> None:
        self.session_id = session_id
        self.values = values
        self.runtime = runtime
        self.store = store
        self.first_version = first_version
        self._on_log_hook = on_log
        self._on_frame_hook = on_frame
        self.conn: Connection | None = None
        self.starts_requested = 0
        self.exits_seen = 0
        self.scheduler = scheduler
        store.create_session(
            SessionRow(
                id=session_id,
                token_hash=hash_token("sim"),
                agent_session="",
                user_id="user",
                workdir="/sim",
                state="starting",
                created_at=scheduler.now(),
                updated_at=scheduler.now(),
            )
        )
        self.core = SessionCore(
            scheduler,
            values,
            session_id,
            self._on_action,
            rng=random.Random(f"{seed}/{session_id}/control"),
            on_record=on_record,
            on_log=self._on_log,
        )

    # -- the ingest server -------------------------------------------------------------------------

    def accept(self, conn: Connection) -> None:
        self.conn = conn  # a newer connection replaces the older one for sending
        conn.control_on_frame = self.receive
        conn.control_on_closed = lambda: self._closed(conn)

    def receive(self, frame: WrapperFrame) -> None:
        """A frame read from any ingest connection of this session (even a replaced one)."""
        before = self.core.last_seq
        wrapper_before = self.core.wrapper_id
        self.core.frame(frame)
        if isinstance(frame, SeqFrame) and self.core.last_seq != before:
            self._on_frame_hook(self.session_id, frame, before, wrapper_before)

    def _closed(self, conn: Connection) -> None:
        if self.conn is conn:
            self.conn = None

    def _send(self, frames: list[Frame]) -> None:
        if self.conn is not None:
            self.conn.send_down(frames)

    # -- effects -----------------------------------------------------------------------------------

    def _on_action(self, effect: Effect) -> None:
        if isinstance(effect, Transmit):
            for frame in effect.frames:
                if isinstance(frame, Ack | Shutdown):
                    self._send([frame])
                    if isinstance(frame, Shutdown) and self.conn is not None:
                        conn, self.conn = self.conn, None
                        conn.close_by_control()
                elif isinstance(frame, Welcome):
                    self._send([frame])
                    if self.conn is not None:
                        self._send(self.core.commands_after_welcome())
                elif self.conn is not None:
                    self._send([frame])
                else:
                    self.core.hold(frame)
        elif isinstance(effect, StartWrapper):
            version = self.first_version if effect.attempt == 1 else None
            self.starts_requested += 1
            self._start_wrapper(version)
        elif isinstance(effect, StopWrapper):
            self._stop_wrapper()

    def _start_wrapper(self, version: str | None) -> None:
        def start() -> None:
            if self.core.state != "starting":
                # The machine moved on while the old wrapper was being stopped: this start is
                # void, and accounted for as if its wrapper had come and gone.
                self.exits_seen += 1
                return
            self.runtime.start(self.session_id, version)

        if self.runtime.running(self.session_id):
            grace = self.values["wrapper_stop_grace"]
            self.scheduler.call_later(
                0.0, lambda: self.runtime.stop(self.session_id, grace, lambda _c: start())
            )
        else:
            self.scheduler.call_later(0.0, start)

    def _stop_wrapper(self) -> None:
        def stop() -> None:
            if self.runtime.running(self.session_id):
                self.runtime.stop(self.session_id, self.values["wrapper_stop_grace"])
            elif self.core.state == "stopping":
                self.core.wrapper_exited(None)

        self.scheduler.call_later(0.0, stop)

    def wrapper_exited(self, code: int | None) -> None:
        self.exits_seen += 1
        if self.exits_seen < self.starts_requested:
            return  # a replaced wrapper's exit, not the current one's
        self.exits_seen = self.starts_requested
        self.core.wrapper_exited(code)

    # -- the store ---------------------------------------------------------------------------------

    def _on_log(self, entry: LogEntry) -> None:
        sid = self.session_id
        self.store.append_events(
            sid, [EventRow(entry.id, entry.at, entry.kind, msgspec.json.encode(entry.data))]
        )
        if entry.kind == "message":
            m = self.core.messages[str(entry.data["id"])]
            self.store.save_message(
                sid,
                MessageRow.of(m),
            )
        elif entry.kind == "transition":
            self.store.save_session(
                sid,
                state=self.core.state,
                snapshot=b"",
                wrapper_id=self.core.wrapper_id,
                last_seq=self.core.last_seq,
                updated_at=entry.at,
            )
        self._on_log_hook(sid, entry)
