"""The relay bench's control plane: a WebSocket ingest endpoint that measures what reaches it.

Runs as its own process (``python -m bench.relay_sink``) so that neither the relay under test nor
the bench's own bookkeeping shares its interpreter. It speaks the control plane's side of the
protocol as far as a relay needs it: ``hello`` → ``welcome(acked)``, and cumulative ``ack``s of
the highest seq seen on the connection, sent after every ``ACK_EVERY`` frames and on an
``ACK_PERIOD`` tick (the real control plane holds its acks until its 50 ms SQLite flush; acking
sooner keeps the control plane's own storage out of the measurement, and the same policy applies
to both relays). permessage-deflate is negotiated with uvicorn's parameters, as the real control
plane does, so the relay compresses each frame as it would in production.

For every event carrying ``properties.bench = {"n", "t"}`` (written by ``bench/fake_kilo.py``)
it records ``time.monotonic()`` on arrival minus ``t``: the latency the whole path added.

It is driven over stdin/stdout, one JSON object a line: it prints ``{"port": P}`` once, then
answers each command line: ``{"cmd": "reset"}``, ``{"cmd": "wait", "n": N, "timeout": S}``
(returns once ``N`` bench events arrived, or at the timeout) and ``{"cmd": "stats"}``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import sys
import time
import zlib
from typing import Any

import msgspec
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension
from websockets.speedups import apply_mask

ACK_EVERY = 100
ACK_PERIOD = 0.005
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What uvicorn's websockets-sansio offers, so the relay compresses as it would in production.
DEFLATE = ServerPerMessageDeflateFactory(
    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5}
)


class BenchMark(msgspec.Struct):
    n: int
    t: float


class Props(msgspec.Struct):
    bench: BenchMark | None = None


class KiloEvent(msgspec.Struct):
    properties: Props | None = None


class Incoming(msgspec.Struct):
    """Just what the sink reads of a wrapper frame; msgspec skips the rest."""

    type: str
    seq: int = 0
    event: KiloEvent | None = None


_decode = msgspec.json.Decoder(Incoming).decode


class Sink:
    def __init__(self) -> None:
        self.by_type: dict[str, int] = {}
        self.latencies: list[float] = []
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.by_type.clear()
        self.latencies.clear()
        self.first_sent: float | None = None
        self.first_recv: float | None = None
        self.last_recv: float | None = None
        self.last_n = -1
        self.out_of_order = 0
        self.hellos = 0

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not ordered:
                return None
            return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]

        return {
            "frames": self.frames,
            "by_type": self.by_type,
            "events": len(self.latencies),
            "first_sent": self.first_sent,
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "p50": pct(50),
            "p99": pct(99),
            "max": ordered[-1] if ordered else None,
            "out_of_order": self.out_of_order,
            "hellos": self.hellos,
        }

    def on_frame(self, conn: SinkConnection, message: bytes, now: float) -> None:
        frame = _decode(message)
        self.frames += 1
        kind = frame.type
        self.by_type[kind] = self.by_type.get(kind, 0) + 1
        if kind == "hello":
            self.hellos += 1
            conn.send_text(b'{"type":"welcome","acked":%d}' % conn.highest)
            return
        if frame.seq:
            if frame.seq > conn.highest:
                conn.highest = frame.seq
            conn.unacked += 1
            if conn.unacked >= ACK_EVERY:
                conn.ack(conn.highest)
        event = frame.event
        if event is not None and event.properties is not None:
            mark = event.properties.bench
            if mark is not None:
                if self.first_sent is None:
                    self.first_sent = mark.t
                    self.first_recv = now
                if mark.n != self.last_n + 1 and self.latencies:
                    self.out_of_order += 1
                self.last_n = mark.n
                self.last_recv = now
                self.latencies.append(now - mark.t)

    async def wait(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.latencies) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


class SinkConnection(asyncio.Protocol):
    """A minimal RFC 6455 server end (with RFC 7692 inflate) costing a few µs per frame: the
    ``websockets`` server costs about as much per message as the relay under test, and on two
    cores the sink must not compete with it."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.handshaken = False
        self.inflate: Any = None
        self.fragments: list[bytes] = []
        self.fragment_compressed = False
        self.unacked = 0
        self.acked = 0
        self.highest = 0
        """Highest seq this connection delivered (each relay under test is a new wrapper)."""
        self.ticker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ticker is not None:
            self.ticker.cancel()

    def _write(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(head + payload)

    def send_text(self, payload: bytes) -> None:
        self._write(0x1, payload)  # uncompressed: RFC 7692 lets each message choose

    def ack(self, seq: int) -> None:
        self.acked = seq
        self.unacked = 0
        self.send_text(b'{"type":"ack","seq":%d}' % seq)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(ACK_PERIOD)
            if self.highest > self.acked:
                self.ack(self.highest)

    def _handshake(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
        headers = {}
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept = base64.b64encode(
            hashlib.sha1(headers["sec-websocket-key"].encode() + WS_GUID).digest()
        ).decode()
        reply = [
            "HTTP/1.1 101 Switching Protocols",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Accept: {accept}",
        ]
        for name, params in parse_extension(headers.get("sec-websocket-extensions", "")):
            if name == DEFLATE.name:
                try:
                    accepted, _ext = DEFLATE.process_request_params(params, [])
                except Exception:
                    continue
                reply.append(f"Sec-WebSocket-Extensions: {build_extension([(name, accepted)])}")
                self.inflate = zlib.decompressobj(wbits=-15)
                break
        assert self.transport is not None
        self.transport.write(("\r\n".join(reply) + "\r\n\r\n").encode())
        self.handshaken = True
        self.ticker = asyncio.ensure_future(self._tick())
        return True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshaken and not self._handshake():
            return
        now = time.monotonic()
        buf = self.buffer
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            at = pos + 2
            if n == 126:
                if size - at < 2:
                    break
                n = struct.unpack_from("!H", buf, at)[0]
                at += 2
            elif n == 127:
                if size - at < 8:
                    break
                n = struct.unpack_from("!Q", buf, at)[0]
                at += 8
            masked = b1 & 0x80
            if masked:
                if size - at < 4:
                    break
                mask = buf[at : at + 4]
                at += 4
            if size - at < n:
                break
            payload = buf[at : at + n]
            if masked:
                payload = apply_mask(payload, mask)
            pos = at + n
            self._frame(b0, payload, now)
        self.buffer = buf[pos:]

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode in (0x1, 0x2, 0x0):
            if opcode:
                self.fragment_compressed = bool(b0 & 0x40)
            self.fragments.append(payload)
            if not fin:
                return
            message = b"".join(self.fragments) if len(self.fragments) > 1 else self.fragments[0]
            self.fragments = []
            if self.fragment_compressed:
                message = self.inflate.decompress(message + b"\x00\x00\xff\xff")
            self.sink.on_frame(self, message, now)
        elif opcode == 0x9:
            self._write(0xA, payload)
        elif opcode == 0x8:
            self._write(0x8, payload[:2])
            if self.transport is not None:
                self.transport.close()


async def commands(sink: Sink) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        answer: dict[str, Any] = {"ok": True}
        if cmd["cmd"] == "reset":
            sink.reset()
        elif cmd["cmd"] == "wait":
            await sink.wait(int(cmd["n"]), float(cmd.get("timeout", 30)))
            answer = sink.stats()
        elif cmd["cmd"] == "stats":
            answer = sink.stats()
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


async def main() -> None:
    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkConnection(sink), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": port}) + "\n")
    sys.stdout.flush()
    await commands(sink)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
