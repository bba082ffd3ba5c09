"""A control plane that crashed leaves its wrappers running; its successor adopts them through
their pidfiles (pid + start time), can stop them, hears their exit, and never runs two wrappers
for one session."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from adapters.pidfile import write_pidfile
from adapters.runtime.local import LocalRuntime
from tests.adapters.test_local_runtime import COMMAND, Exits, alive, spec, wait_ready

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def leftover(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A wrapper stand-in started by a 'previous control plane', with the pidfile it would write."""
    process = subprocess.Popen(
        [*COMMAND],
        env={"STANDIN_MODE": "serve", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    write_pidfile(tmp_path / "sessions" / "pids" / "s1.json", process.pid)
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def _reap_later(process: subprocess.Popen[bytes]) -> None:
    process.poll()  # our test process is its parent: collect the zombie so it counts as gone


async def test_adopted_wrapper_runs_on_stops_on_request_and_its_exit_is_reported_once(
    tmp_path: Path, leftover: subprocess.Popen[bytes]
) -> None:
    exits = Exits()
    async with LocalRuntime(tmp_path / "sessions", exits, command=COMMAND) as rt:
        assert rt.adopt("s1") == leftover.pid
        assert rt.running("s1") and rt.pid("s1") == leftover.pid
        assert rt.adopt("s1") is None  # already ours
        assert await rt.stop("s1", grace=2) is None  # not our child: no exit code to read
        _reap_later(leftover)
        assert exits.calls == [("s1", None)]
        assert not rt.running("s1") and not alive(leftover.pid)
        assert not (rt.pid_dir / "s1.json").exists()


async def test_an_adopted_wrapper_that_dies_is_reported(
    tmp_path: Path, leftover: subprocess.Popen[bytes]
) -> None:
    exits = Exits()
    async with LocalRuntime(tmp_path / "sessions", exits, command=COMMAND) as rt:
        rt.adopt("s1")
        leftover.kill()
        leftover.wait()
        await exits.wait_for(1)
        assert exits.calls == [("s1", None)] and not rt.running("s1")


async def test_a_reused_pid_is_not_adopted(
    tmp_path: Path, leftover: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "sessions" / "pids" / "s1.json"
    data = json.loads(pidfile.read_text())
    pidfile.write_text(json.dumps({"pid": data["pid"], "start_time": data["start_time"] - 1}))
    async with LocalRuntime(tmp_path / "sessions", Exits(), command=COMMAND) as rt:
        assert rt.adopt("s1") is None and not rt.running("s1")
    assert leftover.poll() is None  # someone else's process was left alone


async def test_start_kills_a_leftover_nobody_adopted_and_records_its_own_pid(
    tmp_path: Path, leftover: subprocess.Popen[bytes]
) -> None:
    exits = Exits()
    async with LocalRuntime(tmp_path / "sessions", exits, command=COMMAND) as rt:
        await rt.start(spec(tmp_path))
        await wait_ready(rt, "s1")
        with anyio.fail_after(3):
            while leftover.poll() is None:
                await anyio.sleep(0.01)
        recorded = json.loads((rt.pid_dir / "s1.json").read_text())
        assert recorded["pid"] == rt.pid("s1") != leftover.pid
    assert exits.calls == [("s1", 0)]  # only our own child's exit, at the context's end
    assert not (tmp_path / "sessions" / "pids" / "s1.json").exists()


async def test_no_pidfile_means_nothing_to_adopt(tmp_path: Path) -> None:
    async with LocalRuntime(tmp_path / "sessions", Exits(), command=COMMAND) as rt:
        assert rt.adopt("s1") is None
        with pytest.raises(Exception, match="cannot name a directory"):
            rt.adopt("../etc")
