"""Auto-commit after a completed turn: unit cases on a real git repository, and end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import anyio
import pytest

from adapters.kilo.process import RunAs
from fsm.serve.auto_commit import auto_commit, fallback_message
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.ingest_server import FakeIngest
from tests.fakes.wrapper_process import git_workspace, running_wrapper


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


async def _message() -> str:
    return "Add notes"


async def _broken() -> str:
    raise RuntimeError("Kilo is gone")


def test_changes_are_committed_with_the_generated_message(tmp_path: Path) -> None:
    repo = git_workspace(tmp_path / "ws")
    (repo / "notes.txt").write_text("hello\n")
    result = anyio.run(auto_commit, repo, "write notes", _message)
    assert result["success"] and not result["skipped"]
    assert result["commit"] == _git(repo, "rev-parse", "HEAD")
    assert _git(repo, "log", "-1", "--format=%s") == "Add notes"
    assert _git(repo, "status", "--porcelain") == ""


def test_a_clean_tree_is_skipped_and_a_failing_generator_falls_back(tmp_path: Path) -> None:
    repo = git_workspace(tmp_path / "ws")
    (repo / "a.txt").write_text("a\n")
    first = anyio.run(auto_commit, repo, "add the a file\nwith details", _broken)
    assert (
        first["commit_message"] == fallback_message("add the a file") == "fsm-agent: add the a file"
    )
    again = anyio.run(auto_commit, repo, "nothing new", _message)
    assert again == {"success": True, "skipped": True, "reason": "nothing to commit"}


def test_outside_a_repository_it_reports_the_error_instead_of_raising(tmp_path: Path) -> None:
    result = anyio.run(auto_commit, tmp_path, "x", _message)
    assert result["success"] is False and "git status failed" in result["error"]


@pytest.mark.kilo
def test_a_completed_turn_with_auto_commit_commits_and_reports_it(
    tmp_path: Path, fake_llm: FakeLLM, ingest: FakeIngest
) -> None:
    with running_wrapper(tmp_path, ingest.url, fake_llm.provider_config()) as wrapper:
        wrapper.wait_ready()
        (wrapper.workdir / "made-by-the-turn.txt").write_text("content\n")
        mid = wrapper.prompt("say hello MODE:text", auto_commit=True)

        def report() -> list[dict[str, object]]:
            return [
                e["properties"] for e in ingest.events() if e.get("type") == "wrapper.auto_commit"
            ]

        got = ingest.wait_for(report, what="the auto-commit report", timeout=60)[0]
        assert got["message_id"] == mid and got["success"] is True, got
        assert got["commit"] == _git(wrapper.workdir, "rev-parse", "HEAD")
        assert "made-by-the-turn.txt" in _git(wrapper.workdir, "show", "--name-only", "HEAD")
        outcome = ingest.outcomes()[0]
        assert (outcome.message_id, outcome.status) == (mid, "completed")
        types = ingest.event_types()
        assert types.index("wrapper.auto_commit_started") < types.index("wrapper.auto_commit")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the workspace to another uid")
def test_a_workspace_of_another_user_is_committed_by_git_running_as_that_user() -> None:
    """In the container the workspace is the agent's and the wrapper is another uid: git as the
    wrapper could not write ``.git`` (``Permission denied: 'exclude'``, measured) and refuses a
    repository of another owner. With ``run_as`` git runs as the workspace's user."""

    agent = RunAs.lookup("nobody")
    top = Path(tempfile.mkdtemp())  # pytest's tmp_path lies under a 0700 root-only folder
    top.chmod(0o755)
    ws = top / "ws"
    ws.mkdir()
    os.chown(ws, agent.uid, agent.gid)
    try:
        _commit_as(agent, ws)
    finally:
        shutil.rmtree(top)


def _commit_as(agent: RunAs, ws: Path) -> None:

    def as_agent(*args: str) -> None:
        subprocess.run(agent.command(["git", *args], ws), check=True, capture_output=True)

    as_agent("init", "-q")
    as_agent("config", "user.email", "a@example.com")
    as_agent("config", "user.name", "agent")
    subprocess.run(agent.command(["sh", "-c", "echo hi > f.txt"], ws), check=True)
    result = anyio.run(lambda: auto_commit(ws, "write f", _message, run_as=agent))
    assert result["success"] and not result["skipped"], result
    objects = [p for p in (ws / ".git" / "objects").rglob("*") if p.is_file()]
    assert objects and all(p.stat().st_uid == agent.uid for p in objects)
    assert _git(ws, "-c", f"safe.directory={ws}", "log", "-1", "--format=%s") == "Add notes"
