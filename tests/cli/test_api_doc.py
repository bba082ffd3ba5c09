"""``docs/api.md`` cannot drift from the server (issue 18: the message body was documented
nowhere): every ``curl`` on the page is checked against the OpenAPI document (the operation
exists, the body is valid for it) and then run, in the page's order, against a real control
plane (``--runtime external``, so no wrapper or Kilo is needed); the field tables list exactly
the fields of the request types."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from fsm.control.views import CreateSessionBody
from fsm.wire.request_bodies import PromptBody
from tests.fakes.control_process import free_port
from tests.paths import ROOT

PAGE = (ROOT / "docs" / "api.md").read_text()
OPENAPI = json.loads((ROOT / "docs" / "openapi" / "control.json").read_text())
KEY = "doc-key"


class Curl:
    def __init__(self, line: str, variables: dict[str, str]) -> None:
        self.text = line
        args = shlex.split(line)
        assert args[0] == "curl"
        self.method = "GET"
        self.headers: dict[str, str] = {}
        self.body: Any = None
        self.url = ""
        it = iter(args[1:])
        for arg in it:
            if arg == "-X":
                self.method = next(it)
            elif arg == "-H":
                name, _, value = next(it).partition(":")
                self.headers[name.strip()] = value.strip()
            elif arg == "-d":
                self.body = json.loads(next(it))
                if self.method == "GET":
                    self.method = "POST"
            elif arg in ("-s", "-N"):
                continue
            elif arg.startswith("$FSM"):
                self.url = arg
            else:
                raise AssertionError(f"{line}: an option this test does not know: {arg}")
        self.variables = variables

    def path(self) -> str:
        return self.url.removeprefix("$FSM").split("?", 1)[0]


def _curls() -> list[Curl]:
    """The page's curl commands, in order, with the shell variables set before each."""
    found: list[Curl] = []
    variables: dict[str, str] = {}
    for block in re.findall(r"```bash\n(.*?)```", PAGE, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()
            assignment = re.match(r"^([A-Z]+)=(\S+)$", line)
            if assignment:
                variables[assignment.group(1)] = assignment.group(2)
            elif line.startswith("curl "):
                found.append(Curl(line, dict(variables)))
    return found


CURLS = _curls()


def _operation(curl: Curl) -> dict[str, Any]:
    for template, operations in OPENAPI["paths"].items():
        pattern = re.sub(r"\{[^}]+\}", r"[^/]+", template)
        candidate = re.sub(r"\$[A-Z]+", "x", curl.path())
        if re.fullmatch(pattern, candidate) and curl.method.lower() in operations:
            return dict(operations[curl.method.lower()])
    raise AssertionError(f"{curl.text}: no {curl.method} {curl.path()} in the OpenAPI document")


def test_the_page_covers_every_client_operation() -> None:
    assert len(CURLS) >= 10
    used = {_operation(c)["operationId"] for c in CURLS}
    client_ops = {
        op["operationId"]
        for path, ops in OPENAPI["paths"].items()
        for op in ops.values()
        if path.startswith("/sessions")
    }
    assert client_ops - used == {"get_sessions", "get_sessions_session_id"}  # named in prose


@pytest.mark.parametrize("curl", CURLS, ids=lambda c: f"{c.method} {c.path()}")
def test_each_curl_is_an_operation_of_the_document_with_a_valid_body(curl: Curl) -> None:
    operation = _operation(curl)
    assert curl.headers.get("Authorization") == "Bearer $KEY"
    if curl.body is None:
        assert "requestBody" not in operation or not operation["requestBody"].get("required")
        return
    assert curl.headers.get("Content-Type") == "application/json"
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": OPENAPI["components"]}).validate(
        curl.body
    )
    for header in curl.headers:
        if header not in ("Authorization", "Content-Type"):
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
            assert header in declared


def _table_fields(heading: str) -> set[str]:
    section = PAGE.split(heading, 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.M))


def test_the_field_tables_are_the_request_types() -> None:
    assert _table_fields("## Create a session") == set(CreateSessionBody.__struct_fields__)
    assert _table_fields("## Send a message") == set(PromptBody.__struct_fields__)


def _expand(text: str, names: dict[str, str]) -> str:
    return re.sub(r"\$([A-Z]+)", lambda m: names[m.group(1)], text)


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("api-doc")
    port = free_port()
    env = {**os.environ, "FSM_AGENT_API_KEY": KEY}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fsm",
            "control",
            f"--listen=127.0.0.1:{port}",
            "--runtime=external",
        ],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "control.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (tmp / "control.log").read_text()
            assert time.monotonic() < deadline, "the control plane did not start"
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_curl_on_the_page_runs_against_a_real_control_plane(control: str) -> None:
    sid = ""
    with httpx.Client(timeout=10) as http:
        for curl in CURLS:
            names = {**curl.variables, "FSM": control, "KEY": KEY, "SID": sid}
            url = _expand(curl.url, names)
            if curl.path().endswith("/events") and "follow=" not in url:
                # The page's live streams never end; the stored log then the end, for a test.
                url += ("&" if "?" in url else "?") + "follow=0"
            headers = {k: _expand(v, names) for k, v in curl.headers.items()}
            answer = http.request(curl.method, url, headers=headers, json=curl.body)
            assert answer.is_success, f"{curl.text}\n-> {answer.status_code} {answer.text}"
            if curl.method == "POST" and curl.path() == "/sessions":
                sid = answer.json()["id"]
                assert set(answer.json()["wrapper"]) == {"ingest_url", "token"}
            elif curl.path().endswith("/messages"):
                assert answer.json()["state"] == "queued"
            elif curl.path().endswith("/events"):
                kinds = re.findall(r"^event: (\S+)$", answer.text, re.M)
                assert "message" in kinds
                after = re.search(r"after=(\d+)", url)
                resume = headers.get("Last-Event-ID") or (after.group(1) if after else "0")
                first = re.search(r"^id: (\d+)$", answer.text, re.M)
                assert first is not None and int(first.group(1)) == int(resume) + 1
        assert sid, "the page never created a session"
