"""A TCP proxy on loopback that a test can cut: the dropped connection a client must survive.

Every connection to the proxy is forwarded to ``upstream``. ``cut()`` kills the connections open
now; ``cut(partial=True)`` waits for the next chunk from upstream, forwards only its first half
and then kills the connection, so the client is left holding half an SSE block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
from anyio.abc import SocketStream, TaskGroup


class CuttableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self.cuts = 0
        self._open: set[anyio.CancelScope] = set()
        self._half_next = False

    def cut(self, *, partial: bool = False) -> None:
        if partial:
            self._half_next = True
            return
        self.cuts += 1
        for scope in list(self._open):
            scope.cancel()

    async def _pump(
        self, source: SocketStream, sink: SocketStream, scope: anyio.CancelScope, down: bool
    ) -> None:
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            while True:
                data = await source.receive()
                if down and self._half_next and len(data) > 1:
                    self._half_next = False
                    await sink.send(data[: len(data) // 2])
                    self.cuts += 1
                    scope.cancel()
                    return
                await sink.send(data)
        scope.cancel()

    async def _handle(self, client: SocketStream) -> None:
        self.connections += 1
        async with client:
            upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
            async with upstream:
                with anyio.CancelScope() as scope:
                    self._open.add(scope)
                    try:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(self._pump, client, upstream, scope, False)
                            tg.start_soon(self._pump, upstream, client, scope, True)
                    finally:
                        self._open.discard(scope)

    async def _serve(self, tg: TaskGroup, listener: anyio.abc.SocketListener) -> None:
        await listener.serve(self._handle, task_group=tg)


@asynccontextmanager
async def cuttable_proxy(upstream_port: int) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(proxy._serve, tg, listener)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()
