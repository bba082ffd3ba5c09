"""Both HTTP APIs fuzzed by schemathesis from the OpenAPI document each live process serves.

The document is read from the running process (``GET /openapi.json``), never from the code, and
every request goes over TCP to that process: the control plane (``--runtime external``, so no
wrapper is started) and a wrapper (real ``fsm-agent serve`` with real Kilo and the fake LLM).
Cases are drawn in both generation modes (positive: what the document allows; negative: what it
forbids, a wrong or missing token included) and every response must pass four checks:

* ``not_a_server_error``: no 5xx, whatever the input;
* ``status_code_conformance``: the status is one the document declares for that operation;
* ``content_type_conformance``: the ``Content-Type`` is the one declared for that status;
* ``response_schema_conformance``: the body (each event, for the SSE stream) validates against
  the declared schema.

So that the fuzzer reaches the handlers and not only their 404s, ``session_id`` is most often
the id of a real session (a pool created for the run; a deleted one is replaced, and stays
nameable for a while), and the event stream is always asked for with ``follow=0`` (with
``follow=1`` it never ends). Small ``[limits]`` let generated input cross them (413, 429, the
prompt's bound). ``GET /openapi.json`` itself is not fuzzed (schemathesis leaves out the
document it was loaded from): ``test_openapi_documents`` checks it.

The fuzzer runs in a child process (``python -m tests.fuzz.test_api_fuzz``): importing
schemathesis patches Hypothesis for the whole process (its printer shows ``x=,`` for every
falsifying example), and no other test of this process must pay for that.

Bounded for CI: ``FSM_AGENT_FUZZ_EXAMPLES`` examples per operation and generation mode (default
12, the file runs in about 30 s), no shrinking, no example database. The figures (requests,
statuses per operation, 5xx, and what the document allows but the server refuses) are printed;
to see them, and for a long run::

    FSM_AGENT_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/fuzz/test_api_fuzz.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.fakes.control_process import API_KEY, Control, running_control
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import TOKEN, Wrapper, running_wrapper, write_config

if TYPE_CHECKING:
    import requests
    from schemathesis import Case, GenerationMode

EXAMPLES = int(os.environ.get("FSM_AGENT_FUZZ_EXAMPLES", "12"))
# Small limits so that generated input crosses them: the over-long prompt, the over-large body
# and the full message queue are reached by the fuzzer, not only by hand-written tests.
LIMITS = {"prompt_chars": 1000, "body_bytes": 16384, "queued_messages": 3}
POOL = 4
"""Live sessions kept for ``session_id`` to name."""
ROOT = Path(__file__).resolve().parents[2]
SECRET_ENV = "FSM_AGENT_FUZZ_SECRET"
"""How the child gets the API key or token (never argv)."""
TIMEOUT = 120 + 2 * EXAMPLES
"""Seconds for one API's fuzzing (the 12 default examples take about 15)."""


def limits_config(tmp: Path, kilo: dict[str, Any]) -> Path:
    """A config file with the fuzzing limits, given after the fake's own ``--config`` (the last
    one wins)."""
    # A short no-progress window: the fuzzer's aborts racing its prompts can leave Kilo idle
    # with a prompt it dropped (seen once under load: `session.drain.interrupted`, then nothing;
    # issue 13), and the check afterwards must not wait out the default 7 minutes for it.
    config = write_config(tmp / "fuzz.toml", {"turn_no_progress": "20s"}, kilo)
    table = "\n".join(f"{key} = {value}" for key, value in LIMITS.items())
    config.write_text(config.read_text() + f"\n[limits]\n{table}\n")
    return config


# -- the parent: live processes, one child fuzzer per API, the verdict ------------------------


def run_fuzzer(api: str, base_url: str, secret: str, out: Path) -> dict[str, Any]:
    """Fuzz one live API from a child process; its tally, printed and returned."""
    child = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.test_api_fuzz", api, base_url, str(out)],
        cwd=ROOT,
        env={**os.environ, SECRET_ENV: secret, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert child.returncode == 0 and out.exists(), (
        f"the fuzzer of the {api} API failed ({child.returncode}):\n"
        f"{child.stdout[-5000:]}\n{child.stderr[-10000:]}"
    )
    tally: dict[str, Any] = json.loads(out.read_text())
    print(f"\n{tally['report']}")
    details = "\n\n".join(f"### {key}\n{text}" for key, text in tally["failures"].items())
    assert not tally["server_errors"], f"5xx answers: {tally['server_errors']}\n{details}"
    assert not tally["failures"], f"{len(tally['failures'])} check failures:\n{details}"
    assert tally["requests"] > 0
    return tally


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    config = limits_config(tmp_path, {})
    args = ["--runtime", "external", "--config", str(config)]
    with running_control(tmp_path, {}, extra_args=args) as control:
        yield control


@pytest.mark.timeout(TIMEOUT + 60)
def test_control_plane_api_fuzzed_from_its_live_document(control: Control, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{control.port}"
    tally = run_fuzzer("control", base, API_KEY, tmp_path / "tally.json")
    assert control.process is not None and control.process.poll() is None, control.tail()
    # The handlers were reached, not only the router's 404s, and the process still serves.
    assert {"200", "201", "202"} <= set(tally["statuses"]), tally["report"]
    assert control.http.get("/sessions").status_code == 200


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    server = FakeIngest()
    server.start()
    yield server
    server.close()


@pytest.mark.kilo
@pytest.mark.timeout(TIMEOUT + 120)
def test_wrapper_job_api_fuzzed_from_its_live_document(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    kilo = fake_llm.provider_config()
    config = limits_config(tmp_path, kilo)
    args = ["--config", str(config)]
    with running_wrapper(tmp_path, ingest.url, kilo, extra_args=args) as wrapper:
        wrapper.wait_ready()
        tally = run_fuzzer("wrapper", wrapper.url(""), TOKEN, tmp_path / "tally.json")
        assert wrapper.process.poll() is None, wrapper.tail()
        assert {"200", "202"} <= set(tally["statuses"]), tally["report"]
        assert_still_serving(wrapper, ingest)


def assert_still_serving(wrapper: Wrapper, ingest: FakeIngest) -> None:
    """The fuzzed wrapper is still ready and still runs a prompt to its end.

    After the fuzzer's burst of prompts and aborts Kilo can be wedged: it answers prompt_async and
    never opens a turn, for that prompt and every later one. The wrapper fails the first one
    ``no_progress`` within the window, visibly, and restarts Kilo (``AgentStuck``); the next
    prompt must complete on the new Kilo."""
    wrapper.wait_ready()
    for attempt in (1, 2):
        message_id = wrapper.prompt(f"still there ({attempt})? MODE:text")
        outcome = ingest.wait_for(
            lambda mid=message_id: [o for o in ingest.outcomes() if o.message_id == mid],
            90,
            "its outcome",
        )[0]
        if outcome.status == "completed":
            return
        assert attempt == 1 and (outcome.status, outcome.reason) == ("failed", "no_progress"), (
            outcome
        )
    raise AssertionError("no prompt completed after fuzzing")


# -- the child: schemathesis against one live API ---------------------------------------------


@dataclass
class Tally:
    """What the fuzzer sent and what came back."""

    api: str
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: dict[str, Counter[int]] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    no_negative: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Cases the document allows that the server refused with 400, by operation and field: a
    rule the document does not state (reported, not failed: some rules no schema can say)."""
    failures: dict[str, str] = field(default_factory=dict)
    """One report per distinct (operation, failure title): the first case that showed it."""

    def record(self, label: str, mode: GenerationMode, case: Case, response: Any) -> None:
        self.requests += 1
        self.statuses[response.status_code] += 1
        self.by_operation.setdefault(f"{label} {mode.value}", Counter())[response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{label}: {response.status_code} {response.text[:200]}")
        if mode.is_positive and response.status_code == 400:
            try:
                key = f"{label}: {response.json().get('field')}"
            except ValueError:
                key = f"{label}: (not JSON)"
            self.refused.setdefault(key, f"{case.as_curl_command()}\n    {response.text}")

    def as_json(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in ("api", "requests", "server_errors")},
            **{name: getattr(self, name) for name in ("no_negative", "refused", "failures")},
            "statuses": dict(self.statuses),
            "by_operation": {op: dict(seen) for op, seen in self.by_operation.items()},
            "report": self.report(),
        }

    def report(self) -> str:
        def counts(seen: Counter[int]) -> str:
            return ", ".join(f"{status}: {n}" for status, n in sorted(seen.items()))

        lines = [
            f"{self.api} API: {self.requests} requests, statuses {{{counts(self.statuses)}}}, "
            f"{len(self.server_errors)} 5xx, {len(self.failures)} distinct check failures",
            *(f"  {op}: {seen.total()} ({counts(seen)})" for op, seen in self.by_operation.items()),
            *(f"  no negative case exists for {label}" for label in self.no_negative),
            *(
                f"  allowed by the document, refused by a rule it does not state: {key}\n    {text}"
                for key, text in self.refused.items()
            ),
        ]
        return "\n".join(lines)


def fuzz(
    schema: Any,
    tally: Tally,
    headers: dict[str, str],
    *,
    fixed: Callable[[Any], dict[str, Any]] = lambda _op: {},
    after: Callable[[Case, requests.Response], None] = lambda _c, _r: None,
) -> None:
    """Every operation of ``schema``, ``EXAMPLES`` cases per generation mode, every case sent
    and checked; check failures are collected (not raised) so one finding does not hide the
    next. A request that gets no answer at all (the process hung or died) fails at once."""
    import hypothesis
    import hypothesis.errors
    import requests
    from hypothesis import HealthCheck, Phase
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    settings = hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: a failure is reported with the case that showed it
        suppress_health_check=list(HealthCheck),
    )
    session = requests.Session()

    def send(case: Case, mode: GenerationMode) -> None:
        response = case.call(session=session, headers=headers, timeout=10)
        label = f"{case.method} {case.path}"
        tally.record(label, mode, case, response)
        try:
            case.validate_response(
                response, checks=checks, headers=headers, transport_kwargs={"headers": headers}
            )
        except FailureGroup as group:
            for failure in group.exceptions:
                tally.failures.setdefault(f"{label}: {failure.title}", str(group))
        after(case, response)

    def test_for(strategy: Any, mode: GenerationMode) -> Callable[[], None]:
        @settings
        @hypothesis.given(case=strategy)
        def run(case: Case) -> None:
            send(case, mode)

        return run  # type: ignore[no-any-return]

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, **fixed(operation))
            try:
                test_for(strategy, mode)()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to negate (no parameter, no body, no token): no negative case exists.
                assert mode is GenerationMode.NEGATIVE, operation.label
                tally.no_negative.append(operation.label)


class Pool:
    """Real sessions for ``session_id`` to name; one deleted is replaced by a fresh one, and the
    last one deleted stays nameable (a stopping or forgotten session)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        import requests

        self.http = requests.Session()
        self.http.headers.update(headers)
        self.base_url = base_url
        self.ids = [self.create() for _ in range(POOL)]
        self.deleted: list[str] = []

    def create(self) -> str:
        response = self.http.post(f"{self.base_url}/sessions", json={}, timeout=10)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def pick(self, index: int) -> str | None:
        """``index`` in 0..2*POOL: a live session for most, the last deleted one (if any) or
        the generated value (None) for the rest. The draw is the same whatever the pool holds:
        Hypothesis replays draws and refuses a strategy whose shape depends on outside state."""
        if index < 2 * POOL - 1:
            return self.ids[index % len(self.ids)]
        if index == 2 * POOL - 1 and self.deleted:
            return self.deleted[-1]
        return None

    def replace(self, sid: str) -> None:
        if sid in self.ids:
            self.ids.remove(sid)
            self.deleted.append(sid)
            self.ids.append(self.create())


def fuzz_control(base_url: str, api_key: str) -> Tally:
    import schemathesis
    from hypothesis import strategies as st

    headers = {"Authorization": f"Bearer {api_key}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    pool = Pool(base_url, headers)

    @schema.hook
    def flatmap_path_parameters(_context: Any, path_parameters: dict[str, Any] | None) -> Any:
        if not isinstance(path_parameters, dict) or "session_id" not in path_parameters:
            return st.just(path_parameters)

        def named(index: int) -> dict[str, Any]:
            sid = pool.pick(index)
            return path_parameters if sid is None else {**path_parameters, "session_id": sid}

        return st.integers(0, 2 * POOL).map(named)

    def fixed(operation: Any) -> dict[str, Any]:
        if operation.path.endswith("/events"):
            return {"query": {"follow": "0"}}  # a followed stream never ends
        return {}

    def after(case: Case, response: requests.Response) -> None:
        if case.method == "DELETE" and response.status_code == 202:
            pool.replace(str(case.path_parameters.get("session_id")))

    tally = Tally("control plane")
    fuzz(schema, tally, headers, fixed=fixed, after=after)
    return tally


def fuzz_wrapper(base_url: str, token: str) -> Tally:
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    tally = Tally("wrapper job")
    fuzz(schema, tally, {"Authorization": f"Bearer {token}"})
    return tally


def main(argv: list[str]) -> int:
    api, base_url, out = argv
    secret = os.environ.pop(SECRET_ENV)
    tally = (fuzz_control if api == "control" else fuzz_wrapper)(base_url, secret)
    Path(out).write_text(json.dumps(tally.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
