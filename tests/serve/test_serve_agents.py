"""`fsm-agent serve` end to end, parametrised over both agent servers (issue 17).

Each test runs a real ``fsm-agent serve --agent NAME`` against the real server (Kilo 7.7.9 or
upstream OpenCode 1.18.33), the fake model and a test ingest endpoint: a prompt streams and
completes once, a follow-up queued behind a running turn completes too (OpenCode gives a single
``session.idle`` for the two: the wrapper's synthesised brackets must still end both), a model
error fails the turn with the agent's own words, an abort cancels, a permission and a question
are answered through the job API, a SIGKILLed agent is restarted on a new port, a SIGSTOPped
(hung) one is found by silence and probe and replaced, a dropped event stream is resubscribed by
the agent_link machine (no restart) with a pending question still answerable, an ingest drop loses
no frame, and the job API, shutdown and SIGTERM behave alike. What holds for one agent only is
asserted for that one, saying why (Kilo's ``superseded`` closes; OpenCode's missing
``auto_commit``, a clear 501). The fixture ``agent`` (``tests/serve/conftest.py``) skips
OpenCode's half only where it is not installed and CI does not require it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import FAST, running_wrapper

pytestmark = pytest.mark.kilo


def _outcomes(ingest: FakeIngest, n: int) -> list[object]:
    outcomes = ingest.outcomes()
    return outcomes if len(outcomes) >= n else []


def _asked(ingest: FakeIngest, kind: str) -> dict[str, object]:
    events = ingest.wait_for(
        lambda: [e for e in ingest.events() if e.get("type") == kind], 60, kind
    )
    event: dict[str, object] = events[-1]
    return event


def _request_id(event: dict[str, object]) -> str:
    properties = event["properties"]
    assert isinstance(properties, dict)
    return str(properties["id"])


def test_a_prompt_streams_and_a_queued_follow_up_completes_too(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, agent=agent) as wrapper:
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
        closes = [
            e["properties"]["reason"]
            for e in ingest.events()
            if e.get("type") == "session.turn.close"
        ]
        assert closes[-1] == "completed"
        assert ingest.hellos[0].session_id == "sess-1"
        assert ingest.duplicates == 0 and len(ingest.outcomes()) == 2


def test_a_model_error_fails_the_turn_with_the_agents_own_words(
    tmp_path: Path,
    fake_llm: FakeLLM,
    ingest: FakeIngest,
    agent: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kilo is given a 500, retried once (``KILO_SESSION_RETRY_LIMIT``: 5 by default); OpenCode
    retries a 500 with a growing backoff and no limit to set (80 s measured in CI), so it is
    given a 400, which no agent retries: either way the agent's own error reaches the user."""
    monkeypatch.setenv("KILO_SESSION_RETRY_LIMIT", "1")
    mode, words = ("500", "fake internal error") if agent == "kilo" else ("400", "fake bad request")
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt(f"MODE:{mode}")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 90, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "failed")
        assert words in outcome.error, outcome.error
        assert len(ingest.outcomes()) == 1


def test_abort_cancels_the_running_turn(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("long answer MODE:slow")
        ingest.wait_for(lambda: "message.part.delta" in ingest.event_types(), what="progress")
        response = wrapper.request("POST", "/job/abort", json={})
        assert response.status_code == 200, response.text
        assert response.json()["aborted"] == [message_id]
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 30, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "cancelled")


@pytest.mark.parametrize(("reply", "tool_ends"), [("once", "completed"), ("reject", "error")])
def test_a_permission_reaches_ingest_and_the_reply_decides(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str, reply: str, tool_ends: str
) -> None:
    config = fake_llm.provider_config(permission={"bash": "ask"})
    with running_wrapper(tmp_path, ingest.url, config, agent=agent) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("run it MODE:tool")
        request_id = _request_id(_asked(ingest, "permission.asked"))
        assert wrapper.status()["turns"][message_id]["state"] == "waiting_user"
        response = wrapper.request("POST", f"/job/permissions/{request_id}", json={"reply": reply})
        assert response.status_code == 200, response.text
        outcome = ingest.wait_for(lambda: ingest.outcomes(), what="an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")
        tool_states = [
            e["properties"]["part"]["state"]["status"]
            for e in ingest.events()
            if e.get("type") == "message.part.updated"
            and e["properties"]["part"].get("type") == "tool"
        ]
        assert tool_states[-1] == tool_ends
        # A reply to a request that is no longer pending is a 404, not a silent no-op.
        again = wrapper.request("POST", f"/job/permissions/{request_id}", json={"reply": reply})
        assert again.status_code == 404


def test_a_question_is_answered_through_the_job_api(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("ask me MODE:question")
        request_id = _request_id(_asked(ingest, "question.asked"))
        assert wrapper.status()["turns"][message_id]["state"] == "waiting_user"
        response = wrapper.request(
            "POST", f"/job/questions/{request_id}", json={"answers": [["red"]]}
        )
        assert response.status_code == 200, response.text
        outcome = ingest.wait_for(lambda: ingest.outcomes(), what="an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")
        assert "question.replied" in ingest.event_types()


def test_kill_9_of_the_agent_mid_turn_restarts_it_on_a_new_port(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, FAST, agent=agent) as wrapper:
        wrapper.wait_ready()
        before = wrapper.status()["agent"]
        message_id = wrapper.prompt("long answer MODE:slow")
        ingest.wait_for(lambda: "message.part.delta" in ingest.event_types(), what="progress")
        os.kill(before["pid"], signal.SIGKILL)
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        # Real progress had been made: resubmitting would repeat work, so the turn fails.
        assert (outcome.message_id, outcome.status, outcome.reason) == (
            message_id,
            "failed",
            "agent_restarted",
        )
        wrapper.wait_ready()
        after = wrapper.status()["agent"]
        assert after["pid"] != before["pid"] and after["port"] != before["port"]
        assert "restarting" in ingest.lifecycle("wrapper")
        # The restarted agent serves the next prompt.
        second = wrapper.prompt("again MODE:text")
        done = ingest.wait_for(lambda: _outcomes(ingest, 2), 60, "second outcome")
        assert (done[1].message_id, done[1].status) == (second, "completed")  # type: ignore[attr-defined]


def test_a_sigstopped_agent_is_detected_by_silence_and_probe_and_replaced(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    """A stopped agent answers neither its stream (both heartbeat about every 10 s) nor its
    health route, so the silence window and the failed probe replace it, SIGKILLing the stopped
    one (it would ignore SIGTERM); the new one serves the next prompt."""
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, FAST, agent=agent) as wrapper:
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
        _wait_gone(before["pid"])
        assert not _alive(before["pid"]), "the stopped agent was left behind"
        message_id = wrapper.prompt("MODE:text")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")


def _drop_connections_to(port: int) -> None:
    """Abort every TCP connection to ``port`` on loopback (``ss -K``: the kernel's SOCK_DESTROY,
    what a dead path or a proxy's idle cut looks like to the wrapper), or skip saying why."""
    ss = shutil.which("ss")
    if ss is None:
        pytest.skip("ss (iproute2) is not installed: cannot drop a connection from outside")
    done = subprocess.run(
        [ss, "-K", "dst", "127.0.0.1", "dport", "=", str(port)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or f":{port}" not in done.stdout:
        pytest.skip(f"ss -K closed nothing (needs root and CONFIG_INET_DIAG_DESTROY): {done}")


def test_a_dropped_event_stream_is_resubscribed_and_a_pending_question_still_answered(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    """The agent's event stream reconnects through the agent_link machine, not a loop hidden in
    the adapter (docs/agents.md, "Reconnects"): the drop is a ``stream_ended`` the machine sees,
    a short ``reconnecting`` pause, a new subscription and a reconcile of the session; the agent
    is not restarted. The question asked before the drop is answered after it."""
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        before = wrapper.status()["agent"]
        message_id = wrapper.prompt("ask me MODE:question")
        request_id = _request_id(_asked(ingest, "question.asked"))
        _drop_connections_to(before["port"])
        ingest.wait_for(
            lambda: "reconnecting" in ingest.lifecycle("agent_link"), 30, "the reconnect"
        )
        ingest.wait_for(
            lambda: ingest.lifecycle("agent_link")[-1] == "streaming", 30, "the new stream"
        )
        status = wrapper.status()
        assert status["agent"]["pid"] == before["pid"], "a dropped stream restarted the agent"
        assert "restarting" not in ingest.lifecycle("wrapper")
        assert status["turns"][message_id]["state"] == "waiting_user"
        response = wrapper.request(
            "POST", f"/job/questions/{request_id}", json={"answers": [["red"]]}
        )
        assert response.status_code == 200, response.text
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")


def test_ingest_drop_mid_turn_loses_no_frame_and_delivers_the_outcome_once(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, FAST, agent=agent) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("long answer MODE:slow")
        ingest.wait_for(lambda: "message.part.delta" in ingest.event_types(), what="progress")
        ingest.stop_listening()
        time.sleep(2.0)  # the turn keeps streaming into the outbox meanwhile
        ingest.start()
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")
        time.sleep(1.0)
        seqs = sorted(ingest.frames)
        assert seqs == list(range(1, len(seqs) + 1)), "a sequence gap means a lost frame"
        assert len(ingest.outcomes()) == 1
        assert ingest.connections >= 2
        assert len(ingest.hellos) >= 2


def test_shutdown_from_ingest_exits_zero(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    ingest.shutdown_reason = "version mismatch"
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        assert wrapper.wait_exit(60) == 0
        assert len(ingest.hellos) == 1  # no reconnect loop after a shutdown


def test_job_api_refuses_bad_token_and_bad_body_and_shows_timers(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        assert wrapper.request("GET", "/job/status", token="wrong").status_code == 401
        assert wrapper.request("GET", "/job/status", token=None).status_code == 401
        bad = wrapper.request("POST", "/job/prompt", json={"prompt": 42})
        assert bad.status_code == 400 and "prompt" in bad.json()["field"]
        missing = wrapper.request("POST", "/job/prompt", json={"text": "hi"})
        assert missing.status_code == 400
        status = wrapper.status()
        assert status["wrapper"] in ("ready", "idle")
        timers = status["timers"]
        # The silence window (15 s by default) is armed and counting down.
        assert 0 < timers["agent_link"]["silence"]["remaining"] <= 15
        assert "heartbeat" in timers["ingest_link"]
        assert status["agent"]["port"] and status["agent"]["healthy"] is True


def test_sigterm_stops_the_agent_and_exits_zero(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        agent_pid = wrapper.agent_pid()
        wrapper.signal(signal.SIGTERM)
        assert wrapper.wait_exit(30) == 0
        _wait_gone(agent_pid)
        assert not _alive(agent_pid)
        assert ingest.lifecycle("wrapper")[-1] == "stopped"


def test_auto_commit_on_opencode_is_a_501_naming_the_field(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, opencode: str
) -> None:
    """OpenCode only: it has no ``/commit-message`` (Kilo's auto-commit is test_auto_commit's)."""
    config = fake_llm.provider_config()
    with running_wrapper(tmp_path, ingest.url, config, agent=opencode) as wrapper:
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


def _wait_gone(pid: int, timeout: float = 5.0) -> None:
    """Poll for the end of a process already signalled (not waiting out a production timer)."""
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running or stopped; a zombie (killed, not yet reaped) is gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
