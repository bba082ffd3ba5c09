"""The wrapper's job API: auth, strict bodies naming the bad field, 404s, and the core behind it."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from fsm.engine.clock import VirtualClock
from fsm.engine.effects import Effect
from fsm.machines.timers import WRAPPER_TIMERS
from fsm.serve.core import AgentCall, Identity, PromptAgent, WrapperCore
from fsm.serve.job_api import build_app

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def setup() -> tuple[TestClient, WrapperCore, list[Effect]]:
    actions: list[Effect] = []
    clock = VirtualClock()
    core = WrapperCore(
        clock, WRAPPER_TIMERS.defaults(), Identity("w", "a", "u", "s"), actions.append
    )
    core.start()
    clock.advance(4)
    core.agent_ready("ses_k")
    core.agent_event(core.generation, {"type": "server.connected", "properties": {}})
    client = TestClient(build_app(core, TOKEN, lambda: {"port": 12345, "healthy": True}))
    return client, core, actions


def test_every_route_requires_the_token(setup: Any) -> None:
    client, _core, _ = setup
    for method, path in [
        ("post", "/job/prompt"),
        ("post", "/job/abort"),
        ("get", "/job/status"),
        ("post", "/job/permissions/per_1"),
        ("post", "/job/questions/que_1"),
        ("get", "/healthz"),
        ("get", "/readyz"),
    ]:
        response = getattr(client, method)(path, headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401, path
        assert response.json()["field"] == "Authorization"
    assert client.get("/healthz").status_code == 401


def test_prompt_is_accepted_and_reaches_the_agent(setup: Any) -> None:
    client, core, actions = setup
    response = client.post(
        "/job/prompt", headers=AUTH, json={"prompt": "hi", "model": "fake/m", "message_id": "m1"}
    )
    assert response.status_code == 202
    assert response.json() == {"message_id": "m1", "state": "accepted"}
    sent = [a for a in actions if isinstance(a, PromptAgent)]
    assert sent[0].command.prompt == "hi" and sent[0].command.model == "fake/m"
    assert core.wrapper.state == "running"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "x", "model": "nomodel"}, "model"),
        ({"prompt": "x", "colour": "red"}, "colour"),
        ({"prompt": "x", "auto_commit": "yes"}, "auto_commit"),
    ],
)
def test_malformed_prompts_get_400_naming_the_field(setup: Any, body: Any, field: str) -> None:
    client, core, _ = setup
    response = client.post("/job/prompt", headers=AUTH, json=body)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert core.turns() == []  # nothing was accepted


def test_not_json_is_400(setup: Any) -> None:
    client, _core, _ = setup
    response = client.post("/job/prompt", headers=AUTH, content=b"{nope")
    assert response.status_code == 400 and response.json()["field"] == "body"


def test_unknown_ids_are_404_and_known_requests_pass_through(setup: Any) -> None:
    client, core, actions = setup
    assert client.post("/job/abort", headers=AUTH, json={"message_id": "nope"}).status_code == 404
    assert (
        client.post("/job/permissions/per_x", headers=AUTH, json={"reply": "once"}).status_code
        == 404
    )
    core.agent_event(
        core.generation,
        {"type": "permission.asked", "properties": {"id": "per_1", "sessionID": "ses_k"}},
    )
    bad = client.post("/job/permissions/per_1", headers=AUTH, json={"reply": "maybe"})
    assert bad.status_code == 400 and bad.json()["field"] == "reply"
    ok = client.post("/job/permissions/per_1", headers=AUTH, json={"reply": "once"})
    assert ok.status_code == 200
    assert AgentCall("reply_permission", {"request_id": "per_1", "reply": "once"}) in actions
    core.agent_event(
        core.generation,
        {"type": "question.asked", "properties": {"id": "que_1", "sessionID": "ses_k"}},
    )
    both = client.post(
        "/job/questions/que_1", headers=AUTH, json={"answers": [["red"]], "reject": True}
    )
    assert both.status_code == 400
    assert (
        client.post("/job/questions/que_1", headers=AUTH, json={"reject": True}).status_code == 200
    )


def test_status_shows_armed_timers_and_readyz_follows_the_machines(setup: Any) -> None:
    client, core, _ = setup
    status = client.get("/job/status", headers=AUTH).json()
    assert status["wrapper"] == "ready" and status["agent"]["port"] == 12345
    assert "idle_after_start" in status["timers"]["wrapper"]
    assert "silence" in status["timers"]["agent_link"]
    assert client.get("/readyz", headers=AUTH).status_code == 200
    core.agent_exited(-9)
    assert client.get("/readyz", headers=AUTH).status_code == 503
