"""What the client raises when the control plane says no.

Every 4xx/5xx answer of the API is an ``ErrorBody`` (``{"error": ..., "field": ...}``, see
``fsm.wire.httpjson``); the client decodes it with that same type and raises ``ApiError``, so a
caller can branch on ``status`` and ``field`` instead of parsing text.
"""

from __future__ import annotations

import msgspec

from fsm.wire.httpjson import ErrorBody


class ApiError(Exception):
    """The control plane refused a request: ``status``, its ``error`` text and the ``field`` (or
    header) it named."""

    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status}: {error}{where}")
        self.status = status
        self.error = error
        self.field = field

    @classmethod
    def from_response(cls, status: int, content: bytes) -> ApiError:
        """From an error answer; a body that is not an ``ErrorBody`` (a proxy's page) is kept as
        the error text, cut short."""
        try:
            body = msgspec.json.decode(content, type=ErrorBody)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return cls(status, content[:300].decode("utf-8", "replace") or "no body")
        return cls(status, body.error, body.field)


class StreamGaveUp(Exception):
    """The event stream could not be resumed within its retry budget."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"event stream lost; {attempts} reconnects failed, the last with {last!r}")
        self.attempts = attempts
        self.last = last
