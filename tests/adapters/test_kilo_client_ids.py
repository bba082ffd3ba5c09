"""Ids from peers never steer a request to another of Kilo's routes (issue 12).

A permission or question request id comes from the job API's URL and from Kilo's events; a
session id from the wrapper's state. Before it goes into a path it is checked (letters, digits,
``_ . -``; not ``.`` or ``..``) and quoted, so ``../session/x/abort`` raises ValueError and no
request at all leaves the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from adapters.kilo.client import AgentClient, segment

pytestmark = pytest.mark.anyio

HOSTILE = [
    "../session/x/abort",
    "..",
    ".",
    "per_1/../../session/x/abort",
    "a/b",
    "a%2Fb",
    "a?x=1",
    "a#frag",
    "a b",
    "per_1\n",
    "",
    "x" * 129,
    "pér_1",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def recording_client() -> tuple[AgentClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.startswith("/session/") and request.method == "GET":
            if request.url.path.endswith("/message"):
                return httpx.Response(200, json=[])
            return httpx.Response(200, json={"id": "ses_1"})
        if request.url.path.endswith("/command"):
            return httpx.Response(200, json={"info": {"id": "m", "role": "assistant"}})
        return httpx.Response(200, json=True)

    return AgentClient("http://kilo.test", "pw", transport=httpx.MockTransport(handler)), seen


CALLS: dict[str, Callable[[AgentClient, str], Awaitable[Any]]] = {
    "reply_permission": lambda c, i: c.reply_permission(i, "once"),
    "reply_question": lambda c, i: c.reply_question(i, [["a"]]),
    "reject_question": lambda c, i: c.reject_question(i),
    "get_session": lambda c, i: c.get_session(i),
    "session_messages": lambda c, i: c.session_messages(i),
    "prompt_async": lambda c, i: c.prompt_async(i, "hi"),
    "abort": lambda c, i: c.abort(i),
    "command": lambda c, i: c.command(i, "init"),
    "summarize": lambda c, i: c.summarize(i, "p/m"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("hostile", HOSTILE)
async def test_a_hostile_id_raises_and_sends_nothing(call: str, hostile: str) -> None:
    client, seen = recording_client()
    try:
        with pytest.raises(ValueError, match="is not an id"):
            await CALLS[call](client, hostile)
    finally:
        await client.aclose()
    assert seen == []


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("reply_permission", "/permission/per_20aebefad001iKZlCvbMjOZuAy/reply"),
        ("reply_question", "/question/per_20aebefad001iKZlCvbMjOZuAy/reply"),
        ("reject_question", "/question/per_20aebefad001iKZlCvbMjOZuAy/reject"),
        ("abort", "/session/per_20aebefad001iKZlCvbMjOZuAy/abort"),
        ("session_messages", "/session/per_20aebefad001iKZlCvbMjOZuAy/message"),
    ],
)
async def test_a_real_id_reaches_exactly_its_route(call: str, expected: str) -> None:
    client, seen = recording_client()
    try:
        await CALLS[call](client, "per_20aebefad001iKZlCvbMjOZuAy")
    finally:
        await client.aclose()
    assert [r.url.path for r in seen] == [expected]


def test_segment_accepts_ids_with_dots_and_dashes_and_quotes_nothing_away() -> None:
    assert segment("ses_a.b-c_1", "session id") == "ses_a.b-c_1"
    assert segment("...", "session id") == "..."  # not a path step: a name like any other
