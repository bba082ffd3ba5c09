"""`fsm-agent serve` against the real Kilo server, a fake LLM and a test ingest endpoint."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import FAST, running_wrapper

pytestmark = pytest.mark.kilo


def test_prompt_streams_events_and_completes_once(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("say hello MODE:text")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), what="an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")
        types = ingest.event_types()
        assert types[0] == "server.connected"
        assert "session.turn.open" in types and "session.turn.close" in types
        assert "message.part.delta" in types
        assert ingest.hellos[0].session_id == "sess-1"
        assert ingest.duplicates == 0
        assert len(ingest.outcomes()) == 1


def _completed(ingest: FakeIngest, n: int) -> list[object]:
    outcomes = ingest.outcomes()
    return outcomes if len(outcomes) >= n else []


def test_follow_up_during_a_running_turn_completes_both(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        wrapper.wait_ready()
        first = wrapper.prompt("long answer MODE:slow")
        ingest.wait_for(lambda: "message.part.delta" in ingest.event_types(), what="progress")
        second = wrapper.prompt("and then MODE:text")
        outcomes = ingest.wait_for(lambda: _completed(ingest, 2), 60, "two outcomes")
        assert {(o.message_id, o.status) for o in outcomes} == {
            (first, "completed"),
            (second, "completed"),
        }
        # Kilo queued the follow-up and ran it in the same turn: superseded, then one close.
        closes = [
            e["properties"]["reason"]
            for e in ingest.events()
            if e.get("type") == "session.turn.close"
        ]
        assert closes[-1] == "completed"
        assert fake_llm.modes.count("slow") >= 1
        assert len(ingest.outcomes()) == 2


def test_llm_http_500_fails_the_turn_with_kilos_error(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILO_SESSION_RETRY_LIMIT", "1")  # Kilo's own retries: 5 by default
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("MODE:500")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 90, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "failed")
        assert "APIError" in outcome.error and "fake internal error" in outcome.error
        assert len(ingest.outcomes()) == 1


@pytest.mark.parametrize(("reply", "expect_text"), [("once", True), ("reject", False)])
def test_permission_asked_reaches_ingest_and_the_reply_decides(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, reply: str, expect_text: bool
) -> None:
    config = fake_llm.provider_config(permission={"bash": "ask"})
    with running_wrapper(tmp_path, ingest.url, config) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("run it MODE:tool")
        asked = ingest.wait_for(
            lambda: [e for e in ingest.events() if e.get("type") == "permission.asked"],
            what="permission.asked",
        )[0]
        request_id = asked["properties"]["id"]
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
        assert tool_states[-1] == ("completed" if expect_text else "error")
        # A reply to a request that is no longer pending is a 404, not a silent no-op.
        again = wrapper.request("POST", f"/job/permissions/{request_id}", json={"reply": reply})
        assert again.status_code == 404


def test_question_is_answered_through_the_job_api(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("ask me MODE:question")
        asked = ingest.wait_for(
            lambda: [e for e in ingest.events() if e.get("type") == "question.asked"],
            what="question.asked",
        )[0]
        response = wrapper.request(
            "POST", f"/job/questions/{asked['properties']['id']}", json={"answers": [["red"]]}
        )
        assert response.status_code == 200, response.text
        outcome = ingest.wait_for(lambda: ingest.outcomes(), what="an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")
        assert "question.replied" in ingest.event_types()


def test_kill_9_of_kilo_mid_turn_restarts_it_on_a_new_port(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), FAST) as wrapper:
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
        done = ingest.wait_for(lambda: _completed(ingest, 2), 60, "second outcome")
        assert (done[1].message_id, done[1].status) == (second, "completed")


def test_sigstopped_kilo_is_detected_by_silence_and_probe_and_replaced(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), FAST) as wrapper:
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
        # The stopped Kilo was killed, not left behind.
        time.sleep(0.5)
        assert not _alive(before["pid"])
        message_id = wrapper.prompt("MODE:text")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed")


def test_ingest_drop_mid_turn_loses_no_frame_and_delivers_the_outcome_once(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), FAST) as wrapper:
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
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    ingest.shutdown_reason = "version mismatch"
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        assert wrapper.wait_exit(60) == 0
        assert len(ingest.hellos) == 1  # no reconnect loop after a shutdown


def test_job_api_refuses_bad_token_and_bad_body_and_shows_timers(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
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


def test_sigterm_stops_kilo_and_exits_zero(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        wrapper.wait_ready()
        kilo_pid = wrapper.kilo_pid()
        wrapper.signal(signal.SIGTERM)
        assert wrapper.wait_exit(30) == 0
        time.sleep(0.3)
        assert not _alive(kilo_pid)
        assert ingest.lifecycle("wrapper")[-1] == "stopped"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
