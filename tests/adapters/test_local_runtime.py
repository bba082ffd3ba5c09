"""The local runtime starts each wrapper as its own process group with the token in an inherited
pipe only (never argv, never the environment) and an allow-listed environment, reports every exit
exactly once, escalates SIGTERM to SIGKILL, and leaves no process behind.

Real processes: a tiny Python stand-in for ``fsm-agent serve`` whose behaviour is picked with the
``STANDIN_MODE`` variable (given through ``extra_env``).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import anyio
import pytest

from adapters.runtime.base import (
    TOKEN_ENV,
    RuntimePortError,
    WrapperAlreadyRunningError,
    WrapperSpec,
    WrapperStartError,
    restart,
)
from adapters.runtime.local import API_KEY_ENV, LocalRuntime

pytestmark = pytest.mark.anyio

STANDIN = r"""
import hashlib, os, signal, subprocess, sys, time
mode = os.environ.get("STANDIN_MODE", "serve")
print("argv", " ".join(sys.argv[1:]), flush=True)
for arg in sys.argv[1:]:  # like fsm-agent serve --token-fd: read to EOF, close
    if arg.startswith("--token-fd="):
        fd, data = int(arg.split("=", 1)[1]), b""
        while chunk := os.read(fd, 4096):
            data += chunk
        os.close(fd)
        print("token-sha256", hashlib.sha256(data).hexdigest(), flush=True)
if mode == "crash":
    sys.stdout.write("last words, no newline")
    sys.exit(3)
if mode == "serve":  # like fsm-agent serve: SIGTERM means shut down cleanly, exit 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
elif mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "spawner":  # leaves a grandchild in its process group
    print("grandchild", subprocess.Popen(["sleep", "60"]).pid, flush=True)
elif mode == "leaving":  # told to go over its socket: leaves on its own soon; SIGTERM says 15
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(15))
    print("ready", flush=True)
    time.sleep(0.5)
    sys.exit(0)
print("ready", flush=True)
while True:
    time.sleep(1)
"""
COMMAND = [sys.executable, "-c", STANDIN]
TOKEN = "tok-3f9a-never-in-argv"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Exits:
    """The on_exit callback, recording what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def __call__(self, session_id: str, code: int | None) -> None:
        self.calls.append((session_id, code))

    async def wait_for(self, count: int, timeout: float = 3.0) -> None:
        with anyio.fail_after(timeout):
            while len(self.calls) < count:
                await anyio.sleep(0.01)


def spec(tmp_path: Path, sid: str = "s1", mode: str = "serve", **kw: object) -> WrapperSpec:
    workdir = tmp_path / "work" / sid
    workdir.mkdir(parents=True, exist_ok=True)
    fields: dict[str, object] = {
        "session_id": sid,
        "agent_session": f"agent_{sid}",
        "user_id": "u1",
        "ingest_url": f"ws://127.0.0.1:9/ingest/{sid}",
        "token": TOKEN,
        "workdir": workdir,
        "extra_env": {"STANDIN_MODE": mode},
    }
    fields.update(kw)
    return WrapperSpec(**fields)  # type: ignore[arg-type]


def runtime(tmp_path: Path, exits: Exits, exit_grace: float = 0.5) -> LocalRuntime:
    return LocalRuntime(tmp_path / "sessions", exits, command=COMMAND, exit_grace=exit_grace)


async def wait_ready(rt: LocalRuntime, sid: str, count: int = 1) -> str:
    log = rt.log_dir / f"{sid}.log"
    with anyio.fail_after(3):
        while True:
            text = log.read_text() if log.exists() else ""
            if text.count("\nready\n") >= count:
                return text
            await anyio.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not yet reaped


async def test_start_runs_the_wrapper_with_its_identity_and_its_token_through_a_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_ENV, "the-control-planes-api-key")
    monkeypatch.setenv(TOKEN_ENV, "a-token-in-our-own-environment")
    monkeypatch.setenv("PLANTED_SECRET", "operator-secret-not-for-wrappers")
    exits = Exits()
    config = tmp_path / "timers.toml"
    s = spec(tmp_path, config=config, agent_bin="kilo", version="0.0.0-old")
    async with runtime(tmp_path, exits) as rt:
        await rt.start(s)
        assert rt.running("s1")
        pid = rt.pid("s1")
        assert pid is not None
        await wait_ready(rt, "s1")

        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert TOKEN.encode() not in b" ".join(argv)
        flags = [a for a in argv if a.startswith(b"--")]
        token_fd = next(int(a.split(b"=")[1]) for a in flags if a.startswith(b"--token-fd="))
        assert flags == [
            b"--agent-session=agent_s1",
            b"--user-id=u1",
            b"--session-id=s1",
            b"--ingest-url=ws://127.0.0.1:9/ingest/s1",
            f"--workdir={s.workdir.resolve()}".encode(),
            f"--token-fd={token_fd}".encode(),
            f"--state-dir={(tmp_path / 'sessions' / 'kilo-state' / 's1').resolve()}".encode(),
            f"--config={config.resolve()}".encode(),
            b"--agent-bin=kilo",
            b"--version=0.0.0-old",
        ]
        raw_env = Path(f"/proc/{pid}/environ").read_bytes()
        env = dict(item.split(b"=", 1) for item in raw_env.split(b"\0") if b"=" in item)
        assert TOKEN.encode() not in raw_env and TOKEN_ENV.encode() not in env
        assert b"operator-secret-not-for-wrappers" not in raw_env
        assert env[b"STANDIN_MODE"] == b"serve"
        assert API_KEY_ENV.encode() not in env  # the wrapper never holds the client API key
        assert Path(f"/proc/{pid}/cwd").resolve() == s.workdir.resolve()
        assert os.getpgid(pid) == pid  # its own process group
        assert exits.calls == []

    log = (rt.log_dir / "s1.log").read_text()
    assert "starting:" in log and "argv --agent-session=agent_s1" in log
    assert f"token-sha256 {hashlib.sha256(TOKEN.encode()).hexdigest()}\n" in log  # the pipe
    assert TOKEN not in log
    assert exits.calls == [("s1", 0)]


async def test_a_crash_is_reported_once_with_its_code(tmp_path: Path) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits) as rt:
        await rt.start(spec(tmp_path, mode="crash"))
        await exits.wait_for(1)
        assert exits.calls == [("s1", 3)]
        assert not rt.running("s1")
        assert await rt.stop("s1", grace=0.1) is None  # nothing left to stop
        await anyio.sleep(0.1)
    assert exits.calls == [("s1", 3)]
    assert "last words, no newline\n--- " in (rt.log_dir / "s1.log").read_text()
    assert "exited with code 3" in (rt.log_dir / "s1.log").read_text()


async def test_a_failing_exit_handler_does_not_bring_the_runtime_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(session_id: str, code: int | None) -> None:
        calls.append(session_id)
        raise KeyError(session_id)

    async with LocalRuntime(tmp_path / "sessions", broken, command=COMMAND) as rt:
        await rt.start(spec(tmp_path, "crashes", mode="crash"))
        await rt.start(spec(tmp_path, "lives"))
        with anyio.fail_after(3):
            while not calls:
                await anyio.sleep(0.01)
        await wait_ready(rt, "lives")
        assert rt.running("lives")
        assert await rt.stop("lives", grace=2.0) == 0
    assert calls == ["crashes", "lives"]
    assert "on_exit handler failed for session crashes" in caplog.text


async def test_stop_sends_sigterm_and_reports_the_exit_before_returning(tmp_path: Path) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits) as rt:
        await rt.start(spec(tmp_path))
        pid = rt.pid("s1")
        assert pid is not None
        await wait_ready(rt, "s1")
        started = time.monotonic()
        code = await rt.stop("s1", grace=5.0)
        assert code == 0  # the stand-in honours SIGTERM by exiting cleanly
        assert time.monotonic() - started < 2.0  # without waiting for the grace
        assert exits.calls == [("s1", 0)]
        assert not rt.running("s1") and not alive(pid)


@pytest.mark.parametrize(("asked", "code"), [(True, 0), (False, 15)])
async def test_a_wrapper_already_asked_to_exit_gets_the_grace_before_any_signal(
    tmp_path: Path, asked: bool, code: int
) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits) as rt:
        await rt.start(spec(tmp_path, mode="leaving"))
        await wait_ready(rt, "s1")
        assert await rt.stop("s1", grace=5.0, asked=asked) == code
        assert exits.calls == [("s1", code)]


async def test_a_child_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits) as rt:
        await rt.start(spec(tmp_path, mode="stubborn"))
        await wait_ready(rt, "s1")
        started = time.monotonic()
        code = await rt.stop("s1", grace=0.3)
        elapsed = time.monotonic() - started
        assert code == -9
        assert 0.3 <= elapsed < 2.0
        assert exits.calls == [("s1", -9)]


async def test_starting_a_running_session_fails_and_restart_replaces_it(tmp_path: Path) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits) as rt:
        s = spec(tmp_path)
        await rt.start(s)
        first = rt.pid("s1")
        with pytest.raises(WrapperAlreadyRunningError, match=rf"session 's1'.*pid {first}"):
            await rt.start(s)
        await wait_ready(rt, "s1")

        assert await restart(rt, s, grace=2.0) == 0
        assert exits.calls == [("s1", 0)]  # the asked-for exit is reported too
        assert rt.running("s1") and rt.pid("s1") not in (None, first)
        await wait_ready(rt, "s1", count=2)  # both runs appended to the same log
    assert exits.calls == [("s1", 0), ("s1", 0)]


async def test_sessions_are_independent(tmp_path: Path) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits) as rt:
        await rt.start(spec(tmp_path, "a"))
        await rt.start(spec(tmp_path, "b"))
        await wait_ready(rt, "a")
        await wait_ready(rt, "b")
        assert await rt.stop("a", grace=2.0) == 0
        assert exits.calls == [("a", 0)]
        assert rt.running("b") and not rt.running("a")


async def test_a_missing_workdir_falls_back_to_the_session_directory(tmp_path: Path) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits) as rt:
        await rt.start(spec(tmp_path, workdir=tmp_path / "does-not-exist"))
        pid = rt.pid("s1")
        assert pid is not None
        text = await wait_ready(rt, "s1")
        session_dir = (tmp_path / "sessions" / "s1").resolve()
        assert Path(f"/proc/{pid}/cwd").resolve() == session_dir
        assert f"--workdir={session_dir}" in text
    assert not (tmp_path / "does-not-exist").exists()


async def test_bad_specs_and_commands_fail_naming_the_session(tmp_path: Path) -> None:
    exits = Exits()
    outside = runtime(tmp_path, exits)
    with pytest.raises(RuntimePortError, match="async with"):
        await outside.start(spec(tmp_path))
    async with runtime(tmp_path, exits) as rt:
        with pytest.raises(WrapperStartError, match="cannot name a directory"):
            await rt.start(spec(tmp_path, sid="../escape"))
        with pytest.raises(WrapperStartError, match=f"'s1'.*must not set {TOKEN_ENV}"):
            await rt.start(spec(tmp_path, extra_env={TOKEN_ENV: "other"}))
        with pytest.raises(WrapperStartError, match=f"'s1'.*must not set .*{API_KEY_ENV}"):
            await rt.start(spec(tmp_path, extra_env={API_KEY_ENV: "other"}))
        with pytest.raises(WrapperStartError, match=r"'s1'.*token is empty"):
            await rt.start(spec(tmp_path, token=""))
    async with LocalRuntime(
        tmp_path / "sessions", exits, command=[str(tmp_path / "no-such-binary")]
    ) as rt:
        with pytest.raises(WrapperStartError, match=r"session 's1' with .*no-such-binary"):
            await rt.start(spec(tmp_path))
        assert not rt.running("s1")
    assert exits.calls == []


async def test_leaving_the_context_stops_every_child_and_its_group(tmp_path: Path) -> None:
    exits = Exits()
    async with runtime(tmp_path, exits, exit_grace=0.3) as rt:
        for sid, mode in (("polite", "serve"), ("stubborn", "stubborn"), ("spawner", "spawner")):
            await rt.start(spec(tmp_path, sid, mode=mode))
        pids = [rt.pid(sid) for sid in ("polite", "stubborn", "spawner")]
        for sid in ("polite", "stubborn", "spawner"):
            text = await wait_ready(rt, sid)
        (line,) = [x for x in text.splitlines() if x.startswith("grandchild ")]
        grandchild = int(line.split()[1])
        assert alive(grandchild)

    assert sorted(exits.calls) == [("polite", 0), ("spawner", -15), ("stubborn", -9)]
    assert not any(alive(pid) for pid in pids if pid is not None)
    assert not alive(grandchild)
    with pytest.raises(RuntimePortError, match="not running"):
        await rt.start(spec(tmp_path))


async def test_a_cancelled_owner_takes_its_children_with_it(tmp_path: Path) -> None:
    exits = Exits()
    with anyio.CancelScope() as owner:
        async with runtime(tmp_path, exits, exit_grace=5.0) as rt:
            await rt.start(spec(tmp_path, mode="stubborn"))
            pid = rt.pid("s1")
            assert pid is not None
            await wait_ready(rt, "s1")
            started = time.monotonic()
            owner.cancel()
            await anyio.sleep_forever()
    assert time.monotonic() - started < 1.0  # killed at once, not after the exit grace
    assert pid is not None and not alive(pid)
    assert exits.calls == [("s1", -9)]


def test_the_spec_repr_hides_the_token(tmp_path: Path) -> None:
    assert TOKEN not in repr(spec(tmp_path))
    assert TOKEN not in str(spec(tmp_path))
