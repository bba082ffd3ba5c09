"""``reconnecting_events`` against a stand-in agent on loopback that drops its stream.

The stand-in speaks ``GET /event`` as Kilo and OpenCode do (chunked SSE, one chunk per event) and
follows a script per connection: send some events then cut the connection in the middle of a
chunk (a SIGKILLed agent's bare FIN), refuse before the response head, answer 401/503, or send and
stay open. The backoff runs on 10 ms delays (the base is configuration), and every delay the
client waited is recorded through the injected ``sleep``, so the test asserts the schedule itself.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from adapters.kilo.client import AgentClient, AgentError
from adapters.kilo.reconnect import Backoff, StreamGaveUp, reconnecting_events

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _event(kind: str, **props: Any) -> dict[str, Any]:
    return {"type": kind, "properties": props}


def _chunk(event: dict[str, Any]) -> bytes:
    data = f"data: {json.dumps(event)}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@dataclass
class Connection:
    """One connection's script: ``events`` then ``end`` (drop / hold / refuse / a status)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    end: str = "drop"
    status: int = 200


@dataclass
class StandIn:
    script: list[Connection]
    url: str = ""
    served: int = 0

    async def handle(self, stream: SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            plan = self.script[min(self.served, len(self.script) - 1)]
            self.served += 1
            if plan.end == "refuse":
                return  # closed before the response head
            if plan.status != 200:
                body = b'{"error": "nope"}'
                await stream.send(
                    f"HTTP/1.1 {plan.status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                return
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for event in [_event("server.connected"), *plan.events]:
                await stream.send(_chunk(event))
            if plan.end == "drop":
                await stream.send(b'40\r\ndata: {"type": "cut')  # half a chunk, then FIN
                return
            await anyio.sleep_forever()


@asynccontextmanager
async def standing_in(script: list[Connection]) -> AsyncIterator[StandIn]:
    stand_in = StandIn(script)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # type: ignore[attr-defined]
    stand_in.url = f"http://127.0.0.1:{port}"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, stand_in.handle)
        yield stand_in
        tg.cancel_scope.cancel()


FAST = Backoff(initial=0.01, maximum=0.04, factor=2.0, jitter=0.5, attempts=3)


async def _read(
    client: AgentClient, backoff: Backoff, want: int, waited: list[float]
) -> list[dict[str, Any]]:
    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        await anyio.sleep(seconds)

    got: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        stream = reconnecting_events(client, backoff, rng=random.Random(7), sleep=sleep)
        async for event in stream:
            got.append(event)
            if len(got) == want:
                break
        await stream.aclose()  # type: ignore[attr-defined]
    return got


async def test_a_stream_dropped_twice_is_reopened_with_growing_jittered_delays() -> None:
    script = [
        Connection([_event("a", n=1)], "drop"),
        Connection(end="refuse"),  # the agent not back yet: a second consecutive failure
        Connection([_event("a", n=2)], "drop"),
        Connection([_event("a", n=3)], "hold"),
    ]
    waited: list[float] = []
    async with standing_in(script) as agent:
        client = AgentClient(agent.url, "pw")
        try:
            got = await _read(client, FAST, 6, waited)
        finally:
            await client.aclose()
    assert [e["type"] for e in got] == ["server.connected", "a"] * 3
    assert [e["properties"]["n"] for e in got if e["type"] == "a"] == [1, 2, 3]
    assert agent.served == 4
    # After the first drop: failure 1; the refusal: failure 2 (twice the bound); the second
    # drop follows a connection that delivered events, so the count started again.
    bounds = [FAST.bound(1), FAST.bound(2), FAST.bound(1)]
    assert bounds == [0.01, 0.02, 0.01]
    assert len(waited) == 3
    for delay, top in zip(waited, bounds, strict=True):
        assert top * (1 - FAST.jitter) <= delay <= top
    assert len(set(waited)) == 3  # jittered: no two the same


async def test_consecutive_failures_past_the_attempts_give_up_naming_the_last() -> None:
    waited: list[float] = []
    async with standing_in([Connection(end="refuse")]) as agent:
        client = AgentClient(agent.url, "pw")
        try:
            with pytest.raises(StreamGaveUp, match="3 reconnects failed, last: StreamBroken"):
                await _read(client, FAST, 1, waited)
        finally:
            await client.aclose()
    assert agent.served == 4 and len(waited) == 3
    assert waited[-1] <= FAST.maximum  # capped: 0.01, 0.02, 0.04 at most


async def test_a_4xx_is_not_retried_a_5xx_is() -> None:
    waited: list[float] = []
    async with standing_in([Connection(status=401)]) as agent:
        client = AgentClient(agent.url, "wrong")
        try:
            with pytest.raises(AgentError) as refused:
                await _read(client, FAST, 1, waited)
        finally:
            await client.aclose()
    assert refused.value.status == 401 and agent.served == 1 and waited == []
    script = [Connection(status=503), Connection([_event("a", n=1)], "hold")]
    async with standing_in(script) as agent:
        client = AgentClient(agent.url, "pw")
        try:
            got = await _read(client, FAST, 2, waited)
        finally:
            await client.aclose()
    assert [e["type"] for e in got] == ["server.connected", "a"] and len(waited) == 1


def test_a_backoff_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=2.0, maximum=1.0)
    with pytest.raises(ValueError, match="attempts"):
        Backoff(attempts=0)
    assert Backoff(initial=1, maximum=5, factor=3).bound(3) == 5  # 9 capped
