"""An operator's first minutes with ``fsm-agent`` (issue 18): ``--version``, ``-h`` on every
command, help text that keeps its ``[tables]``, one strict ``--config`` loader for every command,
and one-line errors with exit code 2 for a bad file."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fsm.cli.app import app

GROUP: Any = typer.main.get_command(app)  # typer's own click group (typer vendors click)
COMMANDS = sorted(GROUP.commands)
CONFIG_COMMANDS = ["graph --check --out {tmp}", "timers", "limits", "openapi --check --out {tmp}"]
"""Commands that take ``--config`` and run without a server; ``control`` and ``serve`` are
checked in tests/control/test_control_main.py and tests/serve/test_serve_main.py."""


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fsm", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"fsm-agent {version('fsm-agent')}"


def test_the_command_list_is_the_one_expected() -> None:
    # Guards the parametrisation below: a command added later is checked too.
    assert {"graph", "timers", "limits", "openapi", "serve", "control", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_dash_h_is_help_on_every_command(command: str) -> None:
    args = [command] if command else []
    short, long = run(*args, "-h"), run(*args, "--help")
    assert short[0] == 0, short[1]
    assert short == long
    assert "Usage: fsm-agent" in short[1]


def _bracketed_help() -> list[tuple[str, str]]:
    """(command, ``[word]``) for every ``[word]`` in an option's help: what rich markup ate."""
    found = []
    for name, command in GROUP.commands.items():
        for param in command.params:
            text = getattr(param, "help", None) or ""
            found += [(name, word) for word in re.findall(r"\[[^\]\s]+\]", text)]
    return found


@pytest.mark.parametrize(("command", "word"), _bracketed_help())
def test_square_brackets_in_help_are_shown(command: str, word: str) -> None:
    code, out = run(command, "--help")
    assert code == 0
    assert word in out, out


def test_timers_help_names_the_timers_table() -> None:
    _, out = run("timers", "--help")
    assert "whose [timers] table" in " ".join(out.split())


BAD_FILES = {
    "typo'd table": ("[timerz]\nstale_heartbeat = '90s'\n", "[timerz] is not a table"),
    "unknown timer": ("[timers]\nstale_hartbeat = '90s'\n", "timers.stale_hartbeat is not"),
    "unknown limit": ("[limits]\nbodyy = 3\n", "bodyy"),
    "unknown runtime key": ("[runtime]\nimagee = 'x'\n", "runtime.imagee"),
    "unknown outbox key": ("[outbox]\nmax = 3\n", "outbox.max is not a setting"),
    "unknown agent key": ("[agent]\nconfg_file = 'k.json'\n", "agent.confg_file is not a setting"),
    # [kilo] is [agent]'s older name (Kilo's AgentSpec.config_aliases): named as written.
    "unknown kilo key": ("[kilo]\nconfg_file = 'k.json'\n", "kilo.confg_file is not a setting"),
    "a control key": ("[control]\nport = 1\n", "control.port is not a setting"),
    "negative duration": ("[timers]\nstale_heartbeat = '-5s'\n", "cannot be negative"),
    "not TOML": ("[timers\n", "not valid TOML"),
}


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_every_command_refuses_the_same_bad_config_in_one_line(
    command: str, case: str, tmp_path: Path
) -> None:
    text, expected = BAD_FILES[case]
    config = tmp_path / "fsm-agent.toml"
    config.write_text(text)
    code, out = run(*command.format(tmp=tmp_path / "out").split(), f"--config={config}")
    assert code == 2, out
    assert out.strip().count("\n") == 0, out
    assert out.startswith(f"error: {config}: ") and expected in out, out


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_a_missing_or_unreadable_config_is_one_line_exit_2(command: str, tmp_path: Path) -> None:
    for path, why in ((tmp_path / "absent.toml", "No such file"), (tmp_path, "Is a directory")):
        code, out = run(*command.format(tmp=tmp_path / "out").split(), f"--config={path}")
        assert code == 2, out
        assert out.strip() == f"error: {path}: cannot read: {why}" + (
            " or directory" if why == "No such file" else ""
        )


def test_a_good_config_is_applied_by_timers(tmp_path: Path) -> None:
    config = tmp_path / "fsm-agent.toml"
    config.write_text("[timers]\nstale_heartbeat = '3m'\n[limits]\n[runtime]\n")
    code, out = run("timers", f"--config={config}")
    assert code == 0, out
    assert re.search(r"stale_heartbeat\s+3m \(default", out), out
