"""A resubmitted prompt is stored once in Kilo's history (issue 13, item 5).

When the agent is lost before a turn made progress, the turn machine resubmits its prompt once
(``SubmitPrompt(resubmission=True)`` → ``PromptAgent`` → ``WrapperHost._prompt``). Before the fix
the prompt went without a ``messageID``, so Kilo stored a second user message with the same
text: the model then read the request twice and the history showed it twice. Now each of our
messages gets one Kilo message id (and text part id) at its first submission, reused on every
resubmission, and Kilo replaces the stored message instead.

The real-Kilo test drives ``WrapperHost._prompt`` itself, twice with the same command (the second
as the resubmission), against a real Kilo server and the fake LLM, and reads the history back
with ``GET /session/{id}/message``. The others pin the id's format and order without Kilo.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from adapters.kilo.client import ID_PATTERN, AgentClient, ascending_id
from adapters.kilo.process import start_agent
from fsm.hosting.logs import JsonLog
from fsm.serve.core import PromptAgent
from fsm.serve.host import WrapperHost
from fsm.serve.settings import ServeSettings
from fsm.settings.config import timer_values
from fsm.wire.protocol import PromptCommand
from tests.fakes.fake_llm import FakeLLM, running_fake_llm
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import FAST, git_workspace, running_wrapper

pytestmark = pytest.mark.anyio

KILO_MESSAGE_ID = "msg_233e51e2a0013bdCJfmckoo6Mi"
"""A message id a real Kilo 7.7.9 made (an assistant reply), for the format and order checks."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _host(
    tmp_path: Path, agent_config: dict[str, object] | None = None, agent: str = "kilo"
) -> WrapperHost:
    settings = ServeSettings(
        agent=agent,
        agent_session="agent_s_resubmit",
        user_id="user-1",
        session_id="sess-1",
        ingest_url="ws://127.0.0.1:9/ingest",
        token="t",
        workdir=git_workspace(tmp_path / "workspace"),
        state_dir=tmp_path / "state",
        agent_config=dict(agent_config or {"model": "fake/fake-model"}),
    )
    return WrapperHost(settings, timer_values()["wrapper"], JsonLog(sys.stderr))


def _user_texts(messages: list[dict[str, object]]) -> list[str]:
    texts = []
    for message in messages:
        info = message["info"]
        assert isinstance(info, dict)
        if info["role"] != "user":
            continue
        parts = message["parts"]
        assert isinstance(parts, list)
        texts += [str(p["text"]) for p in parts if p.get("type") == "text"]
    return texts


# -- without Kilo: what goes on the wire ----------------------------------------------------------


class Recorder(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        return httpx.Response(204)


async def test_a_resubmission_sends_the_first_submissions_message_and_part_ids(
    tmp_path: Path,
) -> None:
    host = _host(tmp_path)
    recorder = Recorder()
    host.client = AgentClient("http://kilo.invalid", None, transport=recorder)
    host.agent_session_id = "ses_dcc1bac8dffeYnMmNYG6ylqmm4"
    command = PromptCommand(message_id="msg_ours_1", prompt="hello")
    other = PromptCommand(message_id="msg_ours_2", prompt="hello")
    await host._prompt(PromptAgent(command))
    await anyio.sleep(0.005)  # a resubmission comes later: the id must not move with the clock
    await host._prompt(PromptAgent(command, resubmission=True))
    await host._prompt(PromptAgent(other))
    first, again, second = recorder.bodies
    assert again == first, "the resubmission must send the very same message"
    mid = first["messageID"]
    assert isinstance(mid, str) and mid.startswith("msg_") and ID_PATTERN.fullmatch(mid)
    assert first["parts"] == [{"type": "text", "text": "hello", "id": "prt_" + mid[4:]}]
    assert second["messageID"] != mid  # another message of ours is another Kilo message
    await host.client.aclose()


def test_kilo_ids_have_kilos_shape_and_order() -> None:
    """Kilo's prompt loop compares ids: ours must sort like the ones Kilo makes at that time."""
    assert len(ascending_id("msg", 0, "x")) == len(KILO_MESSAGE_ID)
    # The time part of a real Kilo id, read back: ours made one millisecond later sorts after.
    kilo_ms = int(KILO_MESSAGE_ID[4:16], 16) >> 12
    later = ascending_id("msg", kilo_ms + 1, "ours")
    assert later[4:16] > KILO_MESSAGE_ID[4:16]
    now = int(time.time() * 1000)
    assert ascending_id("msg", now, "a") < ascending_id("msg", now + 1, "a")
    assert ascending_id("msg", now, "a") == ascending_id("msg", now, "a")  # deterministic
    assert ascending_id("msg", now, "a") != ascending_id("msg", now, "b")


# -- the real Kilo --------------------------------------------------------------------------------


async def _turns_done(client: AgentClient, session: str, answers: int) -> None:
    """Until ``answers`` assistant messages of the session are complete and it is idle."""
    with anyio.fail_after(60):
        while True:
            messages = await client.session_messages(session, limit=100)
            done = [m for m in messages if m.info.role == "assistant" and m.info.completed]
            if len(done) >= answers and session not in await client.session_status():
                return
            await anyio.sleep(0.1)


@pytest.fixture
async def agent_host(tmp_path: Path, fake_llm: FakeLLM, agent: str) -> AsyncIterator[WrapperHost]:
    host = _host(tmp_path, fake_llm.provider_config(), agent)
    server = await start_agent(
        workdir=host.settings.workdir,
        state_dir=host.settings.state_dir,
        config=host.settings.agent_config,
        agent_bin=None,
        startup_timeout=60,
        spec=host.spec,
    )
    host.client = AgentClient(server.url, server.password, spec=host.spec)
    try:
        host.agent_session_id = await host._ensure_session(host.client)
        yield host
    finally:
        await host.client.aclose()
        await server.stop(5.0)


@pytest.mark.kilo
async def test_a_resubmitted_prompt_is_once_in_the_agents_history(
    agent_host: WrapperHost,
) -> None:
    host, client, session = agent_host, agent_host.client, agent_host.agent_session_id
    assert client is not None and session is not None
    if host.spec.name == "opencode":
        pytest.skip(
            "OpenCode does not run a turn again for a user message it has already answered (its"
            " loop stops when the last finished assistant message sorts after the last user"
            " message); the wrapper resubmits only turns that made no progress, which"
            " test_a_prompt_resubmitted_after_the_agent_died_is_once_in_its_history covers for both"
        )
    await host._prompt(PromptAgent(PromptCommand(message_id="msg_before", prompt="hi MODE:text")))
    await _turns_done(client, session, 1)
    command = PromptCommand(message_id="msg_resubmitted", prompt="say it once MODE:text")
    await host._prompt(PromptAgent(command))
    await _turns_done(client, session, 2)
    await host._prompt(PromptAgent(command, resubmission=True))
    await _turns_done(client, session, 3)  # a resubmission runs the turn again, as it should
    raw = await client._call("GET", f"/session/{session}/message")
    messages = json.loads(raw)
    assert _user_texts(messages) == ["hi MODE:text", "say it once MODE:text"]
    roles = [m["info"]["role"] for m in messages]
    # Kilo orders by id: ours sort where they were sent, so each answer follows its prompt.
    assert roles == ["user", "assistant", "user", "assistant", "assistant"]
    ids = [m["info"]["id"] for m in messages]
    assert ids == sorted(ids)


# -- the real wrapper: a resubmission after Kilo died mid-turn ------------------------------------


@pytest.fixture
def own_llm(kilo_available: None) -> Iterator[FakeLLM]:
    """A model server of this test's own: the session's shared one counts requests by mode
    for other tests, and the hanging calls made here must not show up in their counts."""
    with running_fake_llm() as fake:
        yield fake


@pytest.mark.kilo
def test_a_prompt_resubmitted_after_the_agent_died_is_once_in_its_history(
    tmp_path: Path, own_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    """The agent is SIGKILLed while the model has not answered a token (``MODE:hang``): no
    progress, so the turn is resubmitted once to the restarted agent, in the same session."""
    config = own_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, FAST, agent=agent) as wrapper:
        wrapper.wait_ready()
        hangs = own_llm.modes.count("hang")
        wrapper.prompt("wait for me MODE:hang")
        ingest.wait_for(lambda: own_llm.modes.count("hang") > hangs, 30, "the model request")
        before = wrapper.status()["agent"]
        os.kill(before["pid"], signal.SIGKILL)
        ingest.wait_for(
            lambda: own_llm.modes.count("hang") > hangs + 1, 60, "the resubmission's request"
        )
        after = wrapper.status()["agent"]
        assert after["pid"] != before["pid"] and after["session"] == before["session"]
        assert ingest.outcomes() == []  # resubmitted, not failed
        texts = _user_texts(wrapper.agent_history()[1])
        assert texts == ["wait for me MODE:hang"], texts
