"""The conversation survives a wrapper restart (issue 13, item 4), on the real Kilo server.

The control plane starts wrappers with ``--agent-session agent_s_…``, a name Kilo cannot take as
a session id. Before the fix, a new wrapper created a new, empty Kilo session for it and the
agent forgot the chat; a Kilo-only restart kept it only because the old wrapper remembered the
Kilo session id in memory. Now the wrapper records the Kilo session it made for the name in its
state dir (beside Kilo's own database) and resumes it.

The test kills the wrapper with SIGKILL (nothing of it runs on the way out; its Kilo dies by the
``KILO_PARENT_PID`` watchdog, or is killed by the next wrapper through the pidfile), starts a new
one with the same agent session and state dir, and reads the Kilo session's history straight
from Kilo (``GET /session/{id}/message``; the password is in Kilo's ``/proc/<pid>/environ``, which
the test's user may read: same user).
"""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from adapters.kilo.client import AgentClient
from fsm.hosting.logs import JsonLog
from fsm.serve.host import WrapperHost
from fsm.serve.settings import ServeSettings
from fsm.settings.config import timer_values
from tests.fakes.fake_llm import FakeLLM, running_fake_llm
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import running_wrapper

AGENT_SESSION = "agent_s_conversation1"
"""Shaped like the control plane's names (``agent_s_…``), not like a Kilo id."""


@pytest.fixture
def second_ingest() -> Iterator[FakeIngest]:
    """A fresh endpoint for the second wrapper: its frames restart at seq 1."""
    server = FakeIngest()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_llm(kilo_available: None) -> Iterator[FakeLLM]:
    """A model server of this test's own: the session's shared one counts requests by mode for
    other tests; and this test reads which requests carried the first exchange."""
    with running_fake_llm() as fake:
        yield fake


def _user_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [
        str(part.get("text"))
        for message in messages
        if message["info"]["role"] == "user"
        for part in message["parts"]
        if part.get("type") == "text"
    ]


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.kilo
def test_a_new_wrapper_resumes_the_agents_session_of_its_agent_session(
    tmp_path: Path, own_llm: FakeLLM, ingest: FakeIngest, second_ingest: FakeIngest, agent: str
) -> None:
    """Both agents: Kilo dies with its wrapper by ``KILO_PARENT_PID``, OpenCode by the parent
    death signal the process owner gives it; the next wrapper resumes the recorded session."""
    args = ["--agent-session", AGENT_SESSION, "--agent", agent]  # the last one wins
    with running_wrapper(tmp_path, ingest.url, own_llm.provider_config(), extra_args=args) as w1:
        w1.wait_ready()
        first = w1.prompt("remember the word pelican MODE:text")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), what="the first outcome")[0]
        assert (outcome.message_id, outcome.status) == (first, "completed")
        session, messages = w1.agent_history()
        assert _user_texts(messages) == ["remember the word pelican MODE:text"]
        agent_pid_before = w1.agent_pid()
        w1.signal(signal.SIGKILL)
        assert w1.wait_exit(10) == -signal.SIGKILL
    assert _gone(agent_pid_before, 15), "Kilo outlived its SIGKILLed wrapper"

    with running_wrapper(
        tmp_path, second_ingest.url, own_llm.provider_config(), extra_args=args
    ) as w2:
        w2.wait_ready()
        assert w2.agent_pid() != agent_pid_before
        resumed, messages = w2.agent_history()
        assert resumed == session, "the new wrapper opened another Kilo session"
        assert _user_texts(messages) == ["remember the word pelican MODE:text"]
        # The conversation goes on in it: the model is sent the first exchange too.
        second = w2.prompt("which word was it? MODE:text")
        done = second_ingest.wait_for(lambda: second_ingest.outcomes(), what="the 2nd outcome")
        assert (done[0].message_id, done[0].status) == (second, "completed")
        _, messages = w2.agent_history()
        assert _user_texts(messages) == [
            "remember the word pelican MODE:text",
            "which word was it? MODE:text",
        ]
        turns = [
            json.dumps(r)
            for r in own_llm.requests
            if r.get("tools") and "which word was it?" in json.dumps(r)
        ]
        assert turns and "pelican" in turns[-1]
    # The record is in the state dir, outside the workspace the agent edits.
    record = json.loads((tmp_path / "agent-state" / "agent-sessions.json").read_text())
    assert record["sessions"] == {AGENT_SESSION: session}
    assert not list((tmp_path / "workspace").glob("agent-sessions*"))


# -- without Kilo: which session a start picks -----------------------------------------------------


class FakeKiloSessions(httpx.AsyncBaseTransport):
    """``GET /session/{id}`` (404 unless known) and ``POST /session`` (a new id each time)."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.created: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/session":
            sid = f"ses_new{len(self.created)}"
            self.created.append(sid)
            self.known.add(sid)
            return httpx.Response(200, json={"id": sid})
        sid = path.removeprefix("/session/")
        if request.method == "GET" and sid in self.known:
            return httpx.Response(200, json={"id": sid})
        return httpx.Response(404, json={"name": "NotFoundError"})


def _start(tmp_path: Path, agent_session: str, kilo: FakeKiloSessions) -> str:
    settings = ServeSettings(
        agent_session=agent_session,
        user_id="u",
        session_id="s",
        ingest_url="ws://127.0.0.1:9/ingest",
        token="t",
        workdir=tmp_path / "workspace",
        state_dir=tmp_path / "state",
    )
    host = WrapperHost(settings, timer_values()["wrapper"], JsonLog(io.StringIO()))

    async def ensure() -> str:
        client = AgentClient("http://kilo.invalid", None, transport=kilo)
        try:
            return await host._ensure_session(client)
        finally:
            await client.aclose()

    return anyio.run(ensure)


def test_each_start_resumes_the_recorded_session_and_replaces_a_gone_one(
    tmp_path: Path,
) -> None:
    kilo = FakeKiloSessions(set())
    first = _start(tmp_path, AGENT_SESSION, kilo)
    assert _start(tmp_path, AGENT_SESSION, kilo) == first  # a new process: from the record
    assert _start(tmp_path, "agent_s_other", kilo) != first  # names do not share sessions
    assert _start(tmp_path, AGENT_SESSION, kilo) == first
    kilo.known.discard(first)  # Kilo's data was wiped
    replaced = _start(tmp_path, AGENT_SESSION, kilo)
    assert replaced != first
    assert _start(tmp_path, AGENT_SESSION, kilo) == replaced
    # A Kilo session id as the name: resumed as it is; once gone, its replacement sticks.
    kilo.known.add("ses_given")
    assert _start(tmp_path, "ses_given", kilo) == "ses_given"
    kilo.known.discard("ses_given")
    instead = _start(tmp_path, "ses_given", kilo)
    assert instead not in ("ses_given", first, replaced)
    assert _start(tmp_path, "ses_given", kilo) == instead
    assert len(kilo.created) == 4


def test_an_unreadable_record_costs_the_old_conversation_not_the_start(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "agent-sessions.json").write_text("{not json")
    kilo = FakeKiloSessions(set())
    session = _start(tmp_path, AGENT_SESSION, kilo)
    assert kilo.created == [session]
    assert _start(tmp_path, AGENT_SESSION, kilo) == session  # the record was rewritten whole
