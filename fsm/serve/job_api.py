"""The wrapper's job API (HTTP, Starlette): prompts, aborts, answers, status and probes.

Every route needs the bearer token (compared in constant time). Bodies are strict: an unknown
field, a wrong type or a missing ``prompt`` is a 400 whose JSON names the field; an unknown
message or request id is a 404; a wrapper whose agent is gone for good answers 503
``agent_unavailable``; a prompt field this wrapper's agent cannot serve (``auto_commit`` on
OpenCode, which has no commit-message route) is a 501 naming the field and the agent. The routes
only call ``WrapperCore`` methods — the same ones the control plane's commands reach — so HTTP and
ingest commands cannot behave differently.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any, cast

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from fsm.serve.core import Unavailable, UnknownMessage, Unsupported, WrapperCore
from fsm.settings.limits import LimitValues, defaults
from fsm.wire.httpjson import ErrorBody, HTTPProblem, decode_body, json_response, path_id
from fsm.wire.openapi import ERROR_HANDLERS, Answer, Operation, document, ident, routes
from fsm.wire.protocol import WRAPPER_VERSION, PermissionCommand, PromptCommand, QuestionCommand
from fsm.wire.request_bodies import (
    AbortBody,
    PermissionBody,
    PromptBody,
    QuestionBody,
    check_prompt,
)


class PromptAccepted(msgspec.Struct):
    message_id: str
    state: str


class AbortAnswer(msgspec.Struct):
    aborted: list[str]
    """The message ids whose turns were told to cancel."""


class Ok(msgspec.Struct):
    ok: bool


class Health(msgspec.Struct):
    ok: bool
    wrapper: str


class Readiness(msgspec.Struct):
    ready: bool
    wrapper: str
    agent_link: str | None


def build_app(
    core: WrapperCore,
    token: str,
    agent_info: Callable[[], dict[str, Any]],
    limits: LimitValues | None = None,
) -> Starlette:
    """``agent_info`` reports the Kilo process (port, pid, health) for ``/job/status``."""
    ops = operations(core, agent_info, limits or defaults())

    return Starlette(routes=routes(ops, token), exception_handlers=ERROR_HANDLERS)


def openapi_document(
    limits: LimitValues,
    core: WrapperCore | None = None,
    agent_info: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The job API's OpenAPI document with ``limits`` in force. Without a core (``fsm-agent
    openapi``) the operations are built only to be described: their handlers are never run."""
    return document(
        title="fsm-agent wrapper job API",
        version=WRAPPER_VERSION,
        description=(
            "One wrapper's agent: send it prompts, abort, answer its permission requests and "
            "questions, read its machines' status. Every route but /openapi.json needs the "
            "wrapper's bearer token."
        ),
        operations=operations(cast(WrapperCore, core), agent_info or dict, limits),
        limits=limits,
    )


def operations(
    core: WrapperCore, agent_info: Callable[[], dict[str, Any]], limits: LimitValues
) -> list[Operation]:
    """Every job-API operation: the one declaration of routes, bodies and answers."""

    async def prompt(request: Request) -> Response:
        body = await decode_body(request, PromptBody, limits.body_bytes)
        check_prompt(body, limits)
        message_id = body.message_id or f"msg_{uuid.uuid4().hex[:20]}"
        command = PromptCommand(
            message_id=message_id,
            prompt=body.prompt,
            model=body.model,
            variant=body.variant,
            agent=body.agent,
            auto_commit=body.auto_commit,
            files=tuple(body.files or ()),
        )
        try:
            core.prompt(command)
        except Unavailable as exc:
            raise HTTPProblem(503, f"agent_unavailable: {exc}") from None
        except Unsupported as exc:
            raise HTTPProblem(501, str(exc), exc.field) from None
        return json_response(PromptAccepted(message_id, core.turn(message_id).state), 202)

    async def abort(request: Request) -> Response:
        body = await decode_body(request, AbortBody, limits.body_bytes)
        try:
            aborted = core.abort(body.message_id)
        except UnknownMessage:
            raise HTTPProblem(404, f"unknown message {body.message_id}", "message_id") from None
        return json_response(AbortAnswer(aborted))

    async def status(_request: Request) -> Response:
        return json_response({**core.status(), "agent": agent_info()})

    async def permission(request: Request) -> Response:
        request_id = path_id(request, "request_id")
        body = await decode_body(request, PermissionBody, limits.body_bytes)
        if core.pending_requests.get(request_id) != "permission":
            raise HTTPProblem(404, f"no pending permission request {request_id}", "request_id")
        core.reply_permission(PermissionCommand(request_id, body.reply, body.message))
        return json_response(Ok(True))

    async def question(request: Request) -> Response:
        request_id = path_id(request, "request_id")
        body = await decode_body(request, QuestionBody, limits.body_bytes)
        if body.reject == (body.answers is not None):
            raise HTTPProblem(400, "give either answers or reject=true", "answers")
        if core.pending_requests.get(request_id) != "question":
            raise HTTPProblem(404, f"no pending question {request_id}", "request_id")
        core.reply_question(QuestionCommand(request_id, None if body.reject else body.answers))
        return json_response(Ok(True))

    async def healthz(_request: Request) -> Response:
        return json_response(Health(True, core.wrapper.state))

    async def readyz(_request: Request) -> Response:
        ready = core.wrapper.state in ("ready", "running", "idle") and not core.degraded
        body = Readiness(ready, core.wrapper.state, core.link.state if core.link else None)
        return json_response(body, 200 if ready else 503)

    async def openapi(_request: Request) -> Response:
        return json_response(document_once())

    # The document depends on the declarations and the limits only: built once, when asked.
    document_once = functools.cache(lambda: openapi_document(limits, core, agent_info))
    rid = ident("request_id", "the agent's request id (from its permission/question event)")
    unavailable = Answer(503, "the agent is gone for good (agent_unavailable)", ErrorBody)
    return [
        Operation(
            "POST",
            "/job/prompt",
            prompt,
            "Run a prompt (idempotent by message_id)",
            (
                Answer(202, "accepted; its turn's state", PromptAccepted),
                Answer(501, "a field needs what this agent lacks (auto_commit)", ErrorBody),
                unavailable,
            ),
            body=PromptBody,
        ),
        Operation(
            "POST",
            "/job/abort",
            abort,
            "Abort the running turn (or one message's)",
            (
                Answer(200, "whether a turn was aborted", AbortAnswer),
                Answer(404, "unknown message", ErrorBody),
            ),
            body=AbortBody,
        ),
        Operation(
            "GET",
            "/job/status",
            status,
            "Every machine's state, timers, turns and the agent process",
            (Answer(200, "the status", dict[str, Any]),),
        ),
        Operation(
            "POST",
            "/job/permissions/{request_id}",
            permission,
            "Answer a pending permission request",
            (Answer(200, "sent to the agent", Ok), Answer(404, "no such request", ErrorBody)),
            body=PermissionBody,
            params=(rid,),
        ),
        Operation(
            "POST",
            "/job/questions/{request_id}",
            question,
            "Answer (or reject) a pending question",
            (Answer(200, "sent to the agent", Ok), Answer(404, "no such question", ErrorBody)),
            body=QuestionBody,
            params=(rid,),
        ),
        Operation("GET", "/healthz", healthz, "Liveness", (Answer(200, "alive", Health),)),
        Operation(
            "GET",
            "/readyz",
            readyz,
            "Readiness: the agent is up and its event link healthy",
            (Answer(200, "ready", Readiness), Answer(503, "not ready", Readiness)),
        ),
        Operation(
            "GET",
            "/openapi.json",
            openapi,
            "This document",
            (Answer(200, "OpenAPI 3.1", dict[str, Any]),),
            auth=False,
        ),
    ]
