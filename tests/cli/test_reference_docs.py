"""docs/reference/ is the rendering of the current declarations, and the check notices drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fsm.cli import reference
from fsm.machines import timers
from fsm.settings import limits
from tests.paths import ROOT

OUT = ROOT / "docs" / "reference"


def test_committed_reference_pages_match_the_code() -> None:
    problems = reference.check(OUT)
    assert problems == [], "docs/reference/ is stale: run `fsm-agent docs`\n" + "\n".join(problems)


def test_a_changed_timer_default_shows_in_the_diff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(OUT, tmp_path / "reference")
    stale = timers.CONTROL_TIMERS.setting("stale_heartbeat")
    changed = timers.TimerSetting(key=stale.key, default=91.0, doc=stale.doc)
    settings = tuple(changed if s is stale else s for s in timers.CONTROL_TIMERS.settings)
    monkeypatch.setattr(timers.CONTROL_TIMERS, "settings", settings)
    problems = reference.check(tmp_path / "reference")
    assert f"-| `stale_heartbeat` | 90s | `session` | {stale.doc} |" in problems
    assert f"+| `stale_heartbeat` | 91s | `session` | {stale.doc} |" in problems


def test_a_new_limit_and_a_missing_page_fail_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(OUT, tmp_path / "reference")
    extra = limits.LimitSetting("widgets", 3, "count", "control", "widgets per session")
    monkeypatch.setattr(limits, "SETTINGS", (*limits.SETTINGS, extra))
    problems = reference.check(tmp_path / "reference")
    assert "+| `widgets` | control | 3 | widgets per session |" in problems
    (tmp_path / "reference" / "api.md").unlink()
    assert f"{tmp_path / 'reference' / 'api.md'} is missing" in reference.check(
        tmp_path / "reference"
    )


def test_every_declared_row_is_on_its_page() -> None:
    pages = reference.render()
    for table in timers.TABLES.values():
        for setting in table.settings:
            assert f"| `{setting.key}` |" in pages["configuration.md"]
    for limit in limits.SETTINGS:
        assert f"| `{limit.key}` | {limit.side} |" in pages["configuration.md"]
    assert "| `POST /sessions/{session_id}/messages` |" in pages["api.md"]
    assert "| `POST /job/prompt` |" in pages["api.md"]
    assert "| PromptBody | MessageAccepted | bearer |" in pages["api.md"]
    assert "**PromptBody**" in pages["api.md"]
    assert "| `prompt` | string (≥ 1, ≤ 262,144) | required |" in pages["api.md"]
    for tag in ("hello", "heartbeat", "outcome", "welcome", "prompt", "release"):
        assert f"#### `{tag}` (" in pages["api.md"]


def test_a_table_of_the_file_without_a_description_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reference, "TABLES", (*reference.TABLES, "widgets"))
    with pytest.raises(ValueError, match="widgets"):
        reference.configuration()


def test_the_docs_command_writes_then_checks(tmp_path: Path) -> None:
    app = typer.Typer()
    reference.register(app)
    runner = CliRunner()
    stale = runner.invoke(app, ["--check", "--out", str(tmp_path)])
    assert stale.exit_code == 1
    assert "is missing" in stale.output
    wrote = runner.invoke(app, ["--out", str(tmp_path)])
    assert wrote.exit_code == 0, wrote.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.md", "configuration.md"]
    assert runner.invoke(app, ["--check", "--out", str(tmp_path)]).exit_code == 0
