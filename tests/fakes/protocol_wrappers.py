"""Many protocol-level wrappers and a TCP load balancer, on one asyncio loop in a thread.

For tests of the control plane where Kilo's behaviour is not the point (replica failover): each
``FakeWrapper`` speaks the ingest protocol as ``fsm-agent serve`` does — hello, welcome (resend
what is not acknowledged), a heartbeat every second, acks — and answers a prompt with a turn:
lifecycle ``running``, ``events`` event frames ``event_period`` apart (each carrying its index),
an ``outcome`` completed. It reconnects on any close, as the real wrapper's ingest link does.
``Balancer`` is the "one URL behind a TCP load balancer" of docs/postgresql.md: round robin over
the replicas' ports, skipping one that refuses the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Coroutine
from typing import Any

import websockets

from fsm.wire.protocol import (
    PROTOCOL_VERSION,
    WRAPPER_VERSION,
    EventFrame,
    Frame,
    Heartbeat,
    Hello,
    LifecycleFrame,
    OutcomeFrame,
    encode,
)


class Balancer:
    """A TCP proxy on 127.0.0.1: each connection goes to the next backend that accepts it."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self._next = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
                break
            except (OSError, TimeoutError):
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


class FakeWrapper:
    def __init__(
        self,
        sid: str,
        token: str,
        url: str,
        *,
        events: int = 30,
        event_period: float = 0.1,
        ping: float | None = 1.0,
    ) -> None:
        """``ping``: the WebSocket ping interval, which makes a replica that stopped answering
        be left within ~3 s; None keeps the connection to a stopped replica open (the split-brain
        test: what a resumed replica sends on it is what it did while it should not act)."""
        self.sid, self.token, self.url = sid, token, url
        self.events, self.event_period, self.ping = events, event_period, ping
        self.seq = 0
        self.unacked: list[tuple[int, Frame]] = []
        self.sent_events: list[tuple[str, int]] = []
        """(message id, index) of every event frame, in seq order: what the log must hold."""
        self.connections = 0
        self.received: list[tuple[int, float, dict[str, Any]]] = []
        """Every frame from the control plane: (connection number, monotonic time, frame)."""
        self.closes: list[tuple[int | None, str]] = []
        self.done: set[str] = set()
        self._ws: Any = None
        self._started: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        """Kept so the loop does not collect them mid-flight (sends and turns)."""

    def _frame(self, make: Any) -> None:
        self.seq += 1
        frame = make(self.seq)
        self.unacked.append((self.seq, frame))
        if self._ws is not None:
            self._tasks.add(asyncio.ensure_future(self._send(frame)))

    async def _send(self, frame: Frame) -> None:
        with contextlib.suppress(Exception):
            await self._ws.send(encode(frame).decode())

    async def _turn(self, mid: str) -> None:
        self._frame(lambda s: LifecycleFrame(seq=s, machine=f"turn:{mid}", state="running"))
        for i in range(self.events):
            self.sent_events.append((mid, i))
            event = {"type": "fake.delta", "message": mid, "index": i}
            self._frame(lambda s, e=event: EventFrame(seq=s, generation=1, event=e))
            await asyncio.sleep(self.event_period)
        self._frame(lambda s: OutcomeFrame(seq=s, message_id=mid, status="completed"))
        self._frame(lambda s: LifecycleFrame(seq=s, machine=f"turn:{mid}", state="completed"))
        self.done.add(mid)

    def settled(self) -> bool:
        """Every turn begun has ended and every frame of it is acknowledged (so stored)."""
        return bool(self._started) and self._started <= self.done and not self.unacked

    async def run(self) -> None:
        while True:
            with contextlib.suppress(OSError, websockets.WebSocketException, TimeoutError):
                await self._connect_once()
            self._ws = None
            await asyncio.sleep(0.2)

    async def _connect_once(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with websockets.connect(
            f"{self.url}/ingest/{self.sid}",
            additional_headers=headers,
            open_timeout=5,
            ping_interval=self.ping,
            ping_timeout=2 * self.ping if self.ping else None,
        ) as ws:
            hello = Hello(
                wrapper_id=f"wrp_{self.sid}",
                version=WRAPPER_VERSION,
                protocol=PROTOCOL_VERSION,
                agent_session=f"agent_{self.sid}",
                user_id="user",
                session_id=self.sid,
            )
            await ws.send(encode(hello).decode())
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if welcome.get("type") != "welcome":
                return
            self.connections += 1
            self._ack(int(welcome.get("acked", 0)))
            for _, frame in list(self.unacked):
                await ws.send(encode(frame).decode())
            self._ws = ws
            beat = asyncio.ensure_future(self._heartbeats(ws))
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    self.received.append((self.connections, time.monotonic(), frame))
                    if frame.get("type") == "ack":
                        self._ack(int(frame["seq"]))
                    elif frame.get("type") == "prompt" and frame["message_id"] not in self._started:
                        self._started.add(frame["message_id"])
                        self._tasks.add(asyncio.ensure_future(self._turn(frame["message_id"])))
            finally:
                beat.cancel()
                self.closes.append((ws.close_code, ws.close_reason or ""))

    def _ack(self, seq: int) -> None:
        self.unacked = [(s, f) for s, f in self.unacked if s > seq]

    async def _heartbeats(self, ws: Any) -> None:
        while True:
            await asyncio.sleep(1)
            frame = Heartbeat(state="ready", active=bool(self._started - self.done), degraded=False)
            with contextlib.suppress(Exception):
                await ws.send(encode(frame).decode())


class Loop:
    """An asyncio loop in a daemon thread: the balancer and the wrappers run there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
