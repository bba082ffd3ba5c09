"""What a locally started wrapper is given (issue 12, point 8): an allow-listed environment, the
token through a pipe the control plane does not keep, and its files beside the runtime's state
rather than in the workspaces' tree.

A stand-in for ``fsm-agent serve`` reports what it got: its environment (from
``/proc/self/environ``, which is what any same-uid process can read), what its token descriptor
is and holds, and it does not read the descriptor until told, so the test can look at it first.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from adapters.runtime.base import TOKEN_ENV, WrapperSpec
from adapters.runtime.local import API_KEY_ENV, LocalRuntime

pytestmark = pytest.mark.anyio

STANDIN = r"""
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
fd = next(int(a.split("=", 1)[1]) for a in sys.argv[1:] if a.startswith("--token-fd="))
environ = open("/proc/self/environ", "rb").read().decode()
report = {"environ": environ, "fd_target": os.readlink(f"/proc/self/fd/{fd}")}
print("ARGV", json.dumps(sys.argv[1:]), flush=True)
print("REPORT", json.dumps(report), flush=True)
while not os.path.exists(os.environ["STANDIN_GO"]):
    time.sleep(0.01)
data = b""
while chunk := os.read(fd, 4096):  # EOF only if no process holds the write end any more
    data += chunk
print("TOKEN-SHA256", __import__("hashlib").sha256(data).hexdigest(), flush=True)
while True:
    time.sleep(1)
"""
TOKEN = "tok-81c4-only-in-a-pipe"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def spec(tmp_path: Path, **kw: object) -> WrapperSpec:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    fields: dict[str, object] = {
        "session_id": "s1",
        "agent_session": "agent_s1",
        "user_id": "u1",
        "ingest_url": "ws://127.0.0.1:9/ingest/s1",
        "token": TOKEN,
        "workdir": workdir,
        "extra_env": {"STANDIN_GO": str(tmp_path / "go")},
    }
    fields.update(kw)
    return WrapperSpec(**fields)  # type: ignore[arg-type]


async def wait_line(log: Path, prefix: str) -> str:
    with anyio.fail_after(5):
        while True:
            if log.exists():
                for line in log.read_text().splitlines():
                    if line.startswith(prefix + " "):
                        return line[len(prefix) + 1 :]
            await anyio.sleep(0.01)


def environ_dict(raw: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


@pytest.mark.parametrize("table", ["agent", "kilo"])
async def test_the_wrapper_gets_an_allow_listed_environment_and_the_token_by_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    """``table``: ``[agent] pass_env``, or ``[kilo]``, its older name (Kilo's config alias)."""
    for name, value in {
        API_KEY_ENV: "the-control-planes-key",
        TOKEN_ENV: "some-token-of-ours",
        "PLANTED_SECRET": "planted-d41e",
        "AWS_SECRET_ACCESS_KEY": "planted-aws",
        "KILO_API_KEY": "planted-kilo",
        "PROVIDER_KEY": "listed-in-the-config",
        "FSM_AGENT_KILO_BIN": "/opt/kilo",
        "PYTHONPATH": "/venv/lib",
        "VIRTUAL_ENV": "/venv",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "fsm-agent.toml"
    config.write_text(f'[{table}]\npass_env = ["PROVIDER_KEY", "FSM_AGENT_API_KEY"]\n')
    async with LocalRuntime(
        tmp_path / "workspaces", lambda *_: None, command=[sys.executable, "-c", STANDIN]
    ) as rt:
        await rt.start(spec(tmp_path, config=config))
        log = rt.log_dir / "s1.log"
        report = json.loads(await wait_line(log, "REPORT"))
        env = environ_dict(report["environ"])
        assert "planted" not in report["environ"] and TOKEN not in report["environ"]
        assert TOKEN_ENV not in env and API_KEY_ENV not in env
        assert "the-control-planes-key" not in report["environ"]  # even when listed
        assert env["PROVIDER_KEY"] == "listed-in-the-config"  # pass_env, for the agent
        for name in ("PATH", "HOME", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV"):
            assert env[name] == os.environ[name]
        assert env["FSM_AGENT_KILO_BIN"] == "/opt/kilo"
        assert env["PYTHONUNBUFFERED"] == "1"
        # The token's descriptor is a pipe that the control plane no longer holds either end
        # of: the child reads the token, then EOF.
        assert report["fd_target"].startswith("pipe:[")
        ours = {
            os.readlink(f"/proc/self/fd/{fd}")
            for fd in map(int, os.listdir("/proc/self/fd"))
            if os.path.exists(f"/proc/self/fd/{fd}")
        }
        assert report["fd_target"] not in ours
        (tmp_path / "go").touch()
        assert await wait_line(log, "TOKEN-SHA256") == hashlib.sha256(TOKEN.encode()).hexdigest()
        assert TOKEN not in log.read_text()


async def test_the_runtimes_files_go_to_its_state_dir_not_the_workspaces_tree(
    tmp_path: Path,
) -> None:
    (tmp_path / "go").touch()
    state = tmp_path / "control"
    async with LocalRuntime(
        tmp_path / "workspaces",
        lambda *_: None,
        command=[sys.executable, "-c", STANDIN],
        state_dir=state,
    ) as rt:
        await rt.start(spec(tmp_path))
        argv = json.loads(await wait_line(rt.log_dir / "s1.log", "ARGV"))
        assert f"--state-dir={(state / 'kilo-state' / 's1').resolve()}" in argv
        assert rt.log_dir == state / "logs"
        assert (state / "pids" / "s1.json").exists()
        assert (state / "kilo-state").stat().st_mode & 0o077 == 0
    assert not (tmp_path / "workspaces").exists()  # nothing of the runtime's went there
