"""The OpenAPI documents both live processes serve: valid OpenAPI 3.1, one entry per route (none
missing, none the router does not know), and generated from the code with the limits in force.

Each document is fetched from a running process (``GET /openapi.json``, no token), as a client
would, then:

* validated by openapi-spec-validator against the OpenAPI 3.1 specification;
* compared with the routes the app is built with (``build_app``), both ways; and every documented
  operation is called on the live process and must reach its handler (a 404 or 405 from the router
  is a documented route that does not exist) and answer a documented status;
* compared with the document the code builds for the same ``[limits]`` (the whole of it), with
  the prompt's ``maxLength`` equal to the configured ``limits.prompt_chars`` and enforced at that
  bound (1000 accepted, 1001 refused naming ``prompt``); a bound on what is decoded only: a
  message accepted under a higher limit still conforms to its answer's schema after a restart
  with a lower one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from fsm.control import api as control_api
from fsm.control.host import ControlHost
from fsm.engine.clock import VirtualClock
from fsm.machines.timers import WRAPPER_TIMERS
from fsm.serve import job_api
from fsm.serve.core import Identity, WrapperCore
from fsm.settings.limits import limit_values
from tests.fakes.control_process import API_KEY, Control, running_control
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import TOKEN, Wrapper, running_wrapper, write_config

PROMPT_CHARS = 1000


def limits_config(tmp: Path, kilo: dict[str, Any], prompt_chars: int = PROMPT_CHARS) -> Path:
    """The shared config file with a ``[limits]`` override; given as a second ``--config`` after
    the one the fakes write (the last one wins)."""
    config = write_config(tmp / "limits.toml", {}, kilo)
    config.write_text(config.read_text() + f"\n[limits]\nprompt_chars = {prompt_chars}\n")
    return config


def fetch_document(get: Any) -> dict[str, Any]:
    response = get("/openapi.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def assert_valid_openapi_31(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    errors = [str(e).splitlines()[0] for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == [], errors


def schema_of(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    body = document["paths"][path]["post"]["requestBody"]
    return schema_of(document, body["content"]["application/json"]["schema"])


def answer_validator(document: dict[str, Any], path: str, method: str, status: int) -> Any:
    """A validator of one documented answer's JSON body, its ``$ref``s resolved in the document."""
    content = document["paths"][path][method]["responses"][str(status)]["content"]
    schema = {**content["application/json"]["schema"], "components": document["components"]}
    return Draft202012Validator(schema)


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, item in document["paths"].items() for m in item}


def app_routes(app: Starlette) -> set[tuple[str, str]]:
    """Every (method, path) the app routes; HEAD is Starlette's own twin of each GET."""
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }


def is_router_miss(response: httpx.Response) -> bool:
    """A 404/405 from the router (no such route or method), not from a handler."""
    if response.status_code == 405:
        return True
    return response.status_code == 404 and response.json().get("error") == "no such route"


def call_every_operation(
    http: httpx.Client, document: dict[str, Any], ids: dict[str, str]
) -> dict[tuple[str, str], int]:
    """Each documented operation once, with real ids in its path and an empty JSON body; a
    DELETE goes last (it ends the session the others use)."""
    answered: dict[tuple[str, str], int] = {}
    for method, path in sorted(documented(document), key=lambda mp: (mp[0] == "DELETE", mp)):
        url = path.format(**ids)
        params = {"follow": "0"} if path.endswith("/events") else {}
        body = {"json": {}} if method == "POST" else {}
        response = http.request(method, url, params=params, **body)
        assert not is_router_miss(response), (method, path, response.status_code, response.text)
        declared = document["paths"][path][method.lower()]["responses"]
        assert str(response.status_code) in declared, (method, path, response.status_code)
        answered[(method, path)] = response.status_code
    return answered


# -- the control plane ------------------------------------------------------------------------


def control_stub(config: Path) -> ControlHost:
    """What ``operations()``/``build_app()`` read of a host before any request: its limits and
    API key. Building the app needs no running host (and no event loop)."""
    stub = SimpleNamespace(limits=limit_values(config), settings=SimpleNamespace(api_key=API_KEY))
    return cast(ControlHost, stub)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    config = limits_config(tmp_path, {})
    args = ["--runtime", "external", "--config", str(config)]
    with running_control(tmp_path, {}, extra_args=args) as control:
        control.config = config  # the file in force (the fake's own one was overridden)
        yield control


def test_control_plane_document_is_valid_openapi_31(control: Control) -> None:
    with httpx.Client(base_url=control.http.base_url) as anonymous:  # no API key needed
        assert_valid_openapi_31(fetch_document(anonymous.get))


def test_control_plane_document_is_the_one_the_code_builds_for_its_limits(
    control: Control,
) -> None:
    live = fetch_document(control.http.get)
    built = control_api.openapi_document(limit_values(control.config))
    assert live == json.loads(json.dumps(built))
    prompt = body_schema(live, "/sessions/{session_id}/messages")["properties"]["prompt"]
    assert prompt["maxLength"] == PROMPT_CHARS
    body = live["paths"]["/sessions/{session_id}/messages"]["post"]["requestBody"]
    assert str(limit_values(control.config).body_bytes) in body["description"]
    # ...and the bound is the one enforced, at the character.
    sid = control.create_session()
    accepted = control.http.post(f"/sessions/{sid}/messages", json={"prompt": "x" * PROMPT_CHARS})
    assert accepted.status_code == 202, accepted.text
    refused = control.http.post(
        f"/sessions/{sid}/messages", json={"prompt": "x" * (PROMPT_CHARS + 1)}
    )
    assert refused.status_code == 400 and refused.json()["field"] == "prompt", refused.text


def test_control_plane_routes_and_document_agree(control: Control) -> None:
    document = fetch_document(control.http.get)
    app = control_api.build_app(control_stub(control.config))
    assert app_routes(app) == documented(document)
    sockets = {r.path for r in app.routes if isinstance(r, WebSocketRoute)}
    assert sockets == {"/ingest/{session_id}"}  # the wrapper's socket, described in fsm/protocol
    sid = control.create_session()
    answered = call_every_operation(control.http, document, {"session_id": sid, "request_id": "r1"})
    assert answered[("GET", "/sessions/{session_id}")] == 200
    assert answered[("DELETE", "/sessions/{session_id}")] == 202
    # The detector itself: a path that is in no document is the router's miss.
    assert is_router_miss(control.http.get(f"/sessions/{sid}/nowhere"))
    assert is_router_miss(control.http.put("/sessions"))


def test_a_lowered_prompt_limit_keeps_older_answers_conforming(tmp_path: Path) -> None:
    """A bound on what is decoded is no bound on what is answered: a message accepted under a
    higher ``prompt_chars`` is still shown after a restart with a lower one, and the document
    must describe it."""
    config = limits_config(tmp_path, {}, prompt_chars=2 * PROMPT_CHARS)
    args = ["--runtime", "external", "--config", str(config)]
    with running_control(tmp_path, {}, extra_args=args) as control:
        sid = control.create_session()
        control.send(sid, "y" * (PROMPT_CHARS + 500))
        control.stop()
        limits_config(tmp_path, {}, prompt_chars=PROMPT_CHARS)
        control.start()
        document = fetch_document(control.http.get)
        detail = control.session(sid)
        assert len(detail["messages"][0]["prompt"]) == PROMPT_CHARS + 500
        validator = answer_validator(document, "/sessions/{session_id}", "get", 200)
        errors = [f"{e.json_path}: {e.message[:120]}" for e in validator.iter_errors(detail)]
        assert errors == [], errors


# -- the wrapper's job API --------------------------------------------------------------------


def wrapper_core() -> WrapperCore:
    """A core for building the app in-process (the routes and the document need no agent)."""
    return WrapperCore(
        VirtualClock(), WRAPPER_TIMERS.defaults(), Identity("w", "a", "u", "s"), lambda _e: None
    )


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    server = FakeIngest()
    server.start()
    yield server
    server.close()


@pytest.fixture
def wrapper_config(tmp_path: Path, fake_llm: FakeLLM) -> Path:
    return limits_config(tmp_path, fake_llm.provider_config())


@pytest.fixture
def wrapper(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest, wrapper_config: Path
) -> Iterator[Wrapper]:
    kilo = fake_llm.provider_config()
    args = ["--config", str(wrapper_config)]
    with running_wrapper(tmp_path, ingest.url, kilo, extra_args=args) as wrapper:
        yield wrapper


def wrapper_get(wrapper: Wrapper) -> Any:
    return lambda path: wrapper.http.get(wrapper.url(path))


@pytest.mark.kilo
def test_wrapper_document_is_valid_from_the_code_and_agrees_with_its_routes(
    wrapper: Wrapper, wrapper_config: Path
) -> None:
    # Served at once, before the agent is up, without the token.
    live = fetch_document(wrapper_get(wrapper))
    assert_valid_openapi_31(live)
    limits = limit_values(wrapper_config)
    core = wrapper_core()
    built = job_api.openapi_document(limits)
    assert live == json.loads(json.dumps(built))
    assert body_schema(live, "/job/prompt")["properties"]["prompt"]["maxLength"] == PROMPT_CHARS
    assert app_routes(job_api.build_app(core, TOKEN, dict, limits)) == documented(live)

    wrapper.wait_ready()
    http = httpx.Client(
        base_url=wrapper.url(""), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    with http:
        answered = call_every_operation(http, live, {"request_id": "per_unknown"})
        assert answered[("GET", "/job/status")] == 200
        assert answered[("POST", "/job/permissions/{request_id}")] == 400  # no reply given
        long = {"prompt": "x" * (PROMPT_CHARS + 1)}
        refused = http.post("/job/prompt", json=long)
        assert refused.status_code == 400 and refused.json()["field"] == "prompt", refused.text
        accepted = http.post(
            "/job/prompt", json={"prompt": "x" * (PROMPT_CHARS - 10) + "MODE:text"}
        )
        assert accepted.status_code == 202, accepted.text
        assert is_router_miss(http.get("/job/nowhere"))
