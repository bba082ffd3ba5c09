"""A typed async client for exactly the part of Kilo's HTTP API the wrapper uses.

OpenCode serves the same API (Kilo is its fork): the client takes the agent's ``AgentSpec``
(``adapters.agents.base``) for its basic-auth user and its capabilities. A call the agent lacks
(``commit_message`` on OpenCode) raises ``AgentUnsupported`` before any request; an answer that is
HTML (OpenCode's web UI answers routes it does not have) raises ``AgentError`` with status 501,
never a JSON decode error.

Responses are decoded with msgspec into the few fields we read (unknown fields are ignored, so
Kilo adding fields never breaks us; a field we rely on changing type fails loudly at decode).
Events stay plain dicts: they are forwarded verbatim to the control plane, and only the turn
translator looks inside them.

Why the event subscription looks the way it does (``shared/kilo/README.md`` §6, §8):

* ``GET /event`` carries the events of the directory Kilo was started in (the wrapper's
  workdir), each as one ``data: <json>`` line; there are no ids, no ``event:`` fields, no replay.
  It is read on a plain socket (``event_stream``): Kilo writes one HTTP chunk per event, and
  httpx's chunk-at-a-time streaming cost more than the wrapper's whole work on an event.
* A SIGKILLed Kilo ends the stream with a bare FIN (``StreamBroken``; httpx, for other URLs,
  raises ``RemoteProtocolError``); a SIGTERMed one ends it cleanly. Both end the async iterator;
  the caller decides what it means.
* There is no read timeout on the stream: silence is detected by the agent_link machine's
  silence window, not by a socket timeout that would fire on a healthy but quiet stream.
* Leaving the ``subscribe_events`` context closes the HTTP connection at once, so an old
  generation's stream cannot keep delivering after its unsubscription.

Ids that go into a URL path (Kilo's session ids, permission and question request ids) reach here
from the job API and from Kilo's events, i.e. from peers. Each is checked against ``ID_PATTERN``
and percent-quoted (``segment``) before use, so ``../session/x/abort`` can never address another
route of Kilo's. The job API validates them too; this is the last line, where the path is built.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from adapters.agents.base import COMMIT_MESSAGE, AgentSpec
from adapters.kilo import event_stream
from adapters.kilo.spec import KILO
from fsm.agents.events import error_text
from fsm.wire.protocol import FilePart

USERNAME = "kilo"
ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""What a Kilo id looks like (``ses_…``, ``per_…``, ``que_…``), with room to spare."""


BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def ascending_id(prefix: str, time_ms: int, seed: str) -> str:
    """A Kilo id (``msg_…``, ``prt_…``) for ``seed`` made at ``time_ms``, in Kilo's own format.

    Why Kilo's format and not just ``msg_<our id>``: Kilo's document only asks for the prefix
    (``^msg``), but Kilo orders a session's messages by id, and its prompt loop stops when the
    last assistant message's id sorts after the last user message's. A user message whose id
    sorts before the previous answer would be taken as answered and never run. Kilo's ascending
    ids are ``<prefix>_`` + 12 hex digits of ``time_ms * 0x1000 + counter`` (its low 48 bits) +
    14 base-62 characters (``shared/kilo/README.md`` §3; e.g. ``msg_233e51e2a001…``). Ours use
    counter 0, so what Kilo creates in the same millisecond afterwards (the answer) still sorts
    after it; the tail is taken from a hash of ``seed``, so the same seed and time always give
    the same id (a resubmission sends exactly the id of the first submission).
    """
    stamp = (time_ms * 0x1000) & 0xFFFF_FFFF_FFFF
    number = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    tail = []
    for _ in range(14):
        number, digit = divmod(number, 62)
        tail.append(BASE62[digit])
    return f"{prefix}_{stamp:012x}{''.join(tail)}"


def segment(value: str, what: str) -> str:
    """``value`` as one URL path segment: validated by ``ID_PATTERN`` (``.`` and ``..`` refused:
    they would climb the path), then quoted with nothing safe. Raises ValueError naming ``what``.
    """
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{what}: {value!r} is not an id (letters, digits, '_', '.', '-')")
    return quote(value, safe="")


class AgentError(Exception):
    """Kilo answered with an HTTP error; ``status`` and Kilo's own message are kept."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status
        self.body = body


class Session(msgspec.Struct):
    id: str
    directory: str = ""
    title: str = ""
    version: str = ""


class SessionStatus(msgspec.Struct):
    type: str
    """idle | busy | retry | offline"""
    message: str | None = None
    attempt: int | None = None


class MessageInfo(msgspec.Struct):
    id: str
    role: str
    sessionID: str = ""
    parentID: str | None = None
    """For a reply: the user message it answers (both agents)."""
    finish: str | None = None
    error: dict[str, Any] | None = None
    time: dict[str, Any] = {}

    def error_text(self) -> str:
        return error_text(self.error) if self.error is not None else ""

    @property
    def completed(self) -> bool:
        return "completed" in self.time


class Message(msgspec.Struct):
    info: MessageInfo
    parts: list[dict[str, Any]] = []


class PendingRequest(msgspec.Struct):
    """A permission request or question still waiting (the fields both agents send)."""

    id: str
    sessionID: str = ""


class Health(msgspec.Struct):
    healthy: bool
    version: str = ""


def _checked_message_id(message_id: str) -> str:
    if not message_id.startswith("msg_") or not ID_PATTERN.fullmatch(message_id):
        raise ValueError(f"message id: {message_id!r} is not a Kilo message id (msg_…)")
    return message_id


def file_parts(files: Sequence[FilePart], message_id: str | None) -> list[dict[str, Any]]:
    """Kilo's ``file`` parts for a prompt's files (``data:`` URLs, checked by the API that took
    them). With a message id each part's id derives from it, as the text part's does, so a
    resubmission replaces the parts instead of adding them again."""
    parts: list[dict[str, Any]] = []
    for i, file in enumerate(files, 1):
        part: dict[str, Any] = {"type": "file", "mime": file.mime, "url": file.url}
        if file.filename is not None:
            part["filename"] = file.filename
        if message_id is not None:
            part["id"] = f"prt_{message_id.removeprefix('msg_')}{i:02d}"
        parts.append(part)
    return parts


def split_model(model: str) -> dict[str, str]:
    """``"provider/model"`` (the form users type) into Kilo's ``{providerID, modelID}``."""
    provider, sep, model_id = model.partition("/")
    if not sep or not provider or not model_id:
        raise ValueError(f"model: expected 'provider/model', got {model!r}")
    return {"providerID": provider, "modelID": model_id}


class AgentClient:
    def __init__(
        self,
        url: str,
        password: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        spec: AgentSpec = KILO,
    ) -> None:
        self.url = url
        self.spec = spec
        self._auth = (spec.username, password) if password else None
        self._timeout = timeout
        self._transport = transport
        self._http = self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, auth=self._auth, timeout=self._timeout, transport=self._transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> bytes:
        response = await self._http.request(
            method, path, json=json, timeout=self._timeout if timeout is None else timeout
        )
        if response.status_code >= 400:
            raise AgentError(method, path, response.status_code, response.text)
        if response.headers.get("content-type", "").startswith("text/html"):
            # A route the agent lacks, answered by its web UI (OpenCode 1.18.33: 200 + HTML).
            raise AgentError(method, path, 501, f"not supported by this agent ({self.spec.name})")
        return response.content

    # -- health and events ----------------------------------------------------------------------

    async def health(self, timeout: float = 5.0) -> bool:
        """True when Kilo answers healthy within ``timeout``; a SIGSTOPped Kilo never answers."""
        try:
            body = await self._call("GET", "/global/health", timeout=timeout)
        except (httpx.HTTPError, AgentError):
            return False
        return msgspec.json.decode(body, type=Health).healthy

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        if self._transport is None and event_stream.supported(self.url):
            # The hot path (every event of Kilo's): a plain socket, not httpx's chunk-at-a-time
            # plumbing; a connection of its own, closed when the context is left.
            async with event_stream.open_event_stream(self.url, "/event", self._auth) as opened:
                status, error, chunks = opened
                if status >= 400:
                    raise AgentError("GET", "/event", status, error.decode(errors="replace"))
                yield parse_sse_bytes(chunks)
            return
        # A client of its own: closing it tears the stream down without touching other calls.
        async with (
            self._new_client() as http,
            http.stream("GET", "/event", timeout=httpx.Timeout(10.0, read=None)) as response,
        ):
            if response.status_code >= 400:
                body = (await response.aread()).decode(errors="replace")
                raise AgentError("GET", "/event", response.status_code, body)
            yield parse_sse_bytes(response.aiter_bytes())

    # -- sessions and prompts -------------------------------------------------------------------

    async def create_session(self, title: str | None = None) -> Session:
        body: dict[str, Any] = {} if title is None else {"title": title}
        return msgspec.json.decode(await self._call("POST", "/session", json=body), type=Session)

    async def get_session(self, session_id: str) -> Session:
        sid = segment(session_id, "session id")
        return msgspec.json.decode(await self._call("GET", f"/session/{sid}"), type=Session)

    async def session_status(self) -> dict[str, SessionStatus]:
        """Only non-idle sessions are listed: absence means idle."""
        raw = await self._call("GET", "/session/status")
        return msgspec.json.decode(raw, type=dict[str, SessionStatus])

    async def session_messages(self, session_id: str, limit: int = 10) -> list[Message]:
        sid = segment(session_id, "session id")
        raw = await self._call("GET", f"/session/{sid}/message?limit={int(limit)}")
        return msgspec.json.decode(raw, type=list[Message])

    async def prompt_async(
        self,
        session_id: str,
        text: str,
        *,
        model: str | None = None,
        agent: str | None = None,
        variant: str | None = None,
        message_id: str | None = None,
        files: Sequence[FilePart] = (),
    ) -> None:
        """Queue a prompt (204 at once); the turn's end arrives as ``session.turn.close``.

        ``message_id`` (``msg_…``, see ``ascending_id``) names the user message Kilo stores: a
        second prompt with the same id replaces it instead of adding another (measured on
        7.7.9: the LLM runs again, the history keeps one user message). Its text part gets an
        id derived from it (``prt_`` + the same tail): without one, Kilo appends a second part
        with the same text to the replaced message, and the model reads the prompt twice.
        """
        part: dict[str, Any] = {"type": "text", "text": text}
        body: dict[str, Any] = {"parts": [part, *file_parts(files, message_id)]}
        if message_id is not None:
            body["messageID"] = _checked_message_id(message_id)
            part["id"] = "prt_" + message_id.removeprefix("msg_")
        if model:
            body["model"] = split_model(model)
        if agent:
            body["agent"] = agent
        if variant:
            body["variant"] = variant
        await self._call(
            "POST", f"/session/{segment(session_id, 'session id')}/prompt_async", json=body
        )

    async def abort(self, session_id: str) -> bool:
        raw = await self._call("POST", f"/session/{segment(session_id, 'session id')}/abort")
        return bool(msgspec.json.decode(raw))

    async def command(
        self,
        session_id: str,
        command: str,
        arguments: str = "",
        *,
        model: str | None = None,
        message_id: str | None = None,
        files: Sequence[FilePart] = (),
    ) -> Message:
        """Run a slash command (synchronous in Kilo: returns when its turn is done). Kilo
        expands the command's template into the user message; ``files`` go with it."""
        body: dict[str, Any] = {"command": command, "arguments": arguments}
        if model:
            body["model"] = model
        if message_id is not None:
            body["messageID"] = _checked_message_id(message_id)
        if files:
            body["parts"] = file_parts(files, message_id)
        sid = segment(session_id, "session id")
        raw = await self._call("POST", f"/session/{sid}/command", json=body, timeout=None)
        return msgspec.json.decode(raw, type=Message)

    async def summarize(self, session_id: str, model: str) -> bool:
        sid = segment(session_id, "session id")
        raw = await self._call(
            "POST", f"/session/{sid}/summarize", json=split_model(model), timeout=None
        )
        return bool(msgspec.json.decode(raw))

    async def delete_session(self, session_id: str) -> bool:
        """Delete a session and its history (both agents: ``DELETE /session/{id}``)."""
        raw = await self._call("DELETE", f"/session/{segment(session_id, 'session id')}")
        return bool(msgspec.json.decode(raw))

    async def commit_message(self, path: str, files: list[str] | None = None) -> dict[str, Any]:
        """Kilo writes a commit message for ``path``'s changes; AgentUnsupported elsewhere."""
        self.spec.require(COMMIT_MESSAGE)
        body: dict[str, Any] = {"path": path}
        if files:
            body["selectedFiles"] = files
        raw = await self._call("POST", "/commit-message", json=body, timeout=None)
        result: dict[str, Any] = msgspec.json.decode(raw)
        return result

    # -- interactive requests -------------------------------------------------------------------

    async def pending_permissions(self) -> list[PendingRequest]:
        """The permission requests waiting for a reply (``GET /permission``): what a restarted
        wrapper rebuilds its turn's ``waiting_user`` state from."""
        raw = await self._call("GET", "/permission")
        return msgspec.json.decode(raw, type=list[PendingRequest])

    async def pending_questions(self) -> list[PendingRequest]:
        """The questions waiting for an answer (``GET /question``), as for permissions."""
        raw = await self._call("GET", "/question")
        return msgspec.json.decode(raw, type=list[PendingRequest])

    async def reply_permission(
        self, request_id: str, reply: str, message: str | None = None
    ) -> bool:
        body: dict[str, Any] = {"reply": reply}
        if message is not None:
            body["message"] = message
        rid = segment(request_id, "permission request id")
        raw = await self._call("POST", f"/permission/{rid}/reply", json=body)
        return bool(msgspec.json.decode(raw))

    async def reply_question(self, request_id: str, answers: list[list[str]]) -> bool:
        rid = segment(request_id, "question request id")
        raw = await self._call("POST", f"/question/{rid}/reply", json={"answers": answers})
        return bool(msgspec.json.decode(raw))

    async def reject_question(self, request_id: str) -> bool:
        raw = await self._call(
            "POST", f"/question/{segment(request_id, 'question request id')}/reject"
        )
        return bool(msgspec.json.decode(raw))


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events to JSON payloads. Kilo sends one ``data:`` line per event, but the
    parser follows the SSE rules anyway (multi-line data joined, comments and other fields
    skipped) so a proxy that re-chunks the stream cannot break it."""
    data: list[str] = []
    async for line in lines:
        if line == "":
            if data:
                payload = "\n".join(data)
                data = []
                try:
                    event = msgspec.json.decode(payload)
                except msgspec.DecodeError:
                    continue
                if isinstance(event, dict):
                    yield event
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)


async def parse_sse_bytes(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """``parse_sse`` on the raw body: the same events, without decoding every chunk to text and
    splitting it again into lines first (the stream's hot path: Kilo sends one HTTP chunk per
    event). Lines end with LF, CRLF or CR, as the SSE rules (and httpx's line splitter) say;
    the JSON is decoded from the bytes as they came."""
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # a CRLF may be split across chunks: wait for the LF
                head, buffer = buffer[:-1], b"\r"
            else:
                head, buffer = buffer, b""
            buffer = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + buffer
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line:
                if line.startswith(b"data:"):
                    value = line[5:]
                    data.append(value[1:] if value.startswith(b" ") else value)
                elif line == b"data":
                    data.append(b"")
                # Comments (":...") and other fields (event:, id:, retry:) carry nothing we use.
            elif data:
                event = _sse_event(data)
                data = []
                if event is not None:
                    yield event
    if buffer == b"\r" and data:  # the stream ended on a CR: that was the blank line
        event = _sse_event(data)
        if event is not None:
            yield event


def _sse_event(data: list[bytes]) -> dict[str, Any] | None:
    try:
        event = msgspec.json.decode(data[0] if len(data) == 1 else b"\n".join(data))
    except msgspec.DecodeError:
        return None
    return event if isinstance(event, dict) else None


KiloClient = AgentClient
"""The name this client had before OpenCode joined the agent port; kept for callers outside the
project."""
