"""The wrapper's job API (HTTP, Starlette): prompts, aborts, answers, status and probes.

Every route needs the bearer token (compared in constant time). Bodies are strict: an unknown
field, a wrong type or a missing ``prompt`` is a 400 whose JSON names the field; an unknown
message or request id is a 404; a wrapper whose agent is gone for good answers 503
``agent_unavailable``. The routes only call ``WrapperCore`` methods — the same ones the control
plane's commands reach — so HTTP and ingest commands cannot behave differently.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fsm.httpjson import HTTPProblem, check_bearer, decode_body, json_response
from fsm.protocol import PermissionCommand, PromptCommand, QuestionCommand
from fsm.request_bodies import AbortBody, PermissionBody, PromptBody, QuestionBody
from fsm.wrapper_core import Unavailable, UnknownMessage, WrapperCore

Handler = Callable[[Request], Awaitable[Response]]


def build_app(
    core: WrapperCore,
    token: str,
    agent_info: Callable[[], dict[str, Any]],
) -> Starlette:
    """``agent_info`` reports the Kilo process (port, pid, health) for ``/job/status``."""

    def guarded(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                check_bearer(request, token)
                return await handler(request)
            except HTTPProblem as problem:
                return problem.response()

        return wrapped

    async def prompt(request: Request) -> Response:
        body = await decode_body(request, PromptBody)
        if not body.prompt.strip():
            raise HTTPProblem(400, "prompt must not be empty", "prompt")
        if body.model is not None and "/" not in body.model:
            raise HTTPProblem(400, "model must be 'provider/model'", "model")
        message_id = body.message_id or f"msg_{uuid.uuid4().hex[:20]}"
        command = PromptCommand(
            message_id=message_id,
            prompt=body.prompt,
            model=body.model,
            variant=body.variant,
            agent=body.agent,
            auto_commit=body.auto_commit,
        )
        try:
            core.prompt(command)
        except Unavailable as exc:
            raise HTTPProblem(503, f"agent_unavailable: {exc}") from None
        return json_response({"message_id": message_id, "state": core.turn(message_id).state}, 202)

    async def abort(request: Request) -> Response:
        body = await decode_body(request, AbortBody)
        try:
            aborted = core.abort(body.message_id)
        except UnknownMessage:
            raise HTTPProblem(404, f"unknown message {body.message_id}", "message_id") from None
        return json_response({"aborted": aborted})

    async def status(_request: Request) -> Response:
        return json_response({**core.status(), "agent": agent_info()})

    async def permission(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        body = await decode_body(request, PermissionBody)
        if core.pending_requests.get(request_id) != "permission":
            raise HTTPProblem(404, f"no pending permission request {request_id}", "request_id")
        core.reply_permission(PermissionCommand(request_id, body.reply, body.message))
        return json_response({"ok": True})

    async def question(request: Request) -> Response:
        request_id = request.path_params["request_id"]
        body = await decode_body(request, QuestionBody)
        if body.reject == (body.answers is not None):
            raise HTTPProblem(400, "give either answers or reject=true", "answers")
        if core.pending_requests.get(request_id) != "question":
            raise HTTPProblem(404, f"no pending question {request_id}", "request_id")
        core.reply_question(QuestionCommand(request_id, None if body.reject else body.answers))
        return json_response({"ok": True})

    async def healthz(_request: Request) -> Response:
        return json_response({"ok": True, "wrapper": core.wrapper.state})

    async def readyz(_request: Request) -> Response:
        ready = core.wrapper.state in ("ready", "running", "idle") and not core.degraded
        body = {
            "ready": ready,
            "wrapper": core.wrapper.state,
            "agent_link": core.link.state if core.link else None,
        }
        return json_response(body, 200 if ready else 503)

    routes = [
        Route("/job/prompt", guarded(prompt), methods=["POST"]),
        Route("/job/abort", guarded(abort), methods=["POST"]),
        Route("/job/status", guarded(status), methods=["GET"]),
        Route("/job/permissions/{request_id}", guarded(permission), methods=["POST"]),
        Route("/job/questions/{request_id}", guarded(question), methods=["POST"]),
        Route("/healthz", guarded(healthz), methods=["GET"]),
        Route("/readyz", guarded(readyz), methods=["GET"]),
    ]
    return Starlette(routes=routes)
