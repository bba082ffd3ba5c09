"""The wrapper spawns Kilo before importing its host (``fsm.serve.launch``), and the host's first
start takes that spawn rather than a second one; a spawn no start took is not left running.

Stand-in Kilos (the scripts of ``tests/adapters/test_kilo_start.py``): what is tested is which
process the wrapper keeps, not Kilo.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import fsm.serve.host
from adapters.kilo.process import spawn_agent, start_agent
from fsm.hosting.logs import JsonLog
from fsm.machines.timers import WRAPPER_TIMERS
from fsm.serve.host import WrapperHost
from fsm.serve.launch import hold_stop_signals, run_wrapper
from fsm.serve.settings import ServeSettings
from tests.adapters.test_kilo_start import STANDIN

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> str:
    script = tmp_path / "kilo"
    script.write_text(f"#!{sys.executable}\n{STANDIN}")
    script.chmod(0o755)
    monkeypatch.setenv("STANDIN", mode)
    return str(script)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_start_given_a_spawn_waits_for_that_process_not_a_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _standin(tmp_path, monkeypatch, "stubborn")
    spawned = await spawn_agent(
        workdir=tmp_path, state_dir=tmp_path / "state", config={}, agent_bin=binary,
        pass_env=["STANDIN"],
    )  # fmt: skip
    server = await start_agent(
        first=spawned, workdir=tmp_path, state_dir=tmp_path / "state", config={},
        agent_bin=binary, startup_timeout=10, pass_env=["STANDIN"],
    )  # fmt: skip
    try:
        assert server.pid == spawned.process.pid
        assert server.started_at == spawned.started  # the timeout counts from the spawn
        assert len(list((tmp_path / "state" / "logs").glob("*.out"))) == 1  # one process only
    finally:
        await server.stop(0.2)


async def test_a_spawn_the_host_never_took_is_killed_when_the_wrapper_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = _standin(tmp_path, monkeypatch, "stubborn")
    seen: list[Any] = []

    class StoppedBeforeStarting:
        """A host that exits before its machine asks for Kilo (a stop, a bind error)."""

        def __init__(self, *_args: Any, early_agent: Any = None, **_kw: Any) -> None:
            self.early_agent = early_agent
            seen.append(early_agent)

        async def run(self) -> int:
            return 3

    monkeypatch.setattr(fsm.serve.host, "WrapperHost", StoppedBeforeStarting)
    settings = ServeSettings(
        agent_session="a", user_id="u", session_id="s", ingest_url="ws://127.0.0.1:9/i",
        token="t", workdir=tmp_path, state_dir=tmp_path / "state", agent_bin=binary,
        agent_pass_env=["STANDIN"],
    )  # fmt: skip
    assert await run_wrapper(settings, WRAPPER_TIMERS.defaults(), JsonLog()) == 3
    [early] = seen
    assert early is not None  # Kilo was spawned before the host existed
    assert not _alive(early.process.pid)
    assert not (tmp_path / "state" / "kilo.pid").exists()


async def test_a_spawn_that_fails_early_is_left_to_the_host_to_start_and_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    class Recording:
        def __init__(self, *_args: Any, early_agent: Any = None, **_kw: Any) -> None:
            self.early_agent = early_agent
            seen.append(early_agent)

        async def run(self) -> int:
            return 0

    monkeypatch.setattr(fsm.serve.host, "WrapperHost", Recording)
    settings = ServeSettings(
        agent_session="a", user_id="u", session_id="s", ingest_url="ws://127.0.0.1:9/i",
        token="t", workdir=tmp_path, state_dir=tmp_path / "state",
        agent_bin=str(tmp_path / "no-such-kilo"),
    )  # fmt: skip
    assert await run_wrapper(settings, WRAPPER_TIMERS.defaults(), JsonLog()) == 0
    assert seen == [None]


def test_a_stop_signal_before_the_host_listens_is_held_not_fatal() -> None:
    """Kilo exists while the host is imported: a SIGTERM then (``docker stop``) killed the
    wrapper with 143, which the supervisor counts as a crash."""
    previous = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
    try:
        held = hold_stop_signals()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert held == [signal.SIGTERM, signal.SIGINT]
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


async def test_a_host_given_a_held_stop_signal_stops_cleanly_with_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import anyio

    binary = _standin(tmp_path, monkeypatch, "stubborn")
    settings = ServeSettings(
        agent_session="a", user_id="u", session_id="s", ingest_url="ws://127.0.0.1:9/i",
        token="t", workdir=tmp_path, state_dir=tmp_path / "state", agent_bin=binary,
        agent_pass_env=["STANDIN"],
    )  # fmt: skip
    host = WrapperHost(
        settings, WRAPPER_TIMERS.defaults(), JsonLog(), early_signals=[signal.SIGTERM]
    )
    with anyio.fail_after(30):
        assert await host.run() == 0
