"""The control plane's HTTP surface: the client API (REST + SSE), metrics, and the ingest socket.

Clients authenticate with the API key (bearer); wrappers authenticate on ``/ingest/{session}``
with their per-session token, compared in constant time *before* the socket is accepted, so a
wrapper with a wrong token is refused with nothing written. Errors are JSON naming what was wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from fsm.control.host import ControlHost, SessionEntry
from fsm.httpjson import HTTPProblem, check_bearer, decode_body, json_response
from fsm.protocol import Frame, Shutdown, decode_from_wrapper, encode
from fsm.request_bodies import AbortBody, PermissionBody, PromptBody, QuestionBody
from fsm.session_core import LogEntry


class CreateSessionBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_session: str | None = None
    user_id: str = "user"
    workdir: str | None = None
    wrapper_version: str | None = None
    """Version the first wrapper announces (for exercising version pinning)."""


Handler = Callable[[Request], Awaitable[Response]]


def build_app(host: ControlHost) -> Starlette:
    key = host.settings.api_key

    def guarded(handler: Handler, *, auth: bool = True) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                if auth:
                    check_bearer(request, key)
                return await handler(request)
            except HTTPProblem as problem:
                return problem.response()

        return wrapped

    def entry_of(request: Request) -> SessionEntry:
        sid = request.path_params["session_id"]
        entry = host.sessions.get(sid)
        if entry is None:
            raise HTTPProblem(404, f"unknown session {sid}", "session_id")
        return entry

    async def create_session(request: Request) -> Response:
        body = await decode_body(request, CreateSessionBody)
        entry = host.create_session(
            agent_session=body.agent_session,
            user_id=body.user_id,
            workdir=body.workdir,
            wrapper_version=body.wrapper_version,
        )
        return json_response(host.session_view(entry, detail=True), 201)

    async def list_sessions(_request: Request) -> Response:
        return json_response([host.session_view(e) for e in host.sessions.values()])

    async def get_session(request: Request) -> Response:
        return json_response(host.session_view(entry_of(request), detail=True))

    async def delete_session(request: Request) -> Response:
        entry = entry_of(request)
        host.delete_session(entry.row.id)
        return json_response({"id": entry.row.id, "state": entry.core.state}, 202)

    async def send_message(request: Request) -> Response:
        entry = entry_of(request)
        body = await decode_body(request, PromptBody)
        if not body.prompt.strip():
            raise HTTPProblem(400, "prompt must not be empty", "prompt")
        if body.model is not None and "/" not in body.model:
            raise HTTPProblem(400, "model must be 'provider/model'", "model")
        if entry.core.machine.terminal:
            raise HTTPProblem(409, f"session is {entry.core.state}; create a new one", "session_id")
        message = entry.core.send_message(
            body.prompt,
            body.message_id,
            model=body.model,
            variant=body.variant,
            agent=body.agent,
            auto_commit=body.auto_commit,
        )
        return json_response({"id": message.id, "state": message.state}, 202)

    async def abort(request: Request) -> Response:
        entry = entry_of(request)
        body = await decode_body(request, AbortBody)
        if body.message_id is not None and body.message_id not in entry.core.messages:
            raise HTTPProblem(404, f"unknown message {body.message_id}", "message_id")
        entry.core.abort(body.message_id)
        return json_response({"ok": True}, 202)

    async def permission(request: Request) -> Response:
        entry = entry_of(request)
        body = await decode_body(request, PermissionBody)
        entry.core.reply_permission(request.path_params["request_id"], body.reply, body.message)
        return json_response({"ok": True}, 202)

    async def question(request: Request) -> Response:
        entry = entry_of(request)
        body = await decode_body(request, QuestionBody)
        if body.reject == (body.answers is not None):
            raise HTTPProblem(400, "give either answers or reject=true", "answers")
        answers = None if body.reject else body.answers
        entry.core.reply_question(request.path_params["request_id"], answers)
        return json_response({"ok": True}, 202)

    async def events(request: Request) -> Response:
        entry = entry_of(request)
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not raw.isdigit():
            raise HTTPProblem(
                400, f"Last-Event-ID must be an integer, got {raw!r}", "Last-Event-ID"
            )
        follow = request.query_params.get("follow", "1") != "0"
        host.flush_session(entry.row.id)
        return StreamingResponse(
            _sse(host, entry, int(raw), follow),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def metrics(_request: Request) -> Response:
        states = Counter(e.core.state for e in host.sessions.values())
        text = host.metrics.render(states, sorted(host.values.items()))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def healthz(_request: Request) -> Response:
        return json_response({"ok": True, "sessions": len(host.sessions)})

    async def ingest(ws: WebSocket) -> None:
        await _ingest(host, ws)

    routes = [
        Route("/sessions", guarded(create_session), methods=["POST"]),
        Route("/sessions", guarded(list_sessions), methods=["GET"]),
        Route("/sessions/{session_id}", guarded(get_session), methods=["GET"]),
        Route("/sessions/{session_id}", guarded(delete_session), methods=["DELETE"]),
        Route("/sessions/{session_id}/messages", guarded(send_message), methods=["POST"]),
        Route("/sessions/{session_id}/abort", guarded(abort), methods=["POST"]),
        Route(
            "/sessions/{session_id}/permissions/{request_id}", guarded(permission), methods=["POST"]
        ),
        Route("/sessions/{session_id}/questions/{request_id}", guarded(question), methods=["POST"]),
        Route("/sessions/{session_id}/events", guarded(events), methods=["GET"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
        Route("/healthz", guarded(healthz, auth=False), methods=["GET"]),
        WebSocketRoute("/ingest/{session_id}", ingest),
    ]
    return Starlette(routes=routes)


def _sse_line(entry: LogEntry) -> bytes:
    data = msgspec.json.encode({"at": entry.at, **entry.data})
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (entry.id, entry.kind.encode(), data)


async def _sse(
    host: ControlHost, entry: SessionEntry, after: int, follow: bool
) -> AsyncIterator[bytes]:
    assert host.store is not None
    send, receive = anyio.create_memory_object_stream[LogEntry](max_buffer_size=10_000)
    entry.subscribers.add(send)  # subscribe first, then read the store: no gap, dedupe by id
    last = after
    try:
        while True:
            rows = host.store.events(entry.row.id, after=last, limit=1000)
            for row in rows:
                data: dict[str, Any] = msgspec.json.decode(row.data)
                yield _sse_line(LogEntry(row.id, row.at, row.kind, data))
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
                yield _sse_line(item)
                last = item.id
    except (anyio.EndOfStream, anyio.ClosedResourceError):
        return
    finally:
        entry.subscribers.discard(send)
        send.close()


async def _ingest(host: ControlHost, ws: WebSocket) -> None:
    sid = ws.path_params["session_id"]
    header = ws.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    entry = host.check_wrapper_token(sid, token) if scheme.lower() == "bearer" else None
    if entry is None:
        host.metrics.refused_connections += 1
        host.log.warning("wrapper refused: wrong token or unknown session", session=sid)
        await ws.close(code=1008)
        return
    await ws.accept()
    send, receive = anyio.create_memory_object_stream[Frame](max_buffer_size=10_000)
    previous, entry.outq = entry.outq, send
    if previous is not None:
        previous.close()  # a newer connection of the same session replaces the old one

    async def writer() -> None:
        async with receive:
            async for frame in receive:
                await ws.send_text(encode(frame).decode())
                if isinstance(frame, Shutdown):
                    await ws.close(code=1000)
                    return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer)
            try:
                while True:
                    text = await ws.receive_text()
                    try:
                        frame = decode_from_wrapper(text)
                    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                        host.log.warning(
                            "malformed frame from wrapper", session=sid, error=str(exc)
                        )
                        continue
                    host.metrics.frames_in[frame.__class__.__name__.lower()] += 1
                    entry.core.frame(frame)
            except (WebSocketDisconnect, RuntimeError):
                pass
            tg.cancel_scope.cancel()
    finally:
        if entry.outq is send:
            entry.outq = None
            host.wrapper_disconnected(sid)
        send.close()
        host.log.info("wrapper disconnected", session=sid)
