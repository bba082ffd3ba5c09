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

T = TypeVar("T")
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


async def decode_body(request: Request, kind: type[T]) -> T:
    raw = await request.body()
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


def check_bearer(request: Request, token: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPProblem(401, "missing or wrong bearer token", "Authorization")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")
