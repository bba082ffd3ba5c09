"""The serve suite's shared behaviour, parametrised over both agent servers (issue 17).

Each test runs a real ``fsm-agent serve --agent NAME`` against the real server (Kilo 7.7.9 or
upstream OpenCode 1.18.33), the fake model and a test ingest endpoint. What holds for both agents
is asserted for both: a prompt completes once, a follow-up queued behind a running turn completes
too (OpenCode gives a single ``session.idle`` for the two: the wrapper's synthesised brackets must
still end both), an abort cancels, a permission and a question are answered through the job API,
a SIGKILLed agent is restarted on a new port, and a SIGSTOPped (hung) one is found by
silence and probe and replaced. Kilo's own variants of these (with the details
only Kilo has: ``superseded`` closes, its error texts) stay in ``test_serve_kilo.py``; what only
OpenCode lacks (``auto_commit``) is asserted here as a clear 501. OpenCode's tests skip, naming the
missing binary, when ``scripts/setup-opencode.sh`` has not installed it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from adapters.agents.registry import AGENTS
from adapters.kilo.binary import AgentNotFound, find_agent
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import FAST, running_wrapper

pytestmark = pytest.mark.kilo


@pytest.fixture(params=["kilo", "opencode"])
def agent(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    try:
        find_agent(AGENTS[name])
    except AgentNotFound as exc:
        pytest.skip(f"{name} not installed (run scripts/setup-opencode.sh): {exc}")
    return name


@pytest.fixture
def opencode() -> str:
    try:
        find_agent(AGENTS["opencode"])
    except AgentNotFound as exc:
        pytest.skip(f"opencode not installed (run scripts/setup-opencode.sh): {exc}")
    return "opencode"


def _args(agent: str) -> list[str]:
    return ["--agent", agent]


def _outcomes(ingest: FakeIngest, n: int) -> list[object]:
    outcomes = ingest.outcomes()
    return outcomes if len(outcomes) >= n else []


def test_prompt_and_a_queued_follow_up_each_complete_once(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, extra_args=_args(agent)) as wrapper:
        wrapper.wait_ready()
        assert wrapper.status()["agent"]["name"] == agent
        first = wrapper.prompt("long answer MODE:slow")
        ingest.wait_for(lambda: "message.part.delta" in ingest.event_types(), what="progress")
        second = wrapper.prompt("and then MODE:text")
        outcomes = ingest.wait_for(lambda: _outcomes(ingest, 2), 60, "two outcomes")
        assert {(o.message_id, o.status) for o in outcomes} == {  # type: ignore[attr-defined]
            (first, "completed"),
            (second, "completed"),
        }
        types = ingest.event_types()
        assert types[0] == "server.connected"
        # Kilo's own brackets, or the ones the wrapper synthesised from OpenCode's busy/idle.
        assert "session.turn.open" in types and "session.turn.close" in types
        assert ingest.duplicates == 0 and len(ingest.outcomes()) == 2


def test_abort_cancels_the_running_turn(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, extra_args=_args(agent)) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("long answer MODE:slow")
        ingest.wait_for(lambda: "message.part.delta" in ingest.event_types(), what="progress")
        response = wrapper.request("POST", "/job/abort", json={})
        assert response.status_code == 200, response.text
        assert response.json()["aborted"] == [message_id]
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 30, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "cancelled")


def test_permission_and_question_are_answered_through_the_job_api(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    config = fake_llm.provider_config(permission={"bash": "ask"})
    with running_wrapper(tmp_path, ingest.url, config, extra_args=_args(agent)) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("run it MODE:tool")
        asked = ingest.wait_for(
            lambda: [e for e in ingest.events() if e.get("type") == "permission.asked"],
            what="permission.asked",
        )[0]
        assert wrapper.status()["turns"][message_id]["state"] == "waiting_user"
        reply = {"reply": "once"}
        response = wrapper.request(
            "POST", f"/job/permissions/{asked['properties']['id']}", json=reply
        )
        assert response.status_code == 200, response.text
        outcome = ingest.wait_for(lambda: ingest.outcomes(), what="an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")
        question = wrapper.prompt("ask me MODE:question")
        asked = ingest.wait_for(
            lambda: [e for e in ingest.events() if e.get("type") == "question.asked"],
            what="question.asked",
        )[0]
        answers = {"answers": [["red"]]}
        response = wrapper.request(
            "POST", f"/job/questions/{asked['properties']['id']}", json=answers
        )
        assert response.status_code == 200, response.text
        done = ingest.wait_for(lambda: _outcomes(ingest, 2), 60, "second outcome")
        assert (done[1].message_id, done[1].status) == (question, "completed")  # type: ignore[attr-defined]


def test_kill_9_of_the_agent_mid_turn_restarts_it_on_a_new_port(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, opencode: str
) -> None:
    """OpenCode only: Kilo's case is ``test_serve_kilo``'s, with the same assertions."""
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, FAST, extra_args=_args(opencode)) as wrapper:
        wrapper.wait_ready()
        before = wrapper.status()["agent"]
        message_id = wrapper.prompt("long answer MODE:slow")
        ingest.wait_for(lambda: "message.part.delta" in ingest.event_types(), what="progress")
        os.kill(before["pid"], signal.SIGKILL)
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status, outcome.reason) == (
            message_id,
            "failed",
            "agent_restarted",
        )
        wrapper.wait_ready()
        after = wrapper.status()["agent"]
        assert after["pid"] != before["pid"] and after["port"] != before["port"]


def test_auto_commit_on_opencode_is_a_501_naming_the_field(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, opencode: str
) -> None:
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, extra_args=_args(opencode)) as wrapper:
        wrapper.wait_ready()
        response = wrapper.request(
            "POST", "/job/prompt", json={"prompt": "MODE:text", "auto_commit": True}
        )
        assert response.status_code == 501, response.text
        assert response.json() == {
            "error": "auto_commit: not supported by this agent (opencode)",
            "field": "auto_commit",
        }
        assert wrapper.status()["agent"]["capabilities"] == []


def test_a_sigstopped_agent_is_detected_by_silence_and_probe_and_replaced(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, opencode: str
) -> None:
    """The hang case, OpenCode only (Kilo's is ``test_serve_kilo``'s, same assertions): a stopped
    agent answers neither its stream (OpenCode heartbeats about every 10 s, as Kilo does) nor its
    health route, so the silence window and the failed probe replace it, SIGKILLing the stopped
    one (it would ignore SIGTERM); the new one serves the next prompt."""
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, FAST, extra_args=_args(opencode)) as wrapper:
        wrapper.wait_ready()
        before = wrapper.status()["agent"]
        os.kill(before["pid"], signal.SIGSTOP)
        try:
            ingest.wait_for(
                lambda: "silent" in ingest.lifecycle("agent_link"), 30, "the silence window"
            )
            ingest.wait_for(
                lambda: "restarting" in ingest.lifecycle("wrapper"), 30, "an agent restart"
            )
            wrapper.wait_ready()
            after = wrapper.status()["agent"]
            assert after["pid"] != before["pid"]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(before["pid"], signal.SIGCONT)
        deadline = time.monotonic() + 5
        while _alive(before["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling for the kill already sent, not waiting out a timer
        assert not _alive(before["pid"]), "the stopped agent was left behind"
        message_id = wrapper.prompt("MODE:text")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")


def _alive(pid: int) -> bool:
    """Running or stopped; a zombie (killed, not yet reaped) is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
