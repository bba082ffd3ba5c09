"""The wrapper's end of the ingest channel: one WebSocket connection, its reader and its writer.

Reconnecting, backoff, heartbeats and resending are the ``ingest_link`` machine's and the outbox's
business; this adapter only connects once, reports what happened (open, failed, closed, a frame
arrived) and sends frames in order. A connection never outlives the task that runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from fsm.protocol import ControlFrame, Frame, decode_from_control, encode

log = logging.getLogger("fsm_agent.ingest")


class IngestConnection:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        on_open: Callable[[], None],
        on_failed: Callable[[str], None],
        on_closed: Callable[[str], None],
        on_frame: Callable[[ControlFrame], None],
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self._token = token
        self._on_open = on_open
        self._on_failed = on_failed
        self._on_closed = on_closed
        self._on_frame = on_frame
        self._connect_timeout = connect_timeout
        self._send: MemoryObjectSendStream[bytes]
        self._receive: MemoryObjectReceiveStream[bytes]
        self._send, self._receive = anyio.create_memory_object_stream[bytes](max_buffer_size=10_000)
        self._ws: ClientConnection | None = None
        self._scope: anyio.CancelScope | None = None
        self.bad_frames = 0

    def send(self, frames: list[Frame]) -> bool:
        """Queue frames for the writer; False when the connection is not (or no longer) open."""
        if self._ws is None:
            return False
        try:
            for frame in frames:
                self._send.send_nowait(encode(frame))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    def close(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Connect, then read and write until the socket closes or ``close()`` is called."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                ws = await connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self._token}"},
                    open_timeout=self._connect_timeout,
                    proxy=None,
                    max_size=16 * 1024 * 1024,
                )
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                self._on_failed(f"{type(exc).__name__}: {exc}")
                return
            self._ws = ws
            reason = "closed"
            try:
                self._on_open()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer, ws)
                    try:
                        async for message in ws:
                            self._dispatch(message)
                    except ConnectionClosed as exc:
                        reason = f"closed: {exc}"
                    tg.cancel_scope.cancel()
            finally:
                self._ws = None
                self._send.close()
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(1):
                        await ws.close()
                self._on_closed(reason if not scope.cancel_called else "closed by the wrapper")

    async def _writer(self, ws: ClientConnection) -> None:
        try:
            async for data in self._receive:
                await ws.send(data.decode())
        except ConnectionClosed:
            return

    def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = decode_from_control(message)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.bad_frames += 1
            log.warning("ignoring a malformed frame from the control plane: %s", exc)
            return
        self._on_frame(frame)
