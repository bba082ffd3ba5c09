"""The dashboard (``/ui``) over HTTP against a live control plane: who gets in, what the cookie is,
what the pages are made of. The browser test (``test_ui_browser.py``) watches it run a turn."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from fsm.control.ui.auth import COOKIE
from fsm.control.ui.diagrams import _rendered, specs
from tests.fakes.control_process import API_KEY, WRAPPER_FAST, Control, running_control
from tests.fakes.fake_llm import FakeLLM

pytestmark = pytest.mark.kilo


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM) -> Iterator[Control]:
    tmp = tmp_path_factory.mktemp("ui")
    with running_control(tmp, fake_llm.provider_config(), WRAPPER_FAST) as running:
        yield running


@pytest.fixture(scope="module")
def sid(control: Control) -> str:
    return control.create_session()


def _browser(control: Control) -> httpx.Client:
    """A client without the bearer header, as a browser is."""
    return httpx.Client(base_url=f"http://127.0.0.1:{control.port}", timeout=10)


@contextmanager
def _signed_in(control: Control) -> Iterator[httpx.Client]:
    with _browser(control) as browser:
        answer = browser.post("/ui/login", data={"key": API_KEY, "next": "/ui/"})
        assert answer.status_code == 303, answer.text
        yield browser


def test_the_dashboard_asks_for_the_key_and_never_takes_it_from_the_url(control: Control) -> None:
    with _browser(control) as browser:
        bare = browser.get("/ui")
        assert bare.status_code in (307, 308) and bare.headers["location"].endswith("/ui/")
        page = browser.get("/ui/")
        assert page.status_code == 401 and 'type="password"' in page.text
        assert "set-cookie" not in page.headers
        assert browser.get("/ui/", params={"token": API_KEY}).status_code == 401
        wrong = browser.post("/ui/login", data={"key": "guess", "next": "/ui/"})
        assert wrong.status_code == 401 and "not the API key" in wrong.text
        assert COOKIE not in browser.cookies
        assert browser.get("/ui/sessions.json").json() == {
            "error": "sign in at /ui first, or send the bearer token",
            "field": "Authorization",
        }


def test_signing_in_sets_an_httponly_strict_cookie_that_is_not_the_key(control: Control) -> None:
    with _browser(control) as browser:
        answer = browser.post("/ui/login", data={"key": API_KEY, "next": "//elsewhere.example/x"})
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/"  # never an open redirect
        cookie = answer.headers["set-cookie"]
        attributes = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
        assert API_KEY not in cookie
        assert browser.get("/ui/").status_code == 200
        # The cookie opens the dashboard only: the API still wants the bearer header.
        assert browser.get("/sessions").status_code == 401


def test_the_session_page_draws_every_machine_from_its_declaration(
    control: Control, sid: str
) -> None:
    with _signed_in(control) as browser:
        listing = browser.get("/ui/")
        assert f'href="/ui/sessions/{sid}"' in listing.text
        assert browser.get("/ui/sessions.json").json()[0]["id"] == sid
        page = browser.get(f"/ui/sessions/{sid}")
        assert page.status_code == 200, page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for machine in ("session", "wrapper", "agent_link", "turn", "ingest_link", "supervisor"):
            assert f'id="machine-{machine}"' in page.text
        if shutil.which("dot"):
            assert page.text.count("<svg") == 6
            assert "<title>waiting_user</title>" in page.text  # a turn state, drawn by Graphviz
        state = browser.get(f"/ui/sessions/{sid}/state").json()
        assert state["id"] == sid and "timers" in state
        events = browser.get(f"/ui/sessions/{sid}/events", params={"follow": "0"})
        assert events.headers["content-type"].startswith("text/event-stream")
        assert "event: transition" in events.text


def test_hostile_paths_get_clear_answers(control: Control) -> None:
    with _signed_in(control) as browser:
        unknown = browser.get("/ui/sessions/no-such-session")
        assert unknown.status_code == 404 and "unknown session no-such-session" in unknown.text
        malformed = browser.get("/ui/sessions/%3Cscript%3E")
        assert malformed.status_code == 400 and "<script>" not in malformed.text
        assert browser.get("/ui/static/..%2fapi.py").status_code == 404
        assert browser.get("/ui/static/secret.txt").json()["field"] == "path"
        script = browser.get("/ui/static/dashboard.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith(
            "text/javascript"
        )
        assert ".innerHTML" not in script.text  # text is written with textContent only
    with _browser(control) as browser:
        big = browser.post("/ui/login", content=b"key=" + b"x" * 2_000_000)
        assert big.status_code == 413


def test_the_dashboard_is_not_in_the_openapi_document(control: Control) -> None:
    paths = control.http.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_without_graphviz_each_diagram_is_a_list_of_its_states_marked_up_alike() -> None:
    spec = next(s for s in specs() if s.name == "turn")
    fallback = _rendered("turn", "digraph turn {}", None)
    titles = re.findall(r'<li class="node"><title>([a-z_]+)</title>', fallback)
    assert titles == [state.name for state in spec.definition.states]
