"""``fsm-agent control``'s command line: the default layout keeps the database out of the
workspaces' tree, the older ``--db``/``--base-dir`` forms still work, and listening beyond
loopback warns (issue 12). The host is a stub: what is checked is what ``run_control`` hands it.
"""

from __future__ import annotations

import signal
import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fsm.control.main
from fsm.cli.app import app
from fsm.control.host import ControlSettings
from tests.fakes.control_process import running_control
from tests.fakes.fake_llm import FakeLLM

WARNING = "without TLS: put a TLS-terminating proxy in front"


class StubHost:
    seen: list[ControlSettings] = []

    def __init__(self, settings: ControlSettings, values: Any, log: Any) -> None:
        StubHost.seen.append(settings)

    async def run(self, build_app: Any) -> None:
        return None

    def request_stop(self) -> None:
        return None


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    monkeypatch.setattr(fsm.control.main, "ControlHost", StubHost)
    monkeypatch.chdir(tmp_path)
    StubHost.seen = []

    def run(*args: str) -> tuple[int, str, ControlSettings | None]:
        result = CliRunner().invoke(
            app, ["control", "--listen=127.0.0.1:0", *args], env={"FSM_AGENT_API_KEY": "key"}
        )
        return result.exit_code, result.output, StubHost.seen[-1] if StubHost.seen else None

    return run


def test_by_default_the_state_dir_is_private_and_holds_no_workspace(
    control: Any, tmp_path: Path
) -> None:
    code, out, settings = control()
    assert code == 0, out
    assert settings is not None
    state = tmp_path / ".fsm-agent" / "control"
    assert settings.db == state / "control.db"
    assert settings.base_dir == tmp_path / ".fsm-agent" / "workspaces"
    assert not settings.base_dir.is_relative_to(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert settings.api_key == "key"


def test_the_older_db_and_base_dir_flags_work_as_before(control: Any, tmp_path: Path) -> None:
    code, out, settings = control(f"--db={tmp_path / 'x' / 'control.db'}")
    assert code == 0, out
    assert settings is not None
    assert settings.db == tmp_path / "x" / "control.db"
    assert settings.base_dir == tmp_path / "x" / "sessions"  # beside --db, as it was
    code, out, settings = control(f"--base-dir={tmp_path / 'spaces'}")
    assert code == 0, out
    assert settings is not None and settings.base_dir == tmp_path / "spaces"
    code, out, settings = control(
        f"--state-dir={tmp_path / 'st'}", f"--workspaces={tmp_path / 'w'}"
    )
    assert code == 0, out
    assert settings is not None
    assert (settings.db, settings.base_dir) == (tmp_path / "st" / "control.db", tmp_path / "w")


def test_a_workspace_tree_inside_the_state_dir_is_refused(control: Any, tmp_path: Path) -> None:
    code, out, _ = control(f"--state-dir={tmp_path / 'st'}", f"--workspaces={tmp_path / 'st/w'}")
    assert code == 2 and "is inside --state-dir" in out
    code, out, _ = control(f"--state-dir={tmp_path / 'w/st'}", f"--workspaces={tmp_path / 'w'}")
    assert code == 2 and "is inside --workspaces" in out
    code, out, _ = control(f"--workspaces={tmp_path / 'a'}", f"--base-dir={tmp_path / 'b'}")
    assert code == 2 and "older name of --workspaces" in out


def test_control_warns_once_when_listening_beyond_loopback(control: Any) -> None:
    code, out, _ = control("--listen=0.0.0.0:0")
    assert code == 0, out
    lines = [line for line in out.splitlines() if WARNING in line]
    assert len(lines) == 2  # the human line and the JSON log line
    assert lines[0] == (
        "warning: listening on 0.0.0.0 without TLS: put a TLS-terminating proxy in front; "
        "tokens and prompts cross the network in clear"
    )
    code, out, _ = control()
    assert code == 0 and WARNING not in out


@pytest.mark.kilo
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_the_control_plane_stops_its_wrappers_without_a_handler_error(
    tmp_path: Path, fake_llm: FakeLLM, sig: signal.Signals
) -> None:
    """Issue 18: on SIGTERM/SIGINT the runtime stops every wrapper after the host's task group
    has ended; each exit used to be fed to its session machine, which recorded a restart and
    started work on the dead task group ('on_exit handler failed ... This task group is not
    active'). Now an exit at shutdown is logged as such and the session is left as stored."""
    with running_control(tmp_path, fake_llm.provider_config()) as control:
        sid = control.create_session()
        control.wait_state(sid, ("ready",))
        assert control.stop(sig) == 0
    lines = control.log_lines()
    failures = [line for line in lines if line.get("level") == "error"]
    assert failures == []
    stopped = [
        line for line in lines if line.get("message") == "wrapper stopped with the control plane"
    ]
    assert [line["session"] for line in stopped] == [sid]
    restarts = [
        line
        for line in lines
        if line.get("message") == "transition" and "restarting" in str(line.get("transition"))
    ]
    assert restarts == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[timerz]\nstale_heartbeat = '90s'\n", "[timerz] is not a table of this file"),
        ("[timers]\nstale_heartbeat = '-5s'\n", "a duration cannot be negative, got '-5s'"),
    ],
)
def test_control_refuses_a_bad_config_as_every_command_does(
    control: Any, tmp_path: Path, text: str, expected: str
) -> None:
    config = tmp_path / "fsm-agent.toml"
    config.write_text(text)
    code, out, settings = control(f"--config={config}")
    assert code == 2 and settings is None
    timers = CliRunner().invoke(app, ["timers", f"--config={config}"])
    assert timers.exit_code == 2
    # The same one line, whichever command read the file.
    assert out.strip() == timers.output.strip()
    assert expected in out and out.strip().count("\n") == 0


def test_control_with_a_missing_config_file_is_one_line_exit_2(
    control: Any, tmp_path: Path
) -> None:
    code, out, _ = control(f"--config={tmp_path / 'absent.toml'}")
    assert code == 2
    assert (
        out.strip() == f"error: {tmp_path / 'absent.toml'}: cannot read: No such file or directory"
    )
