"""The wrapper's end of the ingest channel: one WebSocket connection, its reader and its writer.

Reconnecting, backoff, heartbeats and resending are the ``ingest_link`` machine's and the outbox's
business; this adapter only connects once, reports what happened (open, failed, closed, a frame
arrived) and sends frames in order. A connection never outlives the task that runs it.

Sending is synchronous: ``send`` frames each frame it is given with the connection's sans-I/O
protocol (``ClientConnection.protocol``, websockets >= 13) and hands the bytes to the transport in
one write. A burst of Kilo events read together therefore costs one TCP push and one wake-up of
the control plane, and no task switch: per-message ``await send()`` and a writer task behind a
queue cost more than the relay itself at Kilo's event rates. The transport buffers what the socket
does not take at once; that is bounded by the outbox, whose window the host waits on before
reading more from Kilo (``WrapperCore.window_full``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidState, InvalidURI
from websockets.protocol import SEND_EOF

from fsm.wire.protocol import ControlFrame, Frame, decode_from_control, encode

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
        self._ws: ClientConnection | None = None
        self._scope: anyio.CancelScope | None = None
        self.bad_frames = 0

    def send(self, frames: list[Frame]) -> bool:
        """Write frames, in order; False when the connection is not (or no longer) open."""
        ws = self._ws
        if ws is None or ws.transport.is_closing():
            return False
        protocol = ws.protocol
        try:
            for frame in frames:
                protocol.send_text(encode(frame))
        except InvalidState:  # closing: what was queued before goes out, the rest cannot
            self._write(ws)
            return False
        self._write(ws)
        return True

    @staticmethod
    def _write(ws: ClientConnection) -> None:
        chunks = ws.protocol.data_to_send()
        if SEND_EOF in chunks:  # only while closing (websockets flushes its own writes at once)
            for chunk in chunks:
                if chunk:
                    ws.transport.write(chunk)
                elif ws.transport.can_write_eof():
                    ws.transport.write_eof()
        elif chunks:
            ws.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

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
                try:
                    async for message in ws:
                        self._dispatch(message)
                except ConnectionClosed as exc:
                    reason = f"closed: {exc}"
            finally:
                self._ws = None
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(1):
                        await ws.close()
                self._on_closed(reason if not scope.cancel_called else "closed by the wrapper")

    def _dispatch(self, message: str | bytes) -> None:
        try:
            frame = decode_from_control(message)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.bad_frames += 1
            log.warning("ignoring a malformed frame from the control plane: %s", exc)
            return
        self._on_frame(frame)
