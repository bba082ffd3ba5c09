"""``GET /event`` on a plain socket: the body of Kilo's event stream, de-chunked, a read at a time.

httpx hands a streamed body over one HTTP chunk at a time, through half a dozen async generator
layers (h11, httpcore's pool and connection, httpx's transport, response and decoders), and Kilo
writes one chunk per event: at thousands of events a second that plumbing costs more than all the
wrapper's own work on an event. This reader does only what the event stream needs: one HTTP/1.1
request (basic auth), the status line and headers, then the body — chunked as Kilo sends it, or
delimited by ``Content-Length`` or by the end of the connection — returned a socket read at a time,
however many events it holds. ``parse_sse_bytes`` splits it into events.

Errors keep httpx's meaning for the caller: a status >= 400 raises ``AgentError`` with Kilo's body;
a connection that ends in the middle of a chunk (a SIGKILLed Kilo's bare FIN) raises
``StreamBroken``; a clean end of the body just ends the iteration. Only ``http://`` URLs (the
wrapper's own Kilo on loopback); anything else goes through httpx.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream

READ_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024
MAX_ERROR_BODY = 64 * 1024


class StreamBroken(Exception):
    """The connection ended before the body did (or the body was not valid HTTP/1.1)."""


def supported(url: str) -> bool:
    return urlsplit(url).scheme == "http"


@asynccontextmanager
async def open_event_stream(
    url: str, path: str, auth: tuple[str, str] | None, *, connect_timeout: float = 10.0
) -> AsyncIterator[tuple[int, bytes, AsyncIterator[bytes]]]:
    """Yields ``(status, error_body, body_chunks)``; ``error_body`` is read only for >= 400."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [
        f"GET {parts.path.rstrip('/')}{path} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    with anyio.fail_after(connect_timeout):
        stream = await anyio.connect_tcp(host, port)
    async with stream:
        with anyio.fail_after(connect_timeout):
            await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
            status, headers, rest = await _read_head(stream)
        body = _body(stream, headers, rest)
        if status >= 400:
            error = b""
            with anyio.move_on_after(connect_timeout):
                async for chunk in body:
                    error += chunk
                    if len(error) >= MAX_ERROR_BODY:
                        break
            yield status, error, _nothing()
        else:
            yield status, b"", body


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


async def _read_head(stream: ByteStream) -> tuple[int, dict[str, str], bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            raise StreamBroken("response head too large")
        try:
            buffer += await stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise StreamBroken("connection closed before the response head") from exc
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise StreamBroken(f"bad status line {status_line!r}") from exc
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


async def _receive(stream: ByteStream) -> bytes:
    """The next bytes, or b"" at the end of the connection."""
    try:
        return await stream.receive(READ_SIZE)
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return b""


async def _body(stream: ByteStream, headers: dict[str, str], rest: bytes) -> AsyncIterator[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        async for data in _chunked(stream, rest):
            yield data
        return
    length = headers.get("content-length")
    left = int(length) if length is not None and length.isdigit() else -1
    data = rest
    while True:
        if left >= 0:
            data = data[:left]
            left -= len(data)
        if data:
            yield data
        if left == 0:
            return
        data = await _receive(stream)
        if not data:
            if left > 0:
                raise StreamBroken("connection closed before the end of the body")
            return


async def _chunked(stream: ByteStream, buffer: bytes) -> AsyncIterator[bytes]:
    """De-chunk: every complete chunk in the buffer at once, one yield per socket read."""
    pos = 0
    while True:
        out: list[bytes] = []
        while True:
            eol = buffer.find(b"\r\n", pos)
            if eol < 0:
                break
            size_text = buffer[pos:eol].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise StreamBroken(f"bad chunk size {size_text[:20]!r}") from exc
            if size == 0:
                if out:
                    yield b"".join(out)
                return  # the last chunk: a clean end (trailers, if any, are not ours)
            end = eol + 2 + size
            if len(buffer) < end + 2:
                break
            out.append(buffer[eol + 2 : end])
            pos = end + 2
        if out:
            yield out[0] if len(out) == 1 else b"".join(out)
        buffer = buffer[pos:]
        pos = 0
        data = await _receive(stream)
        if not data:
            raise StreamBroken("connection closed in the middle of the event stream")
        buffer += data
