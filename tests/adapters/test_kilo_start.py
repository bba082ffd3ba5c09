"""Owning a ``kilo serve``: port drawing and retry, password, pidfile and stale groups, start-up
timeout, stop escalation, and where the binary comes from.

The real Kilo where its own behaviour is the point (a taken port makes it exit with
``ServeError``; it refuses requests without the password); small stand-in scripts where the
point is ours (a Kilo that never listens, one that ignores SIGTERM), since the real one cannot be
made to misbehave that way.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from adapters.kilo import binary
from adapters.kilo.binary import ENV_VAR, KiloNotFound, find_kilo
from adapters.kilo.process import PORT_RANGE, AgentStartError, start_agent
from adapters.pidfile import process_start_time, write_pidfile
from tests.fakes.fake_llm import FakeLLM

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Scripted(random.Random):
    """Draws the given ports in order (then random ones): the retry path made deterministic."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(0)
        self.ports = list(ports)

    def randint(self, a: int, b: int) -> int:
        return self.ports.pop(0) if self.ports else super().randint(a, b)


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port in Kilo's range with a listening socket on it."""
    with socket.socket() as sock:
        for _ in range(50):
            port = random.randint(*PORT_RANGE)
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        sock.listen()
        yield port


def _alive(pid: int) -> bool:
    return process_start_time(pid) is not None


@pytest.mark.kilo
async def test_a_taken_port_is_drawn_again_and_the_password_guards_every_route(
    tmp_path: Path, fake_llm: FakeLLM, taken_port: int
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    draws = Scripted([taken_port])
    server = await start_agent(
        workdir=work,
        state_dir=tmp_path / "state",
        config=fake_llm.provider_config(),
        agent_bin=None,
        startup_timeout=60,
        rng=draws,
    )
    try:
        assert draws.ports == []  # the taken port was tried first
        assert server.port != taken_port
        assert server.url == f"http://127.0.0.1:{server.port}"  # as Kilo printed it
        errs = sorted((tmp_path / "state" / "logs").glob("*.err"))
        assert len(errs) == 2 and b"ServeError" in errs[0].read_bytes()
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/global/health")).status_code == 401
            assert (await http.get("/global/health", auth=("kilo", "guess"))).status_code == 401
            assert (await http.get("/global/health", auth=server.auth)).json()["healthy"] is True
        pidfile = tmp_path / "state" / "kilo.pid"
        assert f'"pid": {server.pid}' in pidfile.read_text()
    finally:
        code = await server.stop(5.0)
    assert code in (0, -signal.SIGTERM)  # SIGTERM honoured, not killed
    assert not pidfile.exists()
    assert not _alive(server.pid)


STANDIN = r"""
import os, signal, sys, time
mode = os.environ["STANDIN"]
if mode == "silent":  # never prints its listening line
    time.sleep(60)
if mode == "stubborn":  # listening and healthy, but ignores SIGTERM
    import http.server, threading
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    port = int(sys.argv[sys.argv.index("--port") + 1])
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"healthy": true, "version": "standin"}'
            self.send_response(200); self.send_header("content-length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *a): pass
    server = http.server.HTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"kilo server listening on http://127.0.0.1:{port}", flush=True)
    time.sleep(60)
"""


def _standin(tmp_path: Path, mode: str) -> tuple[str, dict[str, str]]:
    script = tmp_path / "kilo"
    script.write_text(f"#!{sys.executable}\n{STANDIN}")
    script.chmod(0o755)
    return str(script), {**os.environ, "STANDIN": mode}


async def test_a_kilo_that_never_listens_fails_at_the_configured_timeout(tmp_path: Path) -> None:
    binary, env = _standin(tmp_path, "silent")
    started = time.monotonic()
    with pytest.raises(AgentStartError, match="was not healthy in time"):
        await start_agent(
            workdir=tmp_path,
            state_dir=tmp_path / "state",
            config={},
            agent_bin=binary,
            startup_timeout=0.5,
            env=env,
            pass_env=["STANDIN"],  # Kilo's environment is an allow-list
        )
    assert time.monotonic() - started < 10  # the configured 0.5 s, not a built-in default
    assert not (tmp_path / "state" / "kilo.pid").exists()  # nothing left behind


async def test_stop_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    binary, env = _standin(tmp_path, "stubborn")
    server = await start_agent(
        workdir=tmp_path,
        state_dir=tmp_path / "state",
        config={},
        agent_bin=binary,
        startup_timeout=10,
        env=env,
        pass_env=["STANDIN"],
    )
    started = time.monotonic()
    assert await server.stop(0.3) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.3
    assert not _alive(server.pid)


async def test_start_kills_the_group_a_crashed_predecessor_left(tmp_path: Path) -> None:
    binary, env = _standin(tmp_path, "stubborn")
    state = tmp_path / "state"
    leftover = subprocess.Popen(["sleep", "60"], start_new_session=True)
    unrelated = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        write_pidfile(state / "kilo.pid", leftover.pid)
        server = await start_agent(
            workdir=tmp_path,
            state_dir=state,
            config={},
            agent_bin=binary,
            startup_timeout=10,
            env=env,
            pass_env=["STANDIN"],  # Kilo's environment is an allow-list
        )
        await server.stop(0.3)
        with anyio.fail_after(5):
            while leftover.poll() is None:
                await anyio.sleep(0.02)
        assert leftover.returncode == -signal.SIGKILL
        assert unrelated.poll() is None  # only the group the pidfile named
    finally:
        for process in (leftover, unrelated):
            process.kill()
            process.wait()


def test_a_pidfile_whose_pid_was_reused_is_not_obeyed(tmp_path: Path) -> None:
    from adapters.pidfile import kill_stale_group

    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        pidfile = tmp_path / "kilo.pid"
        start = process_start_time(bystander.pid)
        assert start is not None
        pidfile.write_text(f'{{"pid": {bystander.pid}, "start_time": {start - 1}}}')
        assert kill_stale_group(pidfile) is False
        assert bystander.poll() is None and not pidfile.exists()
    finally:
        bystander.kill()
        bystander.wait()


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_binary_comes_from_the_flag_then_the_environment_then_the_install_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = _executable(tmp_path / "flag-kilo")
    from_env = _executable(tmp_path / "env-kilo")
    install = _executable(tmp_path / "installed-kilo")
    path_dir = tmp_path / "bin"
    path_dir.mkdir()
    on_path = _executable(path_dir / "kilo")
    monkeypatch.setattr(binary, "PROJECT_INSTALL", install)
    env = {ENV_VAR: str(from_env), "PATH": str(path_dir)}
    assert find_kilo(str(flag), env=env) == flag.resolve()
    assert find_kilo(None, env=env) == from_env.resolve()
    assert find_kilo(None, env={"PATH": str(path_dir)}) == install
    monkeypatch.setattr(binary, "PROJECT_INSTALL", tmp_path / "not-installed")
    assert find_kilo(None, env={"PATH": str(path_dir)}) == on_path


def test_a_missing_binary_says_where_it_looked_and_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(KiloNotFound, match=r"--agent-bin=.*not an executable file"):
        find_kilo(str(tmp_path / "nope"), env={})
    with pytest.raises(KiloNotFound, match=rf"{ENV_VAR}=.*not an executable"):
        find_kilo(None, env={ENV_VAR: str(tmp_path / "nope")})
    monkeypatch.setattr(binary, "PROJECT_INSTALL", tmp_path / "not-installed")
    with pytest.raises(KiloNotFound) as missing:
        find_kilo(None, env={"PATH": str(tmp_path)})
    message = str(missing.value)
    assert "not-installed" in message and "kilo on PATH" in message
    assert "npm install --prefix .kilo @kilocode/cli-linux-x64@7.7.9" in message
