"""An HTTP API declared once: each operation names its handler and the msgspec types it decodes
and answers with, and both the Starlette routes and the OpenAPI 3.1 document come from that list.

There is no second declaration to drift: the body a route decodes is the body the document
describes (msgspec writes the JSON Schema of the same type), the bounds on its fields are the
ones the decoder enforces, and the configured limits (``fsm.settings.limits``) are written into the
document as they are in force (``maxLength`` of a prompt, ``limits.body_bytes`` in the
description). ``GET /openapi.json`` serves the document of the running process.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from fsm.settings.limits import LimitValues
from fsm.wire.httpjson import ErrorBody, HTTPProblem, check_bearer, json_response
from fsm.wire.protocol import IDENT_PATTERN

Handler = Callable[[Request], Awaitable[Response]]

JSON = "application/json"
SSE = "text/event-stream"
TEXT = "text/plain"


def sse_event_schema() -> dict[str, Any]:
    """One Server-Sent Event of these APIs (keep-alive comments are not events).

    Before OpenAPI 3.2's ``itemSchema``, the schema of a ``text/event-stream`` answer describes
    each event, as tools (schemathesis among them) read it: the stream is not one string."""
    return {
        "type": "object",
        "description": (
            "one event: id is the log entry's id (give it back as Last-Event-ID to resume after "
            "it), event its kind, data its JSON object"
        ),
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            "event": {"type": "string", "minLength": 1},
            "data": {
                "type": "string",
                "contentMediaType": JSON,
                "contentSchema": {"type": "object"},
            },
        },
        "required": ["id", "event", "data"],
    }


@dataclass(frozen=True)
class Param:
    """A path, query or header parameter: its JSON Schema and what it is for."""

    name: str
    where: str
    """``path``, ``query`` or ``header``"""
    schema: dict[str, Any]
    doc: str
    required: bool = False


def ident(name: str, doc: str) -> Param:
    return Param(name, "path", {"type": "string", "pattern": IDENT_PATTERN}, doc, required=True)


@dataclass(frozen=True)
class Answer:
    status: int
    doc: str
    body: Any = None
    """A msgspec type (JSON), or None for no body."""
    media: str = JSON


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    answers: tuple[Answer, ...]
    body: Any = None
    params: tuple[Param, ...] = ()
    auth: bool = True
    tags: tuple[str, ...] = ()
    doc: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def routes(operations: Sequence[Operation], bearer: str) -> list[BaseRoute]:
    """Starlette routes, each handler wrapped in what both APIs share: the bearer check of an
    operation that needs it, and an ``HTTPProblem`` answered as its JSON error."""

    def guarded(op: Operation) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                if op.auth:
                    check_bearer(request, bearer)
                return await op.handler(request)
            except HTTPProblem as problem:
                return problem.response()

        return handle

    return [Route(op.path, guarded(op), methods=[op.method]) for op in operations]


async def _no_route(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    error = "no such route" if status == 404 else f"{request.method} is not allowed here"
    return JSONResponse({"error": error, "field": "path"}, status_code=status)


ERROR_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    404: _no_route,
    405: _no_route,
}
"""Starlette's own 404/405 answer in the same JSON shape as every other error."""


def _status_errors(op: Operation) -> tuple[Answer, ...]:
    """The error answers every operation can give, so no documented route answers an
    undocumented status."""
    errors = [Answer(400, "bad input: the body names the field", ErrorBody)]
    if op.auth:
        errors.append(Answer(401, "missing or wrong bearer token", ErrorBody))
    if op.body is not None:
        errors.append(Answer(413, "body larger than limits.body_bytes", ErrorBody))
    return tuple(errors)


def document(
    *,
    title: str,
    version: str,
    description: str,
    operations: Sequence[Operation],
    limits: LimitValues,
    extra_types: Sequence[Any] = (),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``operations``, with the limits in force."""
    types: list[Any] = [ErrorBody, *extra_types]
    for op in operations:
        if op.body is not None:
            types.append(op.body)
        types.extend(a.body for a in op.answers if a.body is not None)
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(
        unique, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(unique, schemas, strict=True))
    bodies = {ref_of[op.body]["$ref"].rsplit("/", 1)[-1] for op in operations if op.body}
    _apply_limits(components, bodies, limits)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()}_{_op_name(op.path)}",
            "responses": {},
        }
        if op.doc:
            item["description"] = op.doc
        if op.tags:
            item["tags"] = list(op.tags)
        params = _params(op)
        if params:
            item["parameters"] = [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "schema": p.schema,
                    "description": p.doc,
                }
                for p in params
            ]
        if op.body is not None:
            item["requestBody"] = {
                "required": True,
                "description": f"at most {limits.body_bytes} bytes (limits.body_bytes)",
                "content": {JSON: {"schema": ref_of[op.body]}},
            }
        if op.auth:
            item["security"] = [{"bearer": []}]
        else:
            item["security"] = []
        declared = {a.status for a in op.answers}
        for answer in (*op.answers, *(e for e in _status_errors(op) if e.status not in declared)):
            response: dict[str, Any] = {"description": answer.doc}
            if answer.body is not None:
                response["content"] = {answer.media: {"schema": ref_of[answer.body]}}
            elif answer.media == SSE:
                response["content"] = {SSE: {"schema": sse_event_schema()}}
            elif answer.media != JSON:
                response["content"] = {answer.media: {"schema": {"type": "string"}}}
            item["responses"][str(answer.status)] = response
        item.update(op.extra)
        paths.setdefault(op.path, {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


_TEMPLATE = re.compile(r"{([^{}:]+)(?::[^{}]*)?}")


def _params(op: Operation) -> tuple[Param, ...]:
    """The declared parameters, and every path parameter of the route's template that is not
    among them: the template is what the router matches, so the document cannot lack one (each
    is read with ``path_id``, hence an id)."""
    declared = {p.name for p in op.params if p.where == "path"}
    implied = tuple(
        ident(name, f"the {name.replace('_', ' ')}")
        for name in _TEMPLATE.findall(op.path)
        if name not in declared
    )
    return (*implied, *op.params)


def _op_name(path: str) -> str:
    parts = [p.strip("{}") for p in path.strip("/").split("/") if p]
    return "_".join(parts) or "root"


def _apply_limits(components: dict[str, Any], bodies: set[str], limits: LimitValues) -> None:
    """Write the configured prompt bound into every request body with a ``prompt`` field.

    Only into what is decoded: a prompt the process answers with (a session's messages) was
    accepted under the limit in force then, which an operator may since have lowered."""
    for name in bodies:
        prompt = components.get(name, {}).get("properties", {}).get("prompt")
        if isinstance(prompt, dict) and prompt.get("type") == "string":
            prompt["maxLength"] = limits.prompt_chars


def openapi_handler(doc: Callable[[], dict[str, Any]]) -> Handler:
    async def serve(_request: Request) -> Response:
        return json_response(doc())

    return serve
