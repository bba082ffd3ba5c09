"""``control`` and ``serve`` on a port that is taken (issue 18): one line naming the address and
who holds it, exit 2, no traceback. Real processes on a real socket held by this test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsm.settings.listen import port_holder


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port this process listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FSM_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "fsm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**base, **env},
    )


def _assert_one_line(done: subprocess.CompletedProcess[str], port: int) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --listen 127.0.0.1:{port}: address already in use (held by pid {os.getpid()}: "
        f"{_cmdline()}); stop it or pick another port"
    ], done.stderr


def _cmdline() -> str:
    argv = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")
    text = " ".join(" ".join(a.decode() for a in argv if a).split())
    return text if len(text) <= 120 else text[:119] + "…"


def test_port_holder_names_the_listening_process(taken: int) -> None:
    assert port_holder(taken) == f"pid {os.getpid()}: {_cmdline()}"


def test_control_on_a_port_in_use_says_so_in_one_line(taken: int, tmp_path: Path) -> None:
    done = _run(["control", f"--listen=127.0.0.1:{taken}"], tmp_path, {"FSM_AGENT_API_KEY": "k"})
    _assert_one_line(done, taken)


def test_serve_on_a_port_in_use_says_so_in_one_line(taken: int, tmp_path: Path) -> None:
    done = _run(
        [
            "serve",
            "--agent-session=a",
            "--user-id=u",
            "--session-id=s",
            "--ingest-url=ws://127.0.0.1:9/ingest/s",
            f"--listen=127.0.0.1:{taken}",
            f"--workdir={tmp_path}",
            f"--state-dir={tmp_path.parent / (tmp_path.name + '-state')}",
        ],
        tmp_path,
        {"FSM_AGENT_TOKEN": "tok"},
    )
    _assert_one_line(done, taken)


@pytest.mark.parametrize("listen", ["nope", "127.0.0.1:99999", ":80", "127.0.0.1:"])
def test_a_bad_listen_is_one_line_exit_2(listen: str, tmp_path: Path) -> None:
    done = _run(["control", f"--listen={listen}"], tmp_path, {"FSM_AGENT_API_KEY": "k"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: --listen"), done.stderr
