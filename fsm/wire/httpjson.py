"""JSON request/response helpers shared by the wrapper's job API and the control plane's API.

Bad input must get a 4xx whose JSON body names the field; msgspec's validation messages already
carry the path (``$.prompt``), so bodies are decoded with msgspec into strict structs and the
message is turned into ``{"error": ..., "field": ...}``.
"""

from __future__ import annotations

import hmac
import re
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fsm.wire.protocol import IDENT_PATTERN

T = TypeVar("T")
_IDENT = re.compile(IDENT_PATTERN)
_PATH = re.compile(r"at `\$\.?([^`]*)`")
_NAMED = re.compile(r"field `([^`]*)`")


class HTTPProblem(Exception):
    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.error}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status)


class ErrorBody(msgspec.Struct):
    """Every 4xx/5xx answer of both APIs: what was wrong, and which field (or header) it was."""

    error: str
    field: str | None = None


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``: from
    ``Content-Length`` before reading anything, else while reading (a chunked body is never held
    past the bound; a 200 MB body once cost the control plane 380 MB of RSS)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit() or len(declared) > 18:
            raise HTTPProblem(400, "Content-Length must be a decimal integer", "Content-Length")
        if int(declared) > max_bytes:
            raise HTTPProblem(413, _too_large(int(declared), max_bytes), "body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPProblem(413, _too_large(size, max_bytes, at_least=True), "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, *, at_least: bool = False) -> str:
    more = "at least " if at_least else ""
    return f"body is {more}{size} bytes; the limit is {limit} (limits.body_bytes)"


async def decode_body(request: Request, kind: type[T], max_bytes: int) -> T:
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        named = _NAMED.search(text)
        field = match.group(1) if match else named.group(1) if named else "body"
        raise HTTPProblem(400, f"invalid body: {text}", field or "body") from None
    except msgspec.DecodeError as exc:
        raise HTTPProblem(400, f"body is not valid JSON: {exc}", "body") from None


def path_id(request: Request, name: str) -> str:
    """A path parameter that names something (a session, a request): checked against the id
    pattern before it is used anywhere, least of all in another server's URL."""
    value: str = request.path_params[name]
    if not _IDENT.fullmatch(value):
        raise HTTPProblem(400, f"{name} must match {IDENT_PATTERN}", name)
    return value


def check_bearer(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPProblem(401, "missing or wrong bearer token", "Authorization")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")
