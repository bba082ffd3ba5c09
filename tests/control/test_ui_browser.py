"""The dashboard in a real browser: Debian's headless Chromium, driven over the Chrome DevTools
Protocol (its websocket, with the ``websockets`` package the project already depends on: a
handful of CDP calls — navigate, evaluate, screenshot — need no driver library).

Against a live control plane running a turn (real wrapper, real Kilo, the fake model), the test
signs in through the page's form, then reads the rendered DOM while the turn goes: the
highlighted node of the ``turn`` and ``session`` diagrams must follow the turn through its
states. Screenshots (mid-turn and after) are kept as artifacts (``$FSM_AGENT_ARTIFACTS``, else
the test's tmp folder); their paths are printed (``pytest -s``).

Chromium comes from ``scripts/setup-chromium.sh``; without it the test skips saying so.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.fakes.control_process import API_KEY, WRAPPER_FAST, Control, running_control, wait_for
from tests.fakes.fake_llm import FakeLLM

pytestmark = pytest.mark.kilo

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS_ENV = "FSM_AGENT_ARTIFACTS"
"""Where the screenshots go (CI may set it to a folder it keeps); else the test's tmp folder."""
_DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")


class Page:
    """One tab, over CDP: calls are answered by id; the events CDP sends meanwhile are skipped."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def eval(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        wait_for(f"{url} to load", lambda: self.eval("document.readyState") == "complete", 20)

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        print(f"screenshot: {path}")
        return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup-chromium.sh installs it as root)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",  # the tests run as root in CI, where Chromium's sandbox refuses
            "--disable-gpu",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--window-size=1400,2000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            found = _DEVTOOLS.search(line)
            url = found.group(1) if found else None
        if url is None:
            pytest.fail(f"chromium did not start its DevTools endpoint (rc {process.poll()})")
        port = int(url.split(":")[2].split("/")[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(page_ws, max_size=None, open_timeout=10) as ws:
            page = Page(ws)
            page.call("Page.enable")
            page.call("Runtime.enable")
            yield page
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM) -> Iterator[Control]:
    tmp = tmp_path_factory.mktemp("ui-browser")
    with running_control(tmp, fake_llm.provider_config(), WRAPPER_FAST) as running:
        yield running


SNAPSHOT = """(() => {
  const of = (name) => {
    const article = document.getElementById("machine-" + name);
    const lit = [...article.querySelectorAll(".diagram g.node.current title")];
    return { state: article.dataset.state, lit: lit.map((t) => t.textContent) };
  };
  return { session: of("session"), turn: of("turn"), wrapper: of("wrapper"),
           stream: document.body.dataset.stream || "",
           timers: document.querySelector("#machine-session [data-role=timers]").textContent,
           messages: [...document.querySelectorAll("#messages tbody tr")].map(
             (r) => r.children[1].textContent),
           timeline: document.querySelectorAll("#timeline li").length };
})()"""


def test_the_highlighted_states_follow_a_turn_in_a_real_browser(
    browser: Page, control: Control, tmp_path: Path
) -> None:
    artifacts = Path(os.environ.get(ARTIFACTS_ENV) or tmp_path)
    sid = control.create_session()
    control.wait_state(sid, ("ready", "idle"))
    base = f"http://127.0.0.1:{control.port}"
    browser.goto(f"{base}/ui/sessions/{sid}")
    assert browser.eval("!!document.querySelector('#login input[type=password]')")
    browser.eval(
        f"document.querySelector('#login input[name=key]').value = {json.dumps(API_KEY)};"
        "document.getElementById('login').submit(); true"
    )
    wait_for(
        "the session page after signing in",
        lambda: browser.eval("document.body && document.body.dataset.stream") == "live",
        20,
        control.tail,
    )
    assert browser.eval("document.cookie") == "", "the cookie must be HttpOnly"
    first = browser.eval(SNAPSHOT)
    assert first["session"]["state"] in ("ready", "idle") and first["session"]["lit"] == [
        first["session"]["state"]
    ]
    assert first["wrapper"]["lit"] == [first["wrapper"]["state"]]

    mid = control.send(sid, "long answer MODE:slow")
    seen: list[dict[str, Any]] = []
    shot_mid = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        snap = browser.eval(SNAPSHOT)
        seen.append(snap)
        if snap["turn"]["state"] == "running" and shot_mid is None:
            shot_mid = browser.screenshot(artifacts / "dashboard-mid-turn.png")
        if snap["turn"]["state"] == "completed" and snap["messages"] == ["completed"]:
            break
        time.sleep(0.1)
    shot_end = browser.screenshot(artifacts / "dashboard-after-turn.png")
    assert control.message(sid, mid)["state"] == "completed"

    def path(machine: str) -> list[str]:
        states = [s[machine]["state"] for s in seen]
        return [st for i, st in enumerate(states) if st and (i == 0 or states[i - 1] != st)]

    turn_path, session_path = path("turn"), path("session")
    assert "running" in turn_path and turn_path[-1] == "completed", turn_path
    assert turn_path.index("running") < turn_path.index("completed")
    assert "running" in session_path and session_path[-1] in ("ready", "idle"), session_path
    # The highlight is the diagram's own node, one at a time, always the state shown.
    for snap in seen:
        for machine in ("session", "turn"):
            if snap[machine]["state"]:
                assert snap[machine]["lit"] == [snap[machine]["state"]], snap
    running = next(s for s in seen if s["session"]["state"] == "running")
    assert "hung_session" in running["timers"] or "left" in running["timers"], running
    assert seen[-1]["timeline"] > 10
    assert shot_mid is not None and shot_mid.stat().st_size > 10_000
    assert shot_end.stat().st_size > 10_000
    # The sessions list, signed in by the same cookie, shows this session in its state.
    browser.goto(f"{base}/ui/")
    row = f"document.querySelector('tr[data-session={json.dumps(sid)}] [data-role=state]')"
    assert browser.eval(f"{row}.textContent") == control.session(sid)["state"]
