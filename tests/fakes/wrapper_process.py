"""Run a real ``fsm-agent serve`` process for a test: config file, workspace, log, job API client.

Timers are shortened through the config file (never by patching code); the log is the wrapper's
JSON stderr, kept in a file so a failing test can show it. The token goes the way an operator
would give it, in a 0600 file the wrapper removes once read (``--token-file``); Kilo's state goes
beside the workspace, not into it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from adapters.agents.registry import AGENTS

TOKEN = "test-token"

FAST = {
    # Just above Kilo's 10 s heartbeat (OpenCode's is about the same): shorter would make a
    # healthy idle stream look silent.
    "stream_silence": "11s",
    "health_probe_timeout": "1s",
    "first_event_grace": "10s",
    "agent_stop_grace": "1s",
    "agent_restart_backoff_initial": "100ms",
    "ingest_backoff_initial": "100ms",
    "ingest_backoff_max": "500ms",
    "ingest_heartbeat": "1s",
}
"""The wrapper timers the real-agent serve tests run with: restarts, reconnects and stops in
well under a second, so a test waits on the behaviour, not on production durations."""


def toml_value(value: Any) -> str:
    return json.dumps(value)


def write_config(path: Path, timers: dict[str, str], agent: dict[str, Any]) -> Path:
    lines = ["[timers]"] + [f"{k} = {toml_value(v)}" for k, v in timers.items()]
    config_file = path.parent / "agent.json"
    config_file.write_text(json.dumps(agent))
    lines += ["", "[agent]", f"config_file = {toml_value(config_file.name)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def git_workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "README.md").write_text("# test workspace\n")
    return path


class Wrapper:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, workdir: Path) -> None:
        self.process = process
        self.log_path = log
        self.workdir = workdir
        self.port = 0
        self.http = httpx.Client(timeout=10)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"message": raw})
        return lines

    def wait_log(self, message: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines():
                if line.get("message") == message:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line {message!r}; log tail:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.request(method, self.url(path), headers=headers, **kwargs)

    def status(self) -> dict[str, Any]:
        response = self.request("GET", "/job/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def prompt(self, text: str, **fields: Any) -> str:
        response = self.request("POST", "/job/prompt", json={"prompt": text, **fields})
        assert response.status_code == 202, response.text
        return str(response.json()["message_id"])

    def agent_pid(self) -> int:
        pid = self.status()["agent"]["pid"]
        assert isinstance(pid, int)
        return pid

    def agent_history(self) -> tuple[str, list[dict[str, Any]]]:
        """The wrapper's agent session id and that session's messages, read from the agent
        itself (its password is in its ``/proc/<pid>/environ``, readable by the same user)."""
        agent = self.status()["agent"]
        spec = AGENTS[agent["name"]]
        environ = Path(f"/proc/{agent['pid']}/environ").read_bytes().split(b"\0")
        prefix = f"{spec.password_env}=".encode()
        password = next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(prefix))
        session = str(agent["session"])
        response = httpx.get(
            f"{agent['url']}/session/{session}/message", auth=(spec.username, password), timeout=10
        )
        response.raise_for_status()
        messages: list[dict[str, Any]] = response.json()
        return session, messages

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", "/readyz").status_code == 200:
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"wrapper never ready; log tail:\n{self.tail()}")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)


@contextmanager
def running_wrapper(
    tmp: Path,
    ingest_url: str,
    agent_config: dict[str, Any],
    timers: dict[str, str] | None = None,
    *,
    extra_args: list[str] | None = None,
    agent: str | None = None,
) -> Iterator[Wrapper]:
    """``fsm-agent serve`` as a child process; ``agent``: ``--agent NAME`` (default: the
    config's, else Kilo)."""
    workdir = git_workspace(tmp / "workspace")
    config = write_config(tmp / "fsm-agent.toml", timers or {}, agent_config)
    log = tmp / "wrapper.log"
    token_file = tmp / "wrapper-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    command = [
        sys.executable,
        "-m",
        "fsm",
        "serve",
        "--agent-session",
        "agent-1",
        "--user-id",
        "user-1",
        "--session-id",
        "sess-1",
        "--ingest-url",
        ingest_url,
        "--listen",
        "127.0.0.1:0",
        "--workdir",
        str(workdir),
        "--config",
        str(config),
        f"--token-file={token_file}",
        f"--state-dir={tmp / 'agent-state'}",  # extra_args may give another: the last one wins
        *(["--agent", agent] if agent else []),
        *(extra_args or []),
    ]
    env = {k: v for k, v in os.environ.items() if k != "FSM_AGENT_TOKEN"}
    with log.open("wb") as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
    wrapper = Wrapper(process, log, workdir)
    try:
        wrapper.port = int(wrapper.wait_log("job API listening")["port"])
        yield wrapper
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        wrapper.http.close()
