"""Contract: every request ``AgentClient`` makes is one the agent's own OpenAPI document (``GET
/doc``) declares — method, path (with its parameter patterns), query parameters, JSON body against
the documented schema — and gets a status the document lists; for each agent the client serves
(Kilo 7.7.9 and OpenCode 1.18.33, issue 17). A capability the agent lacks (OpenCode: no
``/commit-message``) must be refused by the client before any request.

The requests are not a list copied into this test: the client runs against the real server with a
transport that records what it actually sends, and the tour must call every public method of the
client (a method added later without a tour step fails the test). So the client cannot drift from
Kilo's API without this test noticing, whichever side moves.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest

from adapters.agents.base import AgentSpec, AgentUnsupported
from adapters.agents.registry import AGENTS
from adapters.kilo.binary import AgentNotFound, find_agent
from adapters.kilo.client import AgentClient, AgentError, ascending_id
from adapters.kilo.process import AgentServer, start_agent
from fsm.agents.dialect import dialect
from tests.fakes.fake_llm import FakeLLM

pytestmark = [pytest.mark.kilo, pytest.mark.anyio]

FIXTURES = Path(__file__).parents[1] / "fixtures"
EXCERPTS = {
    "kilo": FIXTURES / "kilo" / "openapi-7.7.9-excerpt.json",
    "opencode": FIXTURES / "opencode" / "openapi-1.18.33-excerpt.json",
}
"""The client's operations as each agent documented them (see each one's ``x-excerpt``)."""
EXCERPT = EXCERPTS["kilo"]


@pytest.fixture(params=sorted(EXCERPTS))
def spec(request: pytest.FixtureRequest) -> AgentSpec:
    """Each agent server the client serves (issue 17); one not installed skips, naming it."""
    agent = AGENTS[str(request.param)]
    try:
        find_agent(agent)
    except AgentNotFound as exc:
        pytest.skip(f"{agent.name} not installed (just setup / scripts/setup-opencode.sh): {exc}")
    return agent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int


class Recording(httpx.AsyncBaseTransport):
    """A real HTTP transport that remembers each request and the status it got.

    It closes like any transport: the tour goes on calling after its event subscription ended,
    so a client that let the subscription's own client close the transport it was given fails.
    """

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        body = json.loads(raw) if raw else None
        response = await self.inner.handle_async_request(request)
        self.exchanges.append(
            Exchange(
                request.method,
                request.url.path,
                dict(request.url.params),
                body,
                response.status_code,
            )
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- the check ------------------------------------------------------------------------------------


def _template_regex(template: str, params: dict[str, dict[str, Any]]) -> re.Pattern[str]:
    def segment(match: re.Match[str]) -> str:
        return f"(?P<{match.group(1)}>[^/]+)"

    return re.compile("^" + re.sub(r"\\{(\w+)\\}", segment, re.escape(template)) + "$")


def _operation(doc: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any], dict]:
    """The documented operation for a concrete request path, with its path parameters."""
    for template, item in doc["paths"].items():
        op = item.get(method.lower())
        if op is None:
            continue
        params = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "path"}
        found = _template_regex(template, params).match(path)
        if found is not None:
            return template, op, found.groupdict()
    raise LookupError(f"{method} {path}: no such operation in Kilo's OpenAPI document")


def _validate(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    rooted = {**schema, "components": doc["components"]}  # '#/components/...' resolves here
    validator = jsonschema.Draft202012Validator(rooted)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
        for e in validator.iter_errors(value)
    ]


def contract_problems(doc: dict[str, Any], exchange: Exchange) -> list[str]:
    """What in one request (and its status) Kilo's document does not allow; empty if all fits."""
    where = f"{exchange.method} {exchange.path}"
    try:
        template, op, path_values = _operation(doc, exchange.method, exchange.path)
    except LookupError as exc:
        return [str(exc)]
    where = f"{exchange.method} {template}"
    problems: list[str] = []
    params = op.get("parameters", [])
    for param in params:
        if param["in"] == "path":
            problems += [
                f"{where}: path parameter {param['name']}={path_values[param['name']]!r}: {p}"
                for p in _validate(doc, param["schema"], path_values[param["name"]])
            ]
    documented_query = {p["name"]: p for p in params if p["in"] == "query"}
    for name, value in exchange.query.items():
        if name not in documented_query:
            problems.append(f"{where}: query parameter {name!r} is not documented")
            continue
        schema = documented_query[name]["schema"]
        typed: Any = int(value) if schema.get("type") == "integer" else value
        problems += [f"{where}: query {name}: {p}" for p in _validate(doc, schema, typed)]
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    if exchange.body is not None:
        if not body_schema:
            problems.append(f"{where}: sends a JSON body the operation does not take")
        else:
            problems += [
                f"{where}: {p}" for p in _validate(doc, body_schema["schema"], exchange.body)
            ]
    elif op.get("requestBody", {}).get("required"):
        problems.append(f"{where}: the operation requires a body; none was sent")
    if str(exchange.status) not in op["responses"]:
        problems.append(
            f"{where}: answered {exchange.status}, not among the documented "
            f"{sorted(op['responses'])}"
        )
    return problems


# -- the tour -------------------------------------------------------------------------------------


def _git_workdir(root: Path) -> Path:
    work = root / "work"
    work.mkdir()
    for args in (
        ["init", "-q"],
        [
            "-c",
            "user.email=t@e.st",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "0",
        ],
    ):
        subprocess.run(["git", *args], cwd=work, check=True)
    (work / "hello.txt").write_text("a change to describe\n")
    return work


async def _wait_for(events: Any, match: Callable[[dict[str, Any]], bool], what: str) -> dict:
    with anyio.fail_after(30, shield=False):
        async for event in events:
            if match(event):
                return dict(event)
    raise AssertionError(f"the stream ended before {what}")


async def _bracketed(
    events: AsyncIterator[dict[str, Any]], spec: AgentSpec, session: str
) -> AsyncIterator[dict[str, Any]]:
    """The agent's events with the turn brackets the wrapper reads (OpenCode sends none: its
    ``Dialect`` synthesises them, as the wrapper core does)."""
    turns = dialect(spec.dialect)
    turns.session_id = session
    async for event in events:
        for made in turns.expand(event):
            yield made


async def _tour(client: AgentClient, workdir: Path, recording: Recording) -> set[str]:
    """Call every public method of the client against the live server; the names called."""
    called: set[str] = set()
    spec = client.spec

    def did(name: str) -> None:
        called.add(name)

    assert await client.health() is True
    did("health")
    session = await client.create_session(title="contract")
    did("create_session")
    assert (await client.get_session(session.id)).id == session.id
    did("get_session")
    async with client.subscribe_events() as raw:
        did("subscribe_events")
        events = _bracketed(raw, spec, session.id)
        first = await _wait_for(events, lambda e: True, "the first event")
        assert first["type"] == "server.connected"

        def of_session(kind: str) -> Callable[[dict[str, Any]], bool]:
            return lambda e: (
                e.get("type") == kind and e.get("properties", {}).get("sessionID") == session.id
            )

        # With a message id, as the wrapper sends every prompt (``messageID`` and the text
        # part's ``id`` are checked against Kilo's schema below; the answer must follow it).
        message_id = ascending_id("msg", int(time.time() * 1000), "contract")
        await client.prompt_async(
            session.id, "say hello MODE:text", model="fake/fake-model", message_id=message_id
        )
        did("prompt_async")
        await _wait_for(events, of_session("session.turn.close"), "the turn's close")
        assert session.id not in await client.session_status()  # absent means idle
        did("session_status")
        messages = await client.session_messages(session.id)
        did("session_messages")
        assert [m.info.role for m in messages][-2:] == ["user", "assistant"]
        assert messages[-1].info.completed
        assert messages[-2].info.id == message_id

        # A permission Kilo really asks for (the session's config says bash: ask).
        await client.prompt_async(session.id, "run it MODE:tool")
        asked = await _wait_for(events, of_session("permission.asked"), "permission.asked")
        assert await client.reply_permission(asked["properties"]["id"], "reject") is True
        did("reply_permission")
        await _wait_for(events, of_session("session.turn.close"), "the rejected turn's close")

        # Questions: one answered, one rejected.
        await client.prompt_async(session.id, "ask me MODE:question")
        question = await _wait_for(events, of_session("question.asked"), "question.asked")
        assert await client.reply_question(question["properties"]["id"], [["red"]]) is True
        did("reply_question")
        await _wait_for(events, of_session("session.turn.close"), "the answered turn's close")
        await client.prompt_async(session.id, "ask me again MODE:question")
        question = await _wait_for(events, of_session("question.asked"), "question.asked")
        assert await client.reject_question(question["properties"]["id"]) is True
        did("reject_question")
        await _wait_for(events, of_session("session.turn.close"), "the dismissed turn's close")

        # Abort during a slow turn: interrupted.
        await client.prompt_async(session.id, "take your time MODE:slow")
        await _wait_for(events, of_session("session.turn.open"), "the slow turn's open")
        assert await client.abort(session.id) is True
        did("abort")
        closed = await _wait_for(events, of_session("session.turn.close"), "the aborted close")
        assert closed["properties"]["reason"] == "interrupted"

    reply = await client.command(session.id, "init", "briefly", model="fake/fake-model")
    assert reply.info.role == "assistant"
    did("command")
    assert await client.summarize(session.id, "fake/fake-model") is True
    did("summarize")
    if spec.supports("commit_message"):
        suggestion = await client.commit_message(str(workdir), ["hello.txt"])
        assert suggestion  # Kilo's answer object; its shape is checked against the doc below
    else:  # refused before any request: OpenCode has no such route (its web UI would answer)
        before = len(recording.exchanges)
        with pytest.raises(AgentUnsupported, match="not supported by this agent"):
            await client.commit_message(str(workdir), ["hello.txt"])
        assert len(recording.exchanges) == before
    did("commit_message")
    assert await client.pending_permissions() == []
    did("pending_permissions")
    assert await client.pending_questions() == []
    did("pending_questions")
    assert await client.delete_session(session.id) is True
    did("delete_session")
    return called


def _public_methods() -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(AgentClient, inspect.isfunction)
        if not name.startswith("_") and name != "aclose"
    }


async def _started(tmp_path: Path, fake_llm: FakeLLM, spec: AgentSpec) -> tuple[AgentServer, Path]:
    workdir = _git_workdir(tmp_path)
    config = fake_llm.provider_config(permission={"bash": "ask"})
    server = await start_agent(
        workdir=workdir,
        state_dir=tmp_path / "state",
        config=config,
        agent_bin=None,
        startup_timeout=60,
        spec=spec,
    )
    return server, workdir


async def test_every_call_of_the_client_is_in_the_agents_own_openapi_document(
    tmp_path: Path, fake_llm: FakeLLM, spec: AgentSpec
) -> None:
    server, workdir = await _started(tmp_path, fake_llm, spec)
    recording = Recording()
    client = AgentClient(server.url, server.password, transport=recording, spec=spec)
    try:
        doc_response = httpx.get(f"{server.url}/doc", auth=server.auth, timeout=30)
        assert doc_response.status_code == 200
        doc = doc_response.json()
        called = await _tour(client, workdir, recording)
    finally:
        await client.aclose()
        await server.stop(5.0)

    assert called == _public_methods(), "every public method of AgentClient is exercised"
    assert {(e.method, e.path.split("/")[1]) for e in recording.exchanges} >= {
        ("GET", "event"),
        ("POST", "session"),
        ("POST", "permission"),
        ("POST", "question"),
        *([("POST", "commit-message")] if spec.supports("commit_message") else []),
    }
    problems = [p for e in recording.exchanges for p in contract_problems(doc, e)]
    assert problems == []
    # The excerpt the checker's own tests use is what this server documents for these calls.
    excerpt = json.loads(EXCERPTS[spec.name].read_text())
    for template, item in excerpt["paths"].items():
        for method, op in item.items():
            live = doc["paths"][template][method]
            assert live.get("requestBody") == op.get("requestBody"), (method, template)
            assert sorted(live["responses"]) == sorted(op["responses"]), (method, template)


async def test_a_wrong_password_is_refused_on_every_route(
    tmp_path: Path, fake_llm: FakeLLM, spec: AgentSpec
) -> None:
    server, _ = await _started(tmp_path, fake_llm, spec)
    wrong = AgentClient(server.url, "not-the-password", spec=spec)
    try:
        assert await wrong.health() is False
        with pytest.raises(AgentError) as refused:
            await wrong.create_session()
        assert refused.value.status == 401
        assert httpx.get(f"{server.url}/doc", timeout=10).status_code == 401
    finally:
        await wrong.aclose()
        await server.stop(5.0)


# -- the check itself can fail (no Kilo needed) -----------------------------------------------


@pytest.fixture(scope="module")
def stored_doc() -> dict[str, Any]:
    return dict(json.loads(EXCERPT.read_text()))


@pytest.mark.parametrize(
    ("exchange", "expected"),
    [
        (Exchange("POST", "/session/ses_1/prompt", {}, {"parts": []}, 204), "no such operation"),
        (Exchange("PUT", "/session/ses_1/abort", {}, None, 200), "no such operation"),
        (Exchange("POST", "/session/abc/abort", {}, None, 200), "path parameter sessionID"),
        (Exchange("GET", "/session/ses_1/message", {"limit": "-1"}, None, 200), "query limit"),
        (Exchange("GET", "/session/status", {"everything": "1"}, None, 200), "not documented"),
        (Exchange("POST", "/session/ses_1/prompt_async", {}, {"text": "hi"}, 204), "parts"),
        (
            Exchange("POST", "/permission/per_1/reply", {}, {"reply": "maybe"}, 200),
            "'maybe' is not one of",
        ),
        (
            Exchange("POST", "/session/ses_1/summarize", {}, {"model": "fake/m"}, 200),
            "providerID",
        ),
        (Exchange("POST", "/question/que_1/reject", {}, {"why": "no"}, 200), "does not take"),
        (Exchange("GET", "/global/health", {}, None, 418), "not among the documented"),
    ],
)
def test_the_check_names_what_the_document_does_not_allow(
    stored_doc: dict[str, Any], exchange: Exchange, expected: str
) -> None:
    problems = contract_problems(stored_doc, exchange)
    assert any(expected in p for p in problems), problems


def test_the_check_accepts_what_the_document_allows(stored_doc: dict[str, Any]) -> None:
    fine = [
        Exchange("GET", "/session/ses_1/message", {"limit": "10"}, None, 200),
        Exchange(
            "POST",
            "/session/ses_1/prompt_async",
            {},
            {
                "parts": [{"type": "text", "text": "hi"}],
                "model": {"providerID": "p", "modelID": "m"},
            },
            204,
        ),
        Exchange("POST", "/question/que_1/reply", {}, {"answers": [["red"]]}, 200),
    ]
    assert [p for e in fine for p in contract_problems(stored_doc, e)] == []
