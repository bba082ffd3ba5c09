"""Run a real ``fsm-agent control`` process for a test, and talk to it as a client would.

The control plane starts real ``fsm-agent serve`` wrappers (local runtime), which start real Kilo
servers. Timers are shortened through the shared config file, never by patching code. The port
is fixed per test so a restarted control plane is found again by the wrappers it left running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.wrapper_process import write_config

API_KEY = "test-api-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 60.0, tail: Callable[[], str] = str
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{tail()}")


class SseEvent:
    def __init__(self, id_: int, kind: str, data: dict[str, Any]) -> None:
        self.id = id_
        self.kind = kind
        self.data = data

    def __repr__(self) -> str:
        return f"SseEvent({self.id}, {self.kind}, {json.dumps(self.data)[:80]})"


class Control:
    def __init__(
        self, tmp: Path, config: Path, port: int, extra_args: list[str] | None = None
    ) -> None:
        self.tmp = tmp
        self.extra_args = extra_args or []
        self.config = config
        self.port = port
        self.db = tmp / "control.db"
        self.log_path = tmp / "control.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        )

    # -- process --------------------------------------------------------------------------------

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "fsm",
            "control",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--db",
            str(self.db),
            "--config",
            str(self.config),
            *self.extra_args,
        ]
        env = {**os.environ, "FSM_AGENT_API_KEY": API_KEY}
        with self.log_path.open("ab") as err:
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
            )
        seen = len(self.log_lines())
        wait_for(
            "the control plane to listen",
            lambda: (
                any(
                    line.get("message") == "control plane listening"
                    for line in self.log_lines()[seen - 1 if seen else 0 :]
                )
                or self._died()
            ),
            tail=self.tail,
        )
        assert self.process.poll() is None, f"control plane died:\n{self.tail()}"

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        """Kill the control plane alone (its wrappers live on in their own process groups)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def log_lines(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"message": raw})
        return lines

    def tail(self, n: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        logs = self.tmp / "sessions" / "logs"
        wrappers = ""
        if logs.is_dir():
            for path in sorted(logs.iterdir()):
                lines = path.read_text(errors="replace").splitlines()[-20:]
                wrappers += f"\n--- {path.name}\n" + "\n".join(line[:300] for line in lines)
        return "control log:\n" + "\n".join(text.splitlines()[-n:]) + wrappers

    # -- client API -----------------------------------------------------------------------------

    def create_session(self, **body: Any) -> str:
        response = self.http.post("/sessions", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def session(self, sid: str) -> dict[str, Any]:
        response = self.http.get(f"/sessions/{sid}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def send(self, sid: str, prompt: str, **fields: Any) -> str:
        response = self.http.post(f"/sessions/{sid}/messages", json={"prompt": prompt, **fields})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def message(self, sid: str, mid: str) -> dict[str, Any]:
        for message in self.session(sid)["messages"]:
            if message["id"] == mid:
                return dict(message)
        raise AssertionError(f"no message {mid} in session {sid}")

    def wait_message(
        self, sid: str, mid: str, states: tuple[str, ...], timeout: float = 90.0
    ) -> dict[str, Any]:
        result: dict[str, Any] = wait_for(
            f"message {mid} to be one of {states}",
            lambda: (m := self.message(sid, mid))["state"] in states and m,
            timeout,
            self.tail,
        )
        return result

    def wait_state(self, sid: str, states: tuple[str, ...], timeout: float = 90.0) -> str:
        state: str = wait_for(
            f"session {sid} to be one of {states}",
            lambda: (s := self.session(sid)["state"]) in states and s,
            timeout,
            self.tail,
        )
        return state

    def events(self, sid: str, after: int = 0) -> list[SseEvent]:
        """Everything stored so far (``follow=0`` ends the stream at the present)."""
        headers = {"Last-Event-ID": str(after)} if after else {}
        response = self.http.get(f"/sessions/{sid}/events", params={"follow": "0"}, headers=headers)
        assert response.status_code == 200, response.text
        return parse_sse(response.text)

    def transitions(self, sid: str) -> list[tuple[str, str]]:
        """The session machine's (source, dest) path so far, from its event log."""
        return [(e.data["from"], e.data["to"]) for e in self.events(sid) if e.kind == "transition"]

    def wrapper_pids(self) -> dict[str, int]:
        """Session id → pid of its current wrapper, from the wrappers' own pidfiles in the log."""
        pids: dict[str, int] = {}
        for line in self.log_lines():
            if line.get("logger") == "fsm_agent.runtime" and "pid" in line:
                pids[str(line["session"])] = int(line["pid"])
        return pids


def parse_sse(text: str) -> list[SseEvent]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "id" in fields:
            events.append(
                SseEvent(int(fields["id"]), fields.get("event", ""), json.loads(fields["data"]))
            )
    return events


WRAPPER_FAST = {
    "ingest_heartbeat": "1s",
    "ingest_backoff_initial": "100ms",
    "ingest_backoff_max": "500ms",
    "agent_stop_grace": "1s",
    "wrapper_backoff_initial": "100ms",
    "wrapper_backoff_max": "500ms",
    # Room for a wrapper told to go (shutdown, release) to stop its Kilo on a loaded machine:
    # past it the wrapper is signalled and exits non-zero (seen once with both cores busy).
    "wrapper_stop_grace": "10s",
}
"""Timers of the end-to-end tests of a control plane and its wrappers: quick reconnects and
restarts, nothing that waits for a production timeout."""


@contextmanager
def running_control(
    tmp: Path,
    kilo_config: dict[str, Any],
    timers: dict[str, str] | None = None,
    *,
    extra_args: list[str] | None = None,
    limits: dict[str, int] | None = None,
    runtime: dict[str, str] | None = None,
) -> Iterator[Control]:
    config = write_config(tmp / "fsm-agent.toml", timers or {}, kilo_config)
    if limits:
        with config.open("a") as file:
            file.write("\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))
    if runtime:
        with config.open("a") as file:
            file.write("\n[runtime]\n" + "".join(f'{k} = "{v}"\n' for k, v in runtime.items()))
    control = Control(tmp, config, free_port(), extra_args)
    control.start()
    try:
        yield control
    finally:
        if control.process is not None and control.process.poll() is None:
            control.process.send_signal(signal.SIGTERM)
            try:
                control.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                control.process.kill()
                control.process.wait()
        # Wrappers orphaned by a killed control plane are stopped through their pidfiles' groups.
        _kill_leftover_wrappers(tmp)
        control.http.close()


def _kill_leftover_wrappers(tmp: Path) -> None:
    for line in Control(tmp, tmp / "fsm-agent.toml", 0).log_lines():
        if line.get("logger") == "fsm_agent.runtime" and "pid" in line:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(int(line["pid"]), signal.SIGKILL)
