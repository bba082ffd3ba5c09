"""The control plane's HTTP surface: the client API (REST + SSE), metrics, and the ingest socket.

Clients authenticate with the API key (bearer); wrappers authenticate on ``/ingest/{session}``
with their per-session token, compared in constant time *before* the socket is accepted, so a
wrapper with a wrong token is refused with nothing written. Errors are JSON naming what was wrong.

Every operation is declared once in ``operations()``: its handler, the type its body decodes to,
the types it answers with. The routes and ``GET /openapi.json`` are both built from that list.
Every input is bounded (``fsm.settings.limits``, and the field bounds on the types); what is out of
bounds
is a 4xx naming the field, never a 5xx.

The ingest socket is where the least trusted peer talks (a wrapper is only as trustworthy as the
agent beside it), so it is admitted in steps, each with a close code and a reason:

1. the token (refused before the socket is accepted: HTTP 403);
2. a bounded number of connections waiting for their ``hello`` (``limits.pending_per_session``,
   ``limits.pending_total``; 1013 past them), each for at most ``timers.ingest_hello`` (1008);
3. the first frame must be a ``hello`` for this URL's session (1008);
4. only then does it become the session's connection, and a previous one is closed (4000,
   "replaced by a newer connection"): nothing the old one sends afterwards is applied or acked.

Every frame is checked before it is decoded (text only, at most ``limits.frame_bytes`` — 1009 —
and at most ``limits.frame_depth`` deep) and decoded into the bounded types of
``fsm.wire.protocol``;
any violation closes that socket with 1008 and the reason. Nothing from one socket can raise past
its own task: another session never notices.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from fsm.control.core import UNFINISHED, LogEntry
from fsm.control.host import ControlHost, SessionEntry
from fsm.control.sse import MAX_EVENT_ID, event_cursor, sse_line
from fsm.control.ui.routes import ui_routes
from fsm.control.views import (
    Accepted,
    CreateSessionBody,
    Health,
    ListedSession,
    MessageAccepted,
    SessionDetail,
    SessionStopping,
)
from fsm.settings.limits import LimitValues
from fsm.wire.httpjson import (
    ErrorBody,
    HTTPProblem,
    decode_body,
    json_response,
    path_id,
)
from fsm.wire.openapi import (
    ERROR_HANDLERS,
    SSE,
    TEXT,
    Answer,
    Operation,
    Param,
    document,
    ident,
    routes,
)
from fsm.wire.protocol import (
    WRAPPER_VERSION,
    EventsDropped,
    Frame,
    Hello,
    Shutdown,
    WrapperFrame,
    decode_from_wrapper,
    encode,
    nesting_depth,
)
from fsm.wire.request_bodies import (
    AbortBody,
    PermissionBody,
    PromptBody,
    QuestionBody,
    check_prompt,
)

CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013
CLOSE_REPLACED = 4000
REPLACED = "replaced by a newer connection of this session"
EVENT_ID = {"type": "integer", "minimum": 0, "maximum": MAX_EVENT_ID}


def build_app(host: ControlHost) -> Starlette:
    ops = operations(host, host.limits)

    async def ingest(ws: WebSocket) -> None:
        await _ingest(host, ws)

    return Starlette(
        routes=[
            *routes(ops, host.settings.api_key),
            *ui_routes(host, ops),  # the dashboard: HTML, not in the OpenAPI document
            WebSocketRoute("/ingest/{session_id}", ingest),
        ],
        exception_handlers=ERROR_HANDLERS,
    )


async def listed_sessions(host: ControlHost) -> list[ListedSession]:
    """This replica's sessions as it runs them; on PostgreSQL also every other stored one, as
    stored, each with the replica that holds it (two reads on the store's thread)."""
    mine = {
        sid: ListedSession(
            **msgspec.structs.asdict(host.session_summary(e)),
            owner=host.settings.replica_id if host.pg is not None else None,
        )
        for sid, e in host.sessions.items()
    }
    pg = host.pg
    if pg is None:
        return list(mine.values())
    rows = await host.db.run(pg.list_sessions)
    owners = {lease.session_id: lease.owner for lease in await host.db.run(pg.held_leases)}
    listed = []
    for row in rows:
        if row.id in mine:
            listed.append(mine.pop(row.id))
            continue
        listed.append(
            ListedSession(
                id=row.id,
                state=row.state,
                agent_session=row.agent_session,
                user_id=row.user_id,
                workdir=row.workdir,
                wrapper_id=row.wrapper_id,
                connected=False,
                created_at=row.created_at,
                owner=owners.get(row.id),
            )
        )
    return listed + list(mine.values())  # created here after the read: still listed


def openapi_document(limits: LimitValues, host: ControlHost | None = None) -> dict[str, Any]:
    """The client API's OpenAPI document with ``limits`` in force. Without a host (``fsm-agent
    openapi``) the operations are built only to be described: their handlers are never run."""
    return document(
        title="fsm-agent control plane",
        version=WRAPPER_VERSION,
        description=(
            "Sessions of sandboxed coding agents: create one, send it messages, read its event "
            "log (SSE, resumable with Last-Event-ID). Wrappers connect on the WebSocket "
            "/ingest/{session_id} (not described here: see fsm/wire/protocol.py)."
        ),
        operations=operations(cast(ControlHost, host), limits),
        limits=limits,
    )


def operations(host: ControlHost, limits: LimitValues) -> list[Operation]:
    """Every client-API operation: the one declaration of routes, bodies and answers."""

    def entry_of(request: Request) -> SessionEntry:
        sid = path_id(request, "session_id")
        entry = host.sessions.get(sid)
        if entry is None:
            raise HTTPProblem(404, f"unknown session {sid}", "session_id")
        return entry

    async def create_session(request: Request) -> Response:
        body = await decode_body(request, CreateSessionBody, limits.body_bytes)
        entry, token = await host.add_session(
            agent_session=body.agent_session,
            user_id=body.user_id,
            workdir=body.workdir,
            wrapper_version=body.wrapper_version,
        )
        return json_response(host.session_detail(entry, token=token), 201)

    async def list_sessions(_request: Request) -> Response:
        return json_response(await listed_sessions(host))

    async def get_session(request: Request) -> Response:
        return json_response(host.session_detail(entry_of(request)))

    async def delete_session(request: Request) -> Response:
        entry = entry_of(request)
        host.delete_session(entry.row.id)
        return json_response(SessionStopping(entry.row.id, entry.core.state), 202)

    async def send_message(request: Request) -> Response:
        entry = entry_of(request)
        body = await decode_body(request, PromptBody, limits.body_bytes)
        check_prompt(body, limits)
        if entry.core.machine.terminal:
            raise HTTPProblem(409, f"session is {entry.core.state}; create a new one", "session_id")
        if body.message_id is None or body.message_id not in entry.core.messages:
            unfinished = sum(m.state in UNFINISHED for m in entry.core.messages.values())
            if unfinished >= limits.queued_messages:
                raise HTTPProblem(
                    429,
                    f"{unfinished} messages of this session are unfinished; the limit is "
                    f"{limits.queued_messages} (limits.queued_messages)",
                    "prompt",
                )
        message = entry.core.send_message(
            body.prompt,
            body.message_id,
            model=body.model,
            variant=body.variant,
            agent=body.agent,
            auto_commit=body.auto_commit,
            files=msgspec.to_builtins(body.files) if body.files else None,
        )
        return json_response(MessageAccepted(message.id, message.state), 202)

    async def abort(request: Request) -> Response:
        entry = entry_of(request)
        body = await decode_body(request, AbortBody, limits.body_bytes)
        if body.message_id is not None and body.message_id not in entry.core.messages:
            raise HTTPProblem(404, f"unknown message {body.message_id}", "message_id")
        entry.core.abort(body.message_id)
        return json_response(Accepted(True), 202)

    async def permission(request: Request) -> Response:
        entry = entry_of(request)
        request_id = path_id(request, "request_id")
        body = await decode_body(request, PermissionBody, limits.body_bytes)
        entry.core.reply_permission(request_id, body.reply, body.message)
        return json_response(Accepted(True), 202)

    async def question(request: Request) -> Response:
        entry = entry_of(request)
        request_id = path_id(request, "request_id")
        body = await decode_body(request, QuestionBody, limits.body_bytes)
        if body.reject == (body.answers is not None):
            raise HTTPProblem(400, "give either answers or reject=true", "answers")
        answers = None if body.reject else body.answers
        entry.core.reply_question(request_id, answers)
        return json_response(Accepted(True), 202)

    async def events(request: Request) -> Response:
        entry = entry_of(request)
        after = event_cursor(request)
        follow_raw = request.query_params.get("follow", "1")
        if follow_raw not in ("0", "1"):
            raise HTTPProblem(400, f"follow must be 0 or 1, got {follow_raw[:20]!r}", "follow")
        host.check_stream_limits(entry)
        await host.flush_session(entry.row.id)
        return StreamingResponse(
            _sse(host, entry, after, follow_raw == "1"),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def metrics(_request: Request) -> Response:
        states = Counter(e.core.state for e in host.sessions.values())
        text = host.metrics.render(states, sorted(host.values.items()))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def healthz(_request: Request) -> Response:
        return json_response(Health(True, len(host.sessions)))

    async def openapi(_request: Request) -> Response:
        return json_response(document_once())

    # The document depends on the declarations and the limits only: built once, when asked.
    document_once = functools.cache(lambda: openapi_document(limits, host))
    sid = ident("session_id", "the session's id (from POST /sessions)")
    rid = ident("request_id", "the agent's permission or question request id (from its event)")
    not_found = Answer(404, "no such session (or message)", ErrorBody)
    sessions_tag = ("sessions",)
    return [
        Operation(
            "POST",
            "/sessions",
            create_session,
            "Create a session; its wrapper starts at once",
            (
                Answer(201, "the new session", SessionDetail),
                Answer(429, "limits.sessions reached", ErrorBody),
            ),
            body=CreateSessionBody,
            tags=sessions_tag,
        ),
        Operation(
            "GET",
            "/sessions",
            list_sessions,
            "Every live session (on PostgreSQL: every replica's, each with its owner)",
            (Answer(200, "the sessions", list[ListedSession]),),
            tags=sessions_tag,
        ),
        Operation(
            "GET",
            "/sessions/{session_id}",
            get_session,
            "One session with its messages and timers",
            (Answer(200, "the session", SessionDetail), not_found),
            params=(sid,),
            tags=sessions_tag,
        ),
        Operation(
            "DELETE",
            "/sessions/{session_id}",
            delete_session,
            "Stop a session and forget it once its wrapper is gone",
            (Answer(202, "stopping", SessionStopping), not_found),
            params=(sid,),
            tags=sessions_tag,
        ),
        Operation(
            "POST",
            "/sessions/{session_id}/messages",
            send_message,
            "Send a prompt (idempotent by message_id)",
            (
                Answer(202, "queued (or the message already sent with this id)", MessageAccepted),
                not_found,
                Answer(409, "the session has ended", ErrorBody),
                Answer(429, "limits.queued_messages unfinished messages", ErrorBody),
            ),
            body=PromptBody,
            params=(sid,),
            tags=("messages",),
        ),
        Operation(
            "POST",
            "/sessions/{session_id}/abort",
            abort,
            "Abort the running turn (or one message)",
            (Answer(202, "sent to the wrapper", Accepted), not_found),
            body=AbortBody,
            params=(sid,),
            tags=("messages",),
        ),
        Operation(
            "POST",
            "/sessions/{session_id}/permissions/{request_id}",
            permission,
            "Answer the agent's permission request",
            (Answer(202, "sent to the wrapper", Accepted), not_found),
            body=PermissionBody,
            params=(sid, rid),
            tags=("messages",),
        ),
        Operation(
            "POST",
            "/sessions/{session_id}/questions/{request_id}",
            question,
            "Answer (or reject) the agent's question",
            (Answer(202, "sent to the wrapper", Accepted), not_found),
            body=QuestionBody,
            params=(sid, rid),
            tags=("messages",),
        ),
        Operation(
            "GET",
            "/sessions/{session_id}/events",
            events,
            "The session's event log as Server-Sent Events, resumable with Last-Event-ID",
            (
                Answer(200, "the log from after the given id, then the live tail", media=SSE),
                not_found,
                Answer(429, "limits.sse_per_session or limits.sse_total streams open", ErrorBody),
            ),
            params=(
                sid,
                Param(
                    "Last-Event-ID", "header", EVENT_ID, "resume after this id (wins over after)"
                ),
                Param("after", "query", EVENT_ID, "resume after this id"),
                Param(
                    "follow",
                    "query",
                    {"type": "string", "enum": ["0", "1"]},
                    "0: the stored log only, then the stream ends",
                ),
            ),
            tags=("events",),
        ),
        Operation(
            "GET",
            "/metrics",
            metrics,
            "Prometheus metrics",
            (Answer(200, "text exposition format", media=TEXT),),
            tags=("operations",),
        ),
        Operation(
            "GET",
            "/healthz",
            healthz,
            "Liveness (no authentication)",
            (Answer(200, "the process serves", Health),),
            auth=False,
            tags=("operations",),
        ),
        Operation(
            "GET",
            "/openapi.json",
            openapi,
            "This document",
            (Answer(200, "OpenAPI 3.1", dict[str, Any]),),
            auth=False,
            tags=("operations",),
        ),
    ]


async def _sse(
    host: ControlHost,
    entry: SessionEntry,
    after: int,
    follow: bool,
) -> AsyncIterator[bytes]:
    assert host.store is not None
    send, receive = host.subscribe(entry)  # subscribed first, then the store is read: no gap
    last = after
    try:
        while True:
            rows = await host.db.run(host.store.events, entry.row.id, last, 1000)
            for row in rows:
                data: dict[str, Any] = msgspec.json.decode(row.data)
                yield sse_line(LogEntry(row.id, row.at, row.kind, data))
                last = row.id
            if len(rows) < 1000:
                break
        if not follow:
            return
        while True:
            with anyio.move_on_after(15) as idle:
                item = await receive.receive()
            if idle.cancel_called:
                yield b": keep-alive\n\n"
                continue
            if item.id > last:
                yield sse_line(item)
                last = item.id
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return
    finally:
        host.unsubscribe(entry, send)


# -- the ingest socket ------------------------------------------------------------------------


class Violation(Exception):
    """A peer broke the protocol: close its socket with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Disconnected(Exception):
    pass


# A \u escape of a high surrogate not followed by a low one, or a low one not preceded by a high
# one (an escaped backslash before the "u" makes it plain text, not an escape).
_LONE_SURROGATE = re.compile(
    r"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})(?<!\\)\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def check_frame(text: str, limits: LimitValues) -> WrapperFrame:
    """Decode one ingest frame within the limits, or raise ``Violation``."""
    most, depth = limits.frame_bytes, limits.frame_depth
    # A character is at most 4 bytes of UTF-8: only a long frame needs encoding to be measured.
    if len(text) > most or (
        len(text) * 4 > most and len(text.encode("utf-8", "surrogatepass")) > most
    ):
        raise Violation(CLOSE_TOO_BIG, f"frame larger than {most} bytes")
    # Counting brackets is C-speed; only a frame that could be too deep is measured exactly.
    if text.count("{") + text.count("[") > depth and nesting_depth(text) > depth:
        raise Violation(CLOSE_POLICY, f"frame nested deeper than {depth}")
    if "\\u" in text and _LONE_SURROGATE.search(text):
        # Valid JSON, but a string with no UTF-8 form: it could never be stored.
        raise Violation(CLOSE_POLICY, "bad frame: a \\u escape of a lone UTF-16 surrogate")
    try:
        frame = decode_from_wrapper(text)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise Violation(CLOSE_POLICY, f"bad frame: {exc}") from None
    if isinstance(frame, EventsDropped) and (
        frame.last_seq < frame.seq or frame.count != frame.last_seq - frame.seq + 1
    ):
        raise Violation(CLOSE_POLICY, "bad frame: events_dropped must cover seq..last_seq")
    return frame


async def _receive(ws: WebSocket, limits: LimitValues) -> WrapperFrame:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise Disconnected
    text = message.get("text")
    if text is None:
        raise Violation(CLOSE_POLICY, "binary frames are not accepted: send JSON text")
    return check_frame(text, limits)


def _close_reason(reason: str) -> str:
    # A close frame's reason is at most 123 bytes of UTF-8.
    data = reason.encode("utf-8", "replace")[:123]
    return data.decode("utf-8", "ignore")


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    # Already closed by the peer or by another task: nothing left to say.
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
        await ws.close(code=code, reason=_close_reason(reason))


async def _refuse(host: ControlHost, ws: WebSocket, sid: str, code: int, reason: str) -> None:
    """Close a socket that broke the protocol: counted, logged, and told why."""
    host.metrics.violations[code] += 1
    host.log.warning("ingest socket closed", session=sid, code=code, reason=reason)
    await _close(ws, code, reason)


class _Connection:
    """One accepted ingest socket; the session's current one once its hello is admitted."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[Frame](max_buffer_size=10_000)
        self.replaced = False


async def _ingest(host: ControlHost, ws: WebSocket) -> None:
    sid = ws.path_params["session_id"]
    header = ws.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    entry = host.check_wrapper_token(sid, token) if scheme.lower() == "bearer" else None
    if entry is None:
        host.metrics.refused_connections += 1
        host.log.warning("wrapper refused: wrong token or unknown session", session=sid[:140])
        await ws.close(code=CLOSE_POLICY)
        return
    limits = host.limits
    await ws.accept()
    if entry.pending >= limits.pending_per_session or host.pending_total >= limits.pending_total:
        host.metrics.refused_connections += 1
        await _close(ws, CLOSE_TRY_LATER, "too many connections waiting for their hello")
        return
    entry.pending += 1
    host.pending_total += 1
    try:
        try:
            with anyio.fail_after(host.values["ingest_hello"]):
                first = await _receive(ws, limits)
        except TimeoutError:
            raise Violation(
                CLOSE_POLICY, f"no hello within {host.values['ingest_hello']:g} s"
            ) from None
        if not isinstance(first, Hello):
            raise Violation(CLOSE_POLICY, "the first frame must be a hello")
        if first.session_id != sid:
            raise Violation(CLOSE_POLICY, "hello names another session than this socket's URL")
    except Violation as violation:
        await _refuse(host, ws, sid, violation.code, violation.reason)
        return
    except Disconnected:
        return
    finally:
        entry.pending -= 1
        host.pending_total -= 1
    await _serve(host, entry, ws, first)


async def _serve(host: ControlHost, entry: SessionEntry, ws: WebSocket, hello: Hello) -> None:
    sid = entry.row.id
    conn = _Connection()
    previous = entry.conn
    entry.conn, entry.outq = conn, conn.send
    if previous is not None:
        previous.replaced = True
        previous.send.close()  # its writer closes its socket: nothing more is acked there

    async def writer() -> None:
        try:
            async with conn.receive:
                async for frame in conn.receive:
                    await ws.send_text(encode(frame).decode())
                    if isinstance(frame, Shutdown):
                        await _close(ws, 1000, "shutdown")
                        return
            if conn.replaced:
                await _close(ws, CLOSE_REPLACED, REPLACED)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the socket is gone; the reader sees it too

    closed: tuple[int, str] | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            frame: WrapperFrame = hello
            try:
                while entry.conn is conn:
                    host.metrics.frames_in[frame.__class__.__name__.lower()] += 1
                    try:
                        entry.core.frame(frame)
                    except Exception as exc:  # a bug, but only this socket may pay for it
                        host.log.error(
                            "a wrapper frame could not be applied",
                            session=sid,
                            error=f"{type(exc).__name__}: {exc}",
                        )
                        closed = (CLOSE_INTERNAL, "the control plane could not apply a frame")
                        break
                    frame = await _receive(ws, host.limits)
                    if isinstance(frame, Hello):
                        raise Violation(CLOSE_POLICY, "one hello per connection")
            except Violation as violation:
                closed = (violation.code, violation.reason)
            except (Disconnected, WebSocketDisconnect, RuntimeError, OSError):
                pass
            tg.cancel_scope.cancel()
        if closed is not None:
            await _refuse(host, ws, sid, *closed)
    finally:
        if entry.conn is conn:
            entry.conn = None
            entry.outq = None
            host.wrapper_disconnected(sid)
        conn.send.close()
        host.log.info("wrapper disconnected", session=sid, replaced=conn.replaced)
