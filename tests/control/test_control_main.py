"""``fsm-agent control``'s command line: the default layout keeps the database out of the
workspaces' tree, the older ``--db``/``--base-dir`` forms still work, and listening beyond
loopback warns (issue 12). The host is a stub: what is checked is what ``run_control`` hands it.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fsm.control.main
from fsm.cli.app import app
from fsm.control.host import ControlSettings

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
