"""A test-owned ingest endpoint: the control plane's side of the protocol, and nothing more.

It answers ``hello`` with ``welcome`` (or ``shutdown`` when told to), acknowledges every
sequenced frame, keeps one copy of each (by seq) plus a count of duplicates, and lets a test send
commands, drop the connection, or take the whole endpoint down and bring it back on the same
port. It runs in a thread with its own event loop so the wrapper under test (a real process) and
the test's own code never share a loop with it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from fsm.wire.protocol import (
    Ack,
    Command,
    EventFrame,
    Hello,
    LifecycleFrame,
    OutcomeFrame,
    SeqFrame,
    Shutdown,
    Welcome,
    WrapperFrame,
    decode_from_wrapper,
    encode,
)


class FakeIngest:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.port = 0
        self.hellos: list[Hello] = []
        self.frames: dict[int, WrapperFrame] = {}
        self.duplicates = 0
        self.heartbeats = 0
        self.connections = 0
        self.refused = 0
        self.shutdown_reason: str | None = None
        self._conn: ServerConnection | None = None
        self._server: Server | None = None
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    # -- lifetime (called from the test thread) -----------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ingest"

    def start(self) -> None:
        self._run(self._start())

    def stop_listening(self) -> None:
        """Close the live connection and stop accepting (the control plane is down)."""
        self._run(self._stop())

    def drop_connection(self) -> None:
        self._run(self._drop())

    def close(self) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def send(self, command: Command) -> None:
        self._run(self._send(command))

    # -- views --------------------------------------------------------------------------------

    def ordered(self) -> list[WrapperFrame]:
        with self._lock:
            return [self.frames[k] for k in sorted(self.frames)]

    def events(self) -> list[dict[str, Any]]:
        return [f.event for f in self.ordered() if isinstance(f, EventFrame)]

    def event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.events()]

    def outcomes(self) -> list[OutcomeFrame]:
        return [f for f in self.ordered() if isinstance(f, OutcomeFrame)]

    def lifecycle(self, machine: str) -> list[str]:
        return [
            f.state
            for f in self.ordered()
            if isinstance(f, LifecycleFrame) and f.machine == machine
        ]

    def wait_for(
        self, predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; events: {self.event_types()[-30:]}; "
            f"outcomes: {self.outcomes()}"
        )

    # -- the loop side -------------------------------------------------------------------------

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        self._server = await serve(self._handle, "127.0.0.1", self.port, max_size=16 * 2**20)
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        await self._drop()

    async def _drop(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def _send(self, command: Command) -> None:
        if self._conn is None:
            raise RuntimeError("no wrapper is connected")
        await self._conn.send(encode(command).decode())

    async def _handle(self, ws: ServerConnection) -> None:
        header = ws.request.headers.get("Authorization", "") if ws.request else ""
        if header != f"Bearer {self.token}":
            self.refused += 1
            await ws.close(code=4401, reason="bad token")
            return
        self.connections += 1
        self._conn = ws
        try:
            async for message in ws:
                frame = decode_from_wrapper(message)
                if isinstance(frame, Hello):
                    self.hellos.append(frame)
                    if self.shutdown_reason is not None:
                        await ws.send(encode(Shutdown(reason=self.shutdown_reason)).decode())
                        continue
                    with self._lock:
                        acked = max(self.frames, default=0)
                    await ws.send(encode(Welcome(acked=acked)).decode())
                elif isinstance(frame, SeqFrame):
                    with self._lock:
                        if frame.seq in self.frames:
                            self.duplicates += 1
                        else:
                            self.frames[frame.seq] = frame
                    await ws.send(encode(Ack(seq=frame.seq)).decode())
                else:
                    self.heartbeats += 1
        except Exception:
            pass
        finally:
            if self._conn is ws:
                self._conn = None
