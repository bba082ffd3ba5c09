"""Kilo's event stream read on a plain socket gives exactly what the httpx path gives: the same
events from the same bytes however they are split, Kilo's errors as ``AgentError``, and a stream
cut in the middle of a chunk as an error, not a silent end."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from adapters.kilo.client import AgentClient, AgentError, parse_sse, parse_sse_bytes
from adapters.kilo.event_stream import StreamBroken
from tests.paths import KILO_CAPTURES

pytestmark = pytest.mark.anyio
CAPTURES = KILO_CAPTURES


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def captured_events() -> list[dict[str, Any]]:
    events = []
    for capture in sorted(CAPTURES.glob("*.event.jsonl")):
        for line in capture.read_text().splitlines():
            data = json.loads(line).get("data")
            if isinstance(data, dict):
                events.append(data)
    return events


def sse_body(events: list[dict[str, Any]], newline: str = "\n") -> bytes:
    return "".join(f"data: {json.dumps(e)}{newline}{newline}" for e in events).encode()


def chunked(body: bytes, rng: random.Random) -> bytes:
    out, i = [], 0
    while i < len(body):
        n = rng.choice([1, 5, 60, 400, 5000])
        out.append(b"%x\r\n%s\r\n" % (len(body[i : i + n]), body[i : i + n]))
        i += n
    return b"".join(out)


async def serve_once(
    response: bytes, rng: random.Random
) -> tuple[str, Callable[[], Any], list[bytes]]:
    """A listener that answers one request with ``response``, written in random pieces."""
    requests: list[bytes] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(client: SocketStream) -> None:
        async with client:
            requests.append(await client.receive())
            i = 0
            while i < len(response):
                n = rng.choice([1, 7, 100, 3000, 70000])
                await client.send(response[i : i + n])
                i += n

    return f"http://127.0.0.1:{port}", lambda: listener.serve(handle), requests


async def read_all(client: AgentClient) -> list[dict[str, Any]]:
    async with client.subscribe_events() as events:
        return [event async for event in events]


@pytest.mark.parametrize("seed", range(6))
async def test_chunked_stream_gives_every_event_however_it_is_split(seed: int) -> None:
    rng = random.Random(seed)
    events = captured_events()
    body = sse_body(events, rng.choice(["\n", "\r\n"]))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    head += b"transfer-encoding: chunked\r\n\r\n"
    url, serve, requests = await serve_once(head + chunked(body, rng) + b"0\r\n\r\n", rng)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        got = await read_all(AgentClient(url, "secret"))
        tg.cancel_scope.cancel()
    assert got == events
    assert b"GET /event HTTP/1.1" in requests[0]
    assert b"Authorization: Basic a2lsbzpzZWNyZXQ=" in requests[0]  # kilo:secret


async def lines(body: bytes) -> AsyncIterator[str]:
    for line in body.decode().splitlines():
        yield line


async def test_bytes_parser_matches_the_line_parser() -> None:
    body = sse_body(captured_events()) + b": comment\n\ndata: not json\n\ndata: [1]\n\n"

    async def once() -> AsyncIterator[bytes]:
        yield body

    by_lines = [e async for e in parse_sse(lines(body))]
    by_bytes = [e async for e in parse_sse_bytes(once())]
    assert by_bytes == by_lines


@pytest.mark.parametrize(
    "framing",
    ["content-length", "close"],
)
async def test_unchunked_bodies_are_read_too(framing: str) -> None:
    events = captured_events()[:20]
    body = sse_body(events)
    length = f"content-length: {len(body)}\r\n" if framing == "content-length" else ""
    head = f"HTTP/1.1 200 OK\r\n{length}\r\n".encode()
    url, serve, _ = await serve_once(head + body, random.Random(1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        got = await read_all(AgentClient(url, None))
        tg.cancel_scope.cancel()
    assert got == events


async def test_an_error_status_raises_kilo_error_with_the_body() -> None:
    body = b'{"name":"UnauthorizedError"}'
    response = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    url, serve, _ = await serve_once(response, random.Random(2))
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with pytest.raises(AgentError) as caught:
            await read_all(AgentClient(url, "wrong"))
        tg.cancel_scope.cancel()
    assert caught.value.status == 401 and "UnauthorizedError" in caught.value.body


async def test_a_stream_cut_inside_a_chunk_is_an_error() -> None:
    events = captured_events()[:5]
    whole = chunked(sse_body(events), random.Random(3))
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    url, serve, _ = await serve_once(head + whole[: len(whole) - 7], random.Random(3))
    got: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with pytest.raises(StreamBroken):
            async with AgentClient(url, None).subscribe_events() as stream:
                async for event in stream:
                    got.append(event)
        tg.cancel_scope.cancel()
    assert got == events[: len(got)]  # what arrived whole is delivered, in order
