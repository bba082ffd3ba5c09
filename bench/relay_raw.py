"""The relay bench's baseline: Kilo's SSE stream to the ingest WebSocket with no machines at all.

``python -m bench.relay_raw KILO_URL PASSWORD INGEST_URL TOKEN``: the same libraries and the same
wire format as ``fsm-agent serve`` (anyio on asyncio, httpx streaming ``GET /event`` with basic
auth, ``aiter_lines``, msgspec, ``EventFrame`` JSON text messages on a ``websockets`` client with
its default permessage-deflate, ``hello`` → ``welcome`` first), and nothing else: no outbox, no
transitions, no timers, no logging. One loop reads an event and awaits its send; acks are read and
discarded by a second task.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect

from fsm.wire.protocol import EventFrame, Hello, encode


async def drain_acks(ws: ClientConnection) -> None:
    async for _message in ws:
        pass


async def relay(kilo_url: str, password: str, ingest_url: str, token: str) -> None:
    async with connect(
        ingest_url,
        additional_headers={"Authorization": f"Bearer {token}"},
        proxy=None,
        max_size=16 * 1024 * 1024,
    ) as ws:
        hello = Hello(
            wrapper_id="wrp_raw",
            version="raw",
            protocol=1,
            agent_session="agent-1",
            user_id="user-1",
            session_id="sess-1",
        )
        await ws.send(encode(hello).decode())
        await ws.recv()  # welcome
        async with anyio.create_task_group() as tg:
            tg.start_soon(drain_acks, ws)
            seq = 0
            async with (
                httpx.AsyncClient(base_url=kilo_url, auth=("kilo", password)) as http,
                http.stream("GET", "/event", timeout=httpx.Timeout(10.0, read=None)) as response,
            ):
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event: dict[str, Any] = msgspec.json.decode(line[5:].lstrip())
                    seq += 1
                    frame = EventFrame(seq=seq, generation=1, event=event)
                    await ws.send(encode(frame).decode())
            tg.cancel_scope.cancel()


def main() -> None:
    kilo_url, password, ingest_url, token = sys.argv[1:5]
    anyio.run(relay, kilo_url, password, ingest_url, token)


if __name__ == "__main__":
    main()
