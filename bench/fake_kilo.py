#!/usr/bin/env python3
"""A fast stand-in for ``kilo serve``: exactly the API ``fsm-agent serve`` uses, plus a bench hook.

Stdlib only (it runs under ``python -I -S``, so it starts in a few tens of milliseconds) and one
asyncio loop with a hand-written HTTP/1.1 server, so that the *source* of the relay benchmark is
never its bottleneck. What it speaks, as ``adapters/kilo/process.py`` and ``client.py`` need it
(``shared/kilo/README.md`` §1, §4, §6):

* ``kilo serve --port P --hostname H``: prints ``kilo server listening on http://H:P`` on stdout
  once the socket accepts; exits when ``KILO_PARENT_PID`` dies or on SIGTERM.
* HTTP basic auth ``kilo:$KILO_SERVER_PASSWORD`` on every Kilo route (401 otherwise).
* ``GET /global/health``, ``POST /session``, ``GET /session/{id}``, ``GET /session/status``,
  ``GET /session/{id}/message``, ``POST /session/{id}/prompt_async`` (204),
  ``POST /session/{id}/abort``.
* ``GET /event``: chunked ``text/event-stream``, one ``data: <json>\\n\\n`` chunk per event (as
  Kilo's Bun server writes them), ``server.connected`` first, ``server.heartbeat`` every 10 s.

Bench hook (no auth, never used by the wrapper): ``POST /bench/emit?n=N&rate=R`` sends, to every
open ``/event`` stream, ``session.turn.open``, ``N`` ``message.part.delta`` events of the current
session and ``session.turn.close{completed}``; ``rate=0`` means as fast as the sockets take them
(TCP back-pressure), otherwise events are paced at ``R`` per second. Every delta carries
``properties.bench = {"n": i, "t": time.monotonic()}`` taken when it is written, so a sink in
another process (same machine, same ``CLOCK_MONOTONIC``) measures latency end to end. The answer
says how many were sent and over how long. ``GET /bench/info`` tells subscribers and prompts.
"""

from __future__ import annotations

import time

STARTED = time.time()  # before the imports: the fake's own start-up, as it reports it

import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

SESSION = "ses_bench0000000000000000000001"
MESSAGE = "msg_bench0000000000000000000001"
PART = "prt_bench0000000000000000000001"
HEARTBEAT = 10.0


class FakeKilo:
    def __init__(self, password: str | None) -> None:
        self.expected_auth = (
            "Basic " + base64.b64encode(f"kilo:{password}".encode()).decode() if password else None
        )
        self.streams: set[asyncio.StreamWriter] = set()
        self.sessions: dict[str, dict[str, object]] = {}
        self.prompts = 0
        self.event_no = 0
        self.directory = os.getcwd()

    # -- events ---------------------------------------------------------------------------------

    def _event(self, kind: str, properties: str) -> bytes:
        self.event_no += 1
        data = (
            f'data: {{"id":"evt_bench{self.event_no:020x}","type":"{kind}",'
            f'"properties":{properties}}}\n\n'
        ).encode()
        return b"%x\r\n%s\r\n" % (len(data), data)

    def _delta(self, n: int, now: float) -> bytes:
        return self._event(
            "message.part.delta",
            f'{{"sessionID":"{SESSION}","messageID":"{MESSAGE}","partID":"{PART}",'
            f'"field":"text","delta":" token{n % 10}","bench":{{"n":{n},"t":{now!r}}}}}',
        )

    async def _broadcast(self, data: bytes) -> None:
        for writer in list(self.streams):
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, RuntimeError):
                self.streams.discard(writer)

    async def emit(self, n: int, rate: float) -> dict[str, float]:
        await self._broadcast(self._event("session.turn.open", f'{{"sessionID":"{SESSION}"}}'))
        start = time.monotonic()
        sent = 0
        mono = time.monotonic
        if rate <= 0:
            batch = 64
            while sent < n:
                now = mono()
                k = min(batch, n - sent)
                await self._broadcast(b"".join(self._delta(sent + i, now) for i in range(k)))
                sent += k
        else:
            while sent < n:
                now = mono()
                due = min(n, int((now - start) * rate) + 1)
                if due > sent:
                    await self._broadcast(b"".join(self._delta(i, now) for i in range(sent, due)))
                    sent = due
                wait = start + sent / rate - mono()
                if wait > 0:
                    await asyncio.sleep(wait)
        seconds = mono() - start
        close = f'{{"sessionID":"{SESSION}","reason":"completed"}}'
        await self._broadcast(self._event("session.turn.close", close))
        return {"sent": sent, "seconds": seconds, "start": start}

    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            await self._broadcast(self._event("server.heartbeat", "{}"))

    # -- HTTP -----------------------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                url = urlsplit(target)
                if url.path == "/event" and method == "GET":
                    if not self._authorized(headers):
                        self._respond(writer, 401, {"error": "unauthorized"})
                        await writer.drain()
                        continue
                    await self._stream(reader, writer)
                    return
                status, payload = await self._route(method, url.path, url.query, body, headers)
                self._respond(writer, status, payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.streams.discard(writer)
            writer.close()

    def _authorized(self, headers: dict[str, str]) -> bool:
        return self.expected_auth is None or headers.get("authorization") == self.expected_auth

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache, no-transform\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(self._event("server.connected", "{}"))
        await writer.drain()
        self.streams.add(writer)
        try:
            while await reader.read(65536):  # nothing comes after an SSE request but its end
                pass
        finally:
            self.streams.discard(writer)

    def _respond(self, writer: asyncio.StreamWriter, status: int, payload: object) -> None:
        reason = {200: "OK", 204: "No Content", 401: "Unauthorized", 404: "Not Found"}
        if status == 204:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    def _session(self, sid: str) -> dict[str, object]:
        now = int(time.time() * 1000)
        return {
            "id": sid,
            "directory": self.directory,
            "title": "bench",
            "version": "7.7.9",
            "time": {"created": now, "updated": now},
        }

    async def _route(
        self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, object]:
        if path.startswith("/bench/"):
            args = {k: v[0] for k, v in parse_qs(query).items()}
            if path == "/bench/emit" and method == "POST":
                return 200, await self.emit(
                    int(args.get("n", "1000")), float(args.get("rate", "0"))
                )
            if path == "/bench/info":
                return 200, {
                    "subscribers": len(self.streams),
                    "prompts": self.prompts,
                    "started": STARTED,
                }
            return 404, {"error": "no such bench route"}
        if not self._authorized(headers):
            return 401, {"error": "unauthorized"}
        parts = [p for p in path.split("/") if p]
        if path == "/global/health":
            return 200, {"healthy": True, "version": "7.7.9"}
        if parts == ["session"] and method == "POST":
            self.sessions[SESSION] = self._session(SESSION)
            return 200, self.sessions[SESSION]
        if parts == ["session", "status"]:
            return 200, {}
        if len(parts) == 2 and parts[0] == "session" and method == "GET":
            found = self.sessions.get(parts[1])
            return (200, found) if found else (404, {"name": "NotFoundError"})
        if len(parts) == 3 and parts[0] == "session":
            if parts[2] == "message":
                return 200, []
            if parts[2] == "prompt_async" and method == "POST":
                self.prompts += 1
                return 204, None
            if parts[2] == "abort":
                return 200, True
        return 404, {"name": "NotFoundError", "path": path}


async def watch_parent(pid: int) -> None:
    while True:
        await asyncio.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)


async def main(argv: list[str]) -> None:
    port, host = 0, "127.0.0.1"
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--port":
            port = int(argv[i + 1])
        elif arg == "--hostname":
            host = argv[i + 1]
    kilo = FakeKilo(os.environ.get("KILO_SERVER_PASSWORD"))
    server = await asyncio.start_server(kilo.handle, host, port, limit=1 << 20)
    bound = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def stopping() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping)
    tasks = [asyncio.ensure_future(kilo.heartbeats())]
    parent = os.environ.get("KILO_PARENT_PID")
    if parent:
        tasks.append(asyncio.ensure_future(watch_parent(int(parent))))
    sys.stdout.write(f"kilo server listening on http://{host}:{bound}\n")
    sys.stdout.flush()
    timing = os.environ.get("FAKE_KILO_TIMING")
    if timing:
        with open(timing, "a") as out:
            out.write(json.dumps({"started": STARTED, "listening": time.time()}) + "\n")
    await stop
    sys.stdout.flush()
    os._exit(0)  # like Kilo: no lingering connections, nothing left to clean up


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
