"""Acceptance 6 on the real agents (Kilo and OpenCode, the fixture ``agent``, issue 17): slash
commands and attachments.

``/compact`` compacts the conversation (the agent's summarize: ``session.compacted``), another
command runs as the agent's command, an unknown one fails with the agent's own words, a file part
reaches the model, and follow-ups sent while a command runs reach the agent after it, in order.
A file the job API refuses never reaches an agent, so that check runs once, on the default one.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from fsm.wire.protocol import LifecycleFrame
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import running_wrapper

pytestmark = pytest.mark.kilo


def _outcomes(ingest: FakeIngest, n: int) -> list[Any]:
    outcomes = ingest.outcomes()
    return outcomes if len(outcomes) >= n else []


def _data_url(text: str) -> str:
    return "data:text/plain;base64," + base64.b64encode(text.encode()).decode()


def test_a_file_part_reaches_the_model(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        files = [
            {
                "mime": "text/plain",
                "url": _data_url("the secret word is pelican"),
                "filename": "a.txt",
            }
        ]
        mid = wrapper.prompt("read the file MODE:text", files=files)
        outcome = ingest.wait_for(lambda: _outcomes(ingest, 1), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (mid, "completed")
        assert any("pelican" in str(body.get("messages")) for body in fake_llm.requests)


def test_a_file_that_is_not_a_data_url_is_refused_naming_it(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        wrapper.wait_ready()
        bad = [{"mime": "text/plain", "url": "data:text/html;base64,aGk="}]
        response = wrapper.request("POST", "/job/prompt", json={"prompt": "x", "files": bad})
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "files[0].url"
        path = [{"mime": "text/plain", "url": "file:///etc/passwd"}]
        response = wrapper.request("POST", "/job/prompt", json={"prompt": "x", "files": path})
        assert response.status_code == 400, response.text


def test_compact_summarizes_and_follow_ups_wait_behind_it_in_order(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        first = wrapper.prompt("remember the colour teal MODE:text")
        ingest.wait_for(lambda: _outcomes(ingest, 1), 60, "the first outcome")
        compact = wrapper.prompt("/compact")
        second = wrapper.prompt("what colour? MODE:text")
        third = wrapper.prompt("and again MODE:text")
        assert wrapper.status()["turns"][second]["state"] in ("behind", "accepted", "running")
        outcomes = ingest.wait_for(lambda: _outcomes(ingest, 4), 90, "four outcomes")
        by_id = {o.message_id: o for o in outcomes}
        assert all(by_id[m].status == "completed" for m in (first, compact, second, third)), [
            (o.message_id, o.status, o.reason, o.error) for o in outcomes
        ]
        types = ingest.event_types()
        assert "session.compacted" in types
        # The follow-ups reached Kilo after the compaction: their user messages come later.
        assert types.index("session.compacted") < max(
            i for i, t in enumerate(types) if t == "session.turn.open"
        )
        assert "behind" in ingest.lifecycle(f"turn:{second}")
        frames = [(f.machine, f.state) for f in ingest.ordered() if isinstance(f, LifecycleFrame)]
        assert frames.index((f"turn:{compact}", "completed")) < frames.index(
            (f"turn:{second}", "accepted")
        )


def test_an_unknown_command_fails_with_the_agents_own_words(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, agent: str
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        mid = wrapper.prompt("/no-such-command now")
        outcome = ingest.wait_for(lambda: _outcomes(ingest, 1), 60, "an outcome")[0]
        assert (outcome.message_id, outcome.status) == (mid, "failed")
        # The agent's own answer, relayed: its "command not found" naming the command, or (Kilo,
        # seen once in three runs) its generic 500 ``UnknownError`` with a log reference.
        assert "no-such-command" in outcome.error or '"ref":"err_' in outcome.error, outcome.error
        after = wrapper.prompt("still fine MODE:text")
        outcome = ingest.wait_for(lambda: _outcomes(ingest, 2), 60, "a second outcome")[1]
        assert (outcome.message_id, outcome.status) == (after, "completed")


@pytest.mark.parametrize(
    "mime, content",
    [("a/b", b"\x00\x01garbage"), ("image/png", b"not a png"), ("application/x-y", b"zz")],
)
def test_a_file_of_an_odd_type_does_not_break_the_conversation(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, mime: str, content: bytes, agent: str
) -> None:
    """A file Kilo cannot hand the model used to poison the conversation: that message and every
    later one failed "'file part media type a/b' functionality not supported". Such types are
    now refused (400 naming the file), and a garbled image fails at most its own message."""
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config(), agent=agent) as wrapper:
        wrapper.wait_ready()
        url = f"data:{mime};base64," + base64.b64encode(content).decode()
        response = wrapper.request(
            "POST",
            "/job/prompt",
            json={"prompt": "odd MODE:text", "files": [{"mime": mime, "url": url}]},
        )
        if response.status_code == 202:
            ingest.wait_for(lambda: _outcomes(ingest, 1), 60, "the odd file's outcome")
        else:
            assert response.status_code == 400, response.text
        after = wrapper.prompt("still fine MODE:text")
        outcome = ingest.wait_for(
            lambda: [o for o in ingest.outcomes() if o.message_id == after], 60, "the next outcome"
        )[0]
        assert outcome.status == "completed", outcome
