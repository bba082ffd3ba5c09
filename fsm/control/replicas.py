"""Several control-plane replicas on one PostgreSQL database: leases, a directory, routing.

Theory of operation
-------------------
Every session is acted for by one replica at a time, the holder of its lease
(``adapters/store/leases.py``). This module is what a replica runs besides ``ControlHost``:

* **The lease keeper** (``Replicas._keep``), every third of ``replica_lease`` on the real clock:
  renew every lease this replica holds; a local session missing from the answer is claimed
  again if nobody took it meanwhile (the database was out of reach past the lease, say) and
  dropped otherwise (``ControlHost.drop_session``); then claim sessions nobody holds (``FOR
  UPDATE SKIP LOCKED``: unowned, released or expired) and restore each from its stored snapshot
  with its remaining timer deadlines, as a restart would. A replica that died is thus replaced
  within one lease plus one keeper period.
* **Not acting without a lease**: ``ControlHost.acting`` is false once the monotonic deadline
  measured from before the last renewal passed, so a replica resumed after a SIGSTOP executes
  no effect until the database has told it whether the lease is still its own; its writes are
  fenced by the store (``LeaseLostError``) whatever happens.
* **The directory**: each replica announces ``{id, url}`` on the ``fsm_agent_replicas``
  NOTIFY channel every keeper period and listens on it (its own connection); one that starts
  listening asks, and every other answers at once, so every replica knows where every other
  one answers. Nothing is stored: an address is only needed while its
  replica lives.
* **Routing** (``route``, ASGI around the app): a request for a session this replica does not
  hold is answered here when it can be: the session is claimed if its lease is free or expired
  (then served locally); ``GET …/events`` is tailed from the database (reads are never fenced:
  any replica serves a stream, with ``Last-Event-ID`` exact since event ids are the stored
  ones); any other request (a prompt, an abort, a reply, a delete, a read of the session) is
  forwarded over HTTP to the owner, which validates and answers it as if it had been asked
  directly (its status and body are the answer here). A forwarded request is never forwarded
  again (``X-Fsm-Agent-Forwarded``): a lease that moved meanwhile is a 503 to retry.
* **Wrappers** reach replicas through **one URL behind a TCP load balancer**, not a list: the
  wrapper, its configuration and its image know one ingest URL, and any balancer (or a DNS name
  with several addresses) spreads reconnects without the wrapper knowing the replica set. A
  wrapper arriving at a replica that does not hold its session either gets it claimed there
  (lease free or expired) or is closed with 1013 (try again later) naming the owner; it
  reconnects with its backoff and the balancer sends it on.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import psycopg
from anyio.abc import TaskGroup
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.store.postgres import PostgresStore
from adapters.store.rows import StoreError
from fsm.control.core import LogEntry
from fsm.control.sse import event_cursor, sse_line

if TYPE_CHECKING:
    from fsm.control.host import ControlHost

__all__ = ["CHANNEL", "FORWARDED", "Replicas", "route"]

CHANNEL = "fsm_agent_replicas"
FORWARDED = "x-fsm-agent-forwarded"
CLOSE_ELSEWHERE = 1013
CLAIM_BATCH = 100
TAIL_POLL = 0.1
"""How often a stream tailed from the database looks for new events (seconds)."""
_SESSION_PATH = re.compile(r"^/(sessions|ingest)/([^/]+)(/.*)?$")
_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


class Replicas:
    """The lease keeper and the directory of one replica (see the module docstring)."""

    def __init__(self, host: ControlHost, store: PostgresStore) -> None:
        self.host = host
        self.store = store
        self.me = store.replica or ""
        self.ttl = host.values["replica_lease"]
        self.period = self.ttl / 3
        self.directory: dict[str, str] = {}
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._claiming = anyio.Lock()
        """Held by a keeper pass and by ``acquire``: what the database answered about a
        session's lease and what this host holds for it change together, never interleaved
        (an ``acquire`` that read "not free" while the keeper restored what it had just
        claimed must not drop the restored session)."""
        self._client = httpx.AsyncClient(timeout=10.0)

    @property
    def url(self) -> str:
        s = self.host.settings
        return s.advertise_url or f"http://{s.listen_host}:{self.host.port}"

    async def start(self, tg: TaskGroup) -> None:
        """First claims now (before the host says it listens), then the loops."""
        await self.keep_once()
        tg.start_soon(self._keep_loop)
        tg.start_soon(self._listen_loop)

    # -- leases ---------------------------------------------------------------------------------

    async def _keep_loop(self) -> None:
        while True:
            await anyio.sleep(self.period)
            try:
                await self.keep_once()
            except Exception as exc:  # the loop that holds the leases must never stop
                self.host.log.error("keeping leases failed", error=f"{type(exc).__name__}: {exc}")

    async def keep_once(self) -> None:
        """Renew, re-claim or drop, claim what nobody holds, announce this replica. Every query
        runs on the store's thread (``host.db``): the loop serves on while it waits, and what
        it does meanwhile for a session is guarded by ``acting``, not by this pass's order."""
        try:
            async with self._claiming:
                await self._keep_leases()
            await self._announce()
        except StoreError as exc:
            # Sessions stop being acted for once their lease may have lapsed (``acting``); the
            # next pass asks again.
            self.host.log.warning("leases could not be kept now", error=str(exc)[:300])

    async def _keep_leases(self) -> None:
        host, store, db = self.host, self.store, self.host.db
        started = time.monotonic()
        renewed = {lease.session_id for lease in await db.run(store.renew_leases)}
        for sid in renewed:
            host.lease_until[sid] = started + self.ttl
        for sid in sorted(renewed - set(host.sessions)):
            # Held here but not restored (a restore that failed): restore it now, or the
            # lease would be renewed forever for a session nobody acts for.
            await self.adopt(sid, started)
        for sid in [s for s in host.sessions if s not in renewed]:
            again = time.monotonic()
            if await db.run(store.claim_session, sid) is not None:
                host.lease_until[sid] = again + self.ttl
                host.log.warning("a lapsed lease was taken again", session=sid)
            else:
                holder = await db.run(store.lease, sid)
                owner = holder.owner if holder is not None else None
                host.drop_session(sid, f"the lease is held by replica {owner!r}")
        while True:
            claimed = await db.run(store.claim_sessions, CLAIM_BATCH)
            for lease in claimed:
                await self.adopt(lease.session_id, started)
            if len(claimed) < CLAIM_BATCH:
                break

    async def adopt(self, session_id: str, held_since: float) -> bool:
        """Restore a session this replica has just claimed; False if it has nothing to run."""
        row = await self.host.db.run(self.store.get_session, session_id)
        if row is None:
            return False
        entry = await self.host.adopt_row(row, held_since)
        if entry is not None:
            self.host.log.info("session claimed", session=session_id, replica=self.me)
        return entry is not None

    async def acquire(self, session_id: str) -> bool:
        """Make the session this replica's if it can be: already held, or its lease free."""
        host = self.host
        if session_id in host.sessions and host.acting(session_id):
            return True
        async with self._claiming:
            if session_id in host.sessions and host.acting(session_id):
                return True  # the keeper took or renewed it while this waited
            started = time.monotonic()
            try:
                lease = await host.db.run(self.store.claim_session, session_id)
                if lease is not None:
                    return await self.adopt(session_id, started)
                holder = await host.db.run(self.store.lease, session_id)
            except StoreError:
                return False
            if session_id in host.sessions and (holder is None or holder.owner != self.me):
                host.drop_session(session_id, "another replica holds the lease")
            # Still this replica's but not surely (its local deadline passed): the keeper's
            # next renewal says, and until then nothing is done for it here.
            return False

    async def release_all(self) -> None:
        """A clean stop gives every lease back, so no other replica waits for them to expire."""
        ids = list(self.host.sessions)
        try:
            if ids:
                await self.host.db.run(self.store.release_leases, ids)
        except StoreError as exc:
            self.host.log.warning("leases not released; they expire", error=str(exc)[:300])
        self.host.lease_until.clear()

    async def owner_url(self, session_id: str) -> tuple[str | None, str | None]:
        """``(owner, its url)`` of a session another replica holds (unexpired), else Nones."""
        lease = await self.host.db.run(self.store.lease, session_id)
        if lease is None or lease.owner is None or lease.owner == self.me:
            return None, None
        return lease.owner, self.directory.get(lease.owner)

    # -- the directory --------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        while True:
            try:
                self._listener = await psycopg.AsyncConnection.connect(
                    self.store.dsn, autocommit=True, connect_timeout=5
                )
                async with self._listener as db:
                    await db.execute(f"LISTEN {CHANNEL}")
                    await self._announce(ask=True)  # the others answer at once: no period
                    async for notice in db.notifies():
                        if self._heard(notice.payload):
                            await self._announce()
            except psycopg.Error as exc:
                self.host.log.warning("replica directory lost its connection", error=str(exc))
            await anyio.sleep(self.period)

    def _heard(self, payload: str) -> bool:
        """Note another replica's address; True when it asked every replica to answer."""
        try:
            data = json.loads(payload)
            replica, url = str(data["id"]), str(data["url"])
        except (ValueError, KeyError, TypeError):
            return False
        if replica == self.me:
            return False
        self.directory[replica] = url
        return isinstance(data, dict) and bool(data.get("ask"))

    async def _announce(self, *, ask: bool = False) -> None:
        payload = json.dumps({"id": self.me, "url": self.url, "ask": ask})
        try:
            await self.host.db.run(self.store.notify, CHANNEL, payload)
        except StoreError as exc:
            self.host.log.warning("announcing this replica failed", error=str(exc)[:300])

    async def close(self) -> None:
        await self._client.aclose()
        if self._listener is not None:
            await self._listener.close()

    # -- requests for sessions held elsewhere ---------------------------------------------------

    async def forward(self, request: Request, owner: str, url: str) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k not in _HOP_HEADERS}
        headers[FORWARDED] = self.me
        target = url.rstrip("/") + request.url.path
        try:
            answer = await self._client.request(
                request.method, target, params=request.query_params, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            return _problem(
                503,
                f"the session's owner, replica {owner}, did not answer ({type(exc).__name__}); "
                "retry: another replica takes the session once its lease expires",
            )
        kept = {k: v for k, v in answer.headers.items() if k.lower() == "content-type"}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    async def tail(self, request: Request, session_id: str) -> Response:
        """``GET …/events`` from the database: what is stored after the cursor, then new rows
        as they are stored, until the client leaves (``follow=1``) or the present (``0``)."""
        from fsm.wire.httpjson import HTTPProblem

        try:
            after = event_cursor(request)
        except HTTPProblem as problem:
            return problem.response()
        follow = request.query_params.get("follow", "1")
        if follow not in ("0", "1"):
            return _problem(400, f"follow must be 0 or 1, got {follow[:20]!r}", "follow")
        store = self.store

        async def stream() -> AsyncIterator[bytes]:
            last = after
            quiet = 0.0
            while True:
                try:
                    rows = await self.host.db.run(store.events, session_id, last, 1000)
                except StoreError:
                    return  # the client resumes with Last-Event-ID
                for row in rows:
                    data: dict[str, Any] = msgspec.json.decode(row.data)
                    yield sse_line(LogEntry(row.id, row.at, row.kind, data))
                    last = row.id
                if len(rows) == 1000:
                    continue
                if follow == "0":
                    return
                if rows:
                    quiet = 0.0
                await anyio.sleep(TAIL_POLL)
                quiet += TAIL_POLL
                if quiet >= 15:
                    quiet = 0.0
                    yield b": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _problem(status: int, error: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def route(host: ControlHost, app: ASGIApp) -> ASGIApp:
    """The app, with requests for sessions held by another replica routed (module docstring);
    the app itself when the store is not shared."""
    replicas: Replicas | None = host.replicas
    if replicas is None:
        return app

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        match = _SESSION_PATH.match(scope.get("path", "")) if scope["type"] != "lifespan" else None
        if match is None or scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        kind, sid, rest = match.group(1), match.group(2), match.group(3) or ""
        if await replicas.acquire(sid):
            await app(scope, receive, send)
            return
        try:
            owner, url = await replicas.owner_url(sid)
        except StoreError as exc:
            owner, url = None, None
            host.log.warning("reading a lease failed", session=sid, error=str(exc)[:300])
        if owner is None:
            await app(scope, receive, send)  # unknown or deleted: the app's own 404
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect; accepted, so that the close carries its code
            await send({"type": "websocket.accept"})
            await send(
                {
                    "type": "websocket.close",
                    "code": CLOSE_ELSEWHERE,
                    "reason": f"session held by replica {owner}; reconnect"[:123],
                }
            )
            return
        request = Request(scope, receive)
        if kind != "sessions":
            await app(scope, receive, send)
            return
        if not _authorized(request, host.settings.api_key):
            response: Response = _problem(401, "missing or wrong bearer token", "Authorization")
        elif rest == "/events" and scope.get("method") == "GET":
            response = await replicas.tail(request, sid)
        elif request.headers.get(FORWARDED) or url is None:
            response = _problem(
                503,
                f"session {sid} is held by replica {owner}"
                + (", whose address is not known here yet" if url is None else "")
                + "; retry",
                "session_id",
            )
        else:
            response = await replicas.forward(request, owner, url)
        await response(scope, receive, send)

    return routed


def _authorized(request: Request, key: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), key.encode())
