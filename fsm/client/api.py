"""``ControlClient``: the control plane's client API, typed with the server's own msgspec types.

The request bodies are ``fsm.wire.request_bodies`` and ``fsm.control.views.CreateSessionBody``,
the answers ``fsm.control.views``: the very types the server decodes and encodes, so there is no
second copy of a shape to drift. ``ROUTES`` names, per call, the method, path, success status
and answer type; ``tests/client/test_routes.py`` checks every row against the server's own
declaration (``fsm.control.api.operations``), so a route the server changes fails that test
rather than a user's call.

A refusal (any status but the declared one) raises ``ApiError`` with the status and the field
the server named. The API key goes only into the ``Authorization`` header; ``repr`` never
shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import anyio
import httpx
import msgspec

from fsm.client.errors import ApiError
from fsm.client.events import DEFAULT_RETRY, Event, EventStream, Retry
from fsm.control.core import TERMINAL, Message
from fsm.control.views import (
    Accepted,
    CreateSessionBody,
    ListedSession,
    MessageAccepted,
    SessionDetail,
    SessionStopping,
)
from fsm.wire.request_bodies import AbortBody, PermissionBody, PromptBody, QuestionBody

T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    """The server's path template (``{session_id}``…), filled with quoted ids."""
    status: int
    answer: Any
    body: Any = None


ROUTES: dict[str, Route] = {
    "create_session": Route("POST", "/sessions", 201, SessionDetail, CreateSessionBody),
    "list_sessions": Route("GET", "/sessions", 200, list[ListedSession]),
    "get_session": Route("GET", "/sessions/{session_id}", 200, SessionDetail),
    "delete_session": Route("DELETE", "/sessions/{session_id}", 202, SessionStopping),
    "send_message": Route(
        "POST", "/sessions/{session_id}/messages", 202, MessageAccepted, PromptBody
    ),
    "abort": Route("POST", "/sessions/{session_id}/abort", 202, Accepted, AbortBody),
    "reply_permission": Route(
        "POST", "/sessions/{session_id}/permissions/{request_id}", 202, Accepted, PermissionBody
    ),
    "reply_question": Route(
        "POST", "/sessions/{session_id}/questions/{request_id}", 202, Accepted, QuestionBody
    ),
}
"""Each call's route; the events stream (SSE) is ``fsm.client.events``."""


class ControlClient:
    """An async client of one control plane (``fsm-agent control``)::

        async with ControlClient("http://127.0.0.1:8080", api_key) as client:
            session = await client.create_session()
            sent = await client.send_message(session.id, "write hello.txt")
            async for event in client.events(session.id):
                ...

    ``transport`` is httpx's (tests hand in their own); ``retry`` how event streams resume.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        retry: Retry = DEFAULT_RETRY,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"ControlClient({self.base_url!r})"

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- sessions -------------------------------------------------------------------------------

    async def create_session(self, body: CreateSessionBody | None = None) -> SessionDetail:
        """A new session; its wrapper starts at once."""
        result: SessionDetail = await self._call("create_session", body or CreateSessionBody())
        return result

    async def list_sessions(self) -> list[ListedSession]:
        result: list[ListedSession] = await self._call("list_sessions")
        return result

    async def get_session(self, session_id: str) -> SessionDetail:
        """The session with its messages, armed timers (deadlines, wall clock) and ``now``."""
        result: SessionDetail = await self._call("get_session", session_id=session_id)
        return result

    async def delete_session(self, session_id: str) -> SessionStopping:
        result: SessionStopping = await self._call("delete_session", session_id=session_id)
        return result

    # -- messages -------------------------------------------------------------------------------

    async def send_message(self, session_id: str, prompt: str | PromptBody) -> MessageAccepted:
        """Send a prompt: a plain string, or a ``PromptBody`` for a model, files, an idempotency
        ``message_id``…"""
        body = PromptBody(prompt=prompt) if isinstance(prompt, str) else prompt
        result: MessageAccepted = await self._call("send_message", body, session_id=session_id)
        return result

    async def list_messages(self, session_id: str) -> list[Message]:
        """The session's messages, oldest first (they are part of the session's detail)."""
        return (await self.get_session(session_id)).messages

    async def get_message(self, session_id: str, message_id: str) -> Message:
        for message in await self.list_messages(session_id):
            if message.id == message_id:
                return message
        raise ApiError(404, f"unknown message {message_id}", "message_id")

    async def wait_message(
        self, session_id: str, message_id: str, timeout: float | None = None
    ) -> Message:
        """The message once it has its one outcome (``completed``, ``failed``, ``cancelled``),
        read from the event stream (no polling); ``TimeoutError`` past ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            message = await self.get_message(session_id, message_id)
            if message.state in TERMINAL:
                return message
            # From the start of the log: an outcome between the read above and the stream's
            # start is in it, so it cannot be missed.
            async with self.events(session_id) as stream:
                async for event in stream:
                    if (
                        event.kind == "message"
                        and event.data.get("id") == message_id
                        and event.data.get("state") in TERMINAL
                    ):
                        break
            return await self.get_message(session_id, message_id)

    async def abort(self, session_id: str, message_id: str | None = None) -> Accepted:
        """Abort the running turn, or only ``message_id``."""
        result: Accepted = await self._call("abort", AbortBody(message_id), session_id=session_id)
        return result

    async def reply_permission(
        self,
        session_id: str,
        request_id: str,
        reply: Literal["once", "always", "reject"] | PermissionBody,
    ) -> Accepted:
        body = PermissionBody(reply) if isinstance(reply, str) else reply
        result: Accepted = await self._call(
            "reply_permission", body, session_id=session_id, request_id=request_id
        )
        return result

    async def reply_question(
        self, session_id: str, request_id: str, answers: list[list[str]] | None
    ) -> Accepted:
        """Answer the agent's question (one list of chosen labels per question), or reject it
        with ``None``."""
        body = QuestionBody(answers=answers) if answers is not None else QuestionBody(reject=True)
        result: Accepted = await self._call(
            "reply_question", body, session_id=session_id, request_id=request_id
        )
        return result

    # -- events ---------------------------------------------------------------------------------

    def events(
        self, session_id: str, *, after: int = 0, follow: bool = True, retry: Retry | None = None
    ) -> EventStream:
        """The session's log after ``after``, then (``follow``) its live tail, resumed on its own
        after a dropped connection; with ``follow=False`` it ends at the present."""
        return EventStream(
            self._http, session_id, after=after, follow=follow, retry=retry or self.retry
        )

    # -- plumbing -------------------------------------------------------------------------------

    async def _call(self, name: str, body: Any = None, **ids: str) -> Any:
        route = ROUTES[name]
        path = route.path.format(**{k: quote(v, safe="") for k, v in ids.items()})
        content = msgspec.json.encode(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else {}
        response = await self._http.request(route.method, path, content=content, headers=headers)
        if response.status_code != route.status:
            raise ApiError.from_response(response.status_code, response.content)
        return msgspec.json.decode(response.content, type=route.answer)


__all__ = ["ROUTES", "ControlClient", "Event", "Route"]
