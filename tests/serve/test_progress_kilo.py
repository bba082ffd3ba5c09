"""What counts as progress, and the reason a turn fails, on the real Kilo (issue 13, items 2, 6).

Stories the simulator tells with the fake Kilo (``tests/scenarios/
unreachable_model_fails_fast.toml``, ``question_first_stays_waiting_user.toml``), told again with
a real ``kilo serve``, so the shapes the classification table (``fsm.machines.turn.AGENT_EVENTS``)
was written from are the ones Kilo really sends:

* a model endpoint nobody listens on: Kilo reports a network wait ("Cannot connect to API: …")
  and waits for a reply nobody sends. The message fails at once with Kilo's own text; before, it
  sat through the whole no-progress window (7 min) and failed ``no_progress`` with no error.
* a question asked on a session's first turn: nothing Kilo sends before the answer leaves
  ``waiting_user``, so with the no-progress window shortened to 20 s (through the config file)
  the message is still open past it and completes once answered. On a fresh wrapper Kilo shows no
  snapshot spinner, so this one passes on the old code too: it guards the rule on real shapes
  (the question tool's ``running`` update after ``question.asked``); the spinner case that failed
  is the scenario twin ``question_first_stays_waiting_user.toml``.
* a Kilo stopped while the model hangs before its first token: resubmitted exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import FAST, running_wrapper

pytestmark = pytest.mark.kilo


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_model_fails_the_message_at_once_with_kilos_error(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    config = fake_llm.provider_config()
    options = config["provider"]["fake"]["options"]
    options["baseURL"] = f"http://127.0.0.1:{_closed_port()}/v1"
    with running_wrapper(tmp_path, ingest.url, config, FAST) as wrapper:
        wrapper.wait_ready()
        started = time.monotonic()
        message_id = wrapper.prompt("hello MODE:text")
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        took = time.monotonic() - started
        assert (outcome.message_id, outcome.status, outcome.reason) == (
            message_id,
            "failed",
            "agent_error",
        ), outcome
        assert "Cannot connect to API" in outcome.error, outcome.error
        assert len(outcome.error.encode()) <= 1024
        # Far below the 7 min no-progress window the old code waited out.
        assert took < 45, took
        # Kilo's turn was aborted (it closes ``interrupted``): the next message gets an answer
        # (it fails the same way, promptly, rather than queueing behind a network wait forever).
        # It is sent after that close: a close still in flight would be taken by the next turn
        # (Kilo's closes name no message; reported in the note, not fixed here).
        ingest.wait_for(
            lambda: "session.turn.close" in ingest.event_types(), 30, "Kilo's close of the abort"
        )
        second = wrapper.prompt("again MODE:text")
        outcomes = ingest.wait_for(
            lambda: [o for o in ingest.outcomes() if o.message_id == second], 60, "an outcome"
        )
        assert outcomes[0].status == "failed"
        assert "Cannot connect to API" in outcomes[0].error
        assert len(ingest.outcomes()) == 2


def test_a_pending_question_outlives_the_no_progress_window_and_completes_when_answered(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    timers = {**FAST, "turn_no_progress": "20s"}
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), timers) as wrapper:
        wrapper.wait_ready()
        message_id = wrapper.prompt("ask me MODE:question")
        asked = ingest.wait_for(
            lambda: [e for e in ingest.events() if e.get("type") == "question.asked"],
            60,
            "question.asked",
        )[0]
        time.sleep(30)  # past the 20 s no-progress window
        assert ingest.outcomes() == [], "the turn failed while the user was asked"
        response = wrapper.request(
            "POST", f"/job/questions/{asked['properties']['id']}", json={"answers": [["red"]]}
        )
        assert response.status_code == 200, response.text
        outcome = ingest.wait_for(lambda: ingest.outcomes(), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (message_id, "completed"), outcome


def test_a_kilo_hung_before_the_first_token_gets_the_turn_resubmitted_once(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    """The fake LLM's ``hang`` mode sends only the role chunk and then nothing: everything Kilo
    sent for the turn (open, statuses, messages, any spinner or empty part) is bookkeeping. Kilo
    is then stopped (SIGSTOP): the silence watchdog and the failed probe restart it, and the turn,
    which made no progress, is resubmitted once — to a model that hangs again, so the shortened
    no-progress window ends it ``no_progress`` (``agent_restarted`` would mean it was counted as
    having worked)."""
    timers = {**FAST, "turn_no_progress": "20s"}
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), timers) as wrapper:
        wrapper.wait_ready()
        before = wrapper.status()["agent"]
        message_id = wrapper.prompt("wait for it MODE:hang")
        ingest.wait_for(lambda: "hang" in fake_llm.modes, 60, "the model call")
        time.sleep(1)  # whatever Kilo sends after the role chunk, before it is stopped
        os.kill(before["pid"], signal.SIGSTOP)
        try:
            outcome = ingest.wait_for(lambda: ingest.outcomes(), 120, "an outcome")[0]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(before["pid"], signal.SIGCONT)
        assert (outcome.message_id, outcome.status, outcome.reason) == (
            message_id,
            "failed",
            "no_progress",
        ), outcome
        assert "restarting" in ingest.lifecycle("wrapper")
        assert fake_llm.modes.count("hang") == 2, fake_llm.modes
