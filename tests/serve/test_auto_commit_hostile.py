"""Auto-commit in a workspace set up by a hostile agent (issue 12, point 7).

Real git on real temporary repositories. Every planted program writes to a marker file outside
the workspace; the tests assert the marker is absent *before* the test's own git calls, which run
hermetically (no hooks, no fsmonitor, no global config) so they cannot trip a planted program
themselves and hide the module's behaviour.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from fsm.serve.auto_commit import auto_commit

REAL_GIT = shutil.which("git") or "git"
_SAFE = ["-c", "core.hooksPath=/nonexistent", "-c", "core.fsmonitor=false"]
_IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]


def _env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C",
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }


def _git(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(
        [REAL_GIT, *_SAFE, *_IDENTITY, *args],
        cwd=repo,
        env=_env(),
        check=check,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def _workspace(path: Path) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", "main", ".")
    (path / "README.md").write_text("# workspace\n")
    return path


def _planted(tmp_path: Path, name: str, marker: Path, *, body: str = "") -> Path:
    """An executable that records it ran; ``body`` runs after (a filter must echo its input)."""
    script = tmp_path / "planted" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{marker}"\n{body}')
    script.chmod(0o755)
    return script


def _run(repo: Path, **kwargs: object) -> dict[str, object]:
    async def message() -> str:
        return "turn changes"

    async def go() -> dict[str, object]:
        return await auto_commit(repo, "prompt", message, **kwargs)  # type: ignore[arg-type]

    return anyio.run(go)


def _commits(repo: Path) -> int:
    out = _git(repo, "rev-list", "--count", "HEAD", check=False)
    return int(out) if out else 0


HOOKS = [
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-index-change",
    "reference-transaction",
]


def test_planted_hooks_do_not_run_and_the_commit_still_lands(tmp_path: Path) -> None:
    repo = _workspace(tmp_path / "ws")
    marker = tmp_path / "marker"
    for hook in HOOKS:
        shutil.copy(_planted(tmp_path, hook, marker), repo / ".git" / "hooks" / hook)
    for key, value in [
        ("user.name", "Some One"),
        ("remote.origin.url", "ext::sh -c 'touch /tmp/never'"),
        ("remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"),
        ("branch.main.remote", "origin"),
        ("branch.main.merge", "refs/heads/main"),
    ]:
        _git(repo, "config", key, value)
    (repo / "notes.txt").write_text("hello\n")
    result = _run(repo)
    assert not marker.exists(), marker.read_text()
    assert result["success"] is True, result
    assert result["commit"] == _git(repo, "rev-parse", "HEAD")
    assert "notes.txt" in _git(repo, "ls-tree", "-r", "--name-only", "HEAD")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("core.hooksPath", "HOOKS"),
        ("core.fsmonitor", "PROGRAM"),
        ("diff.external", "PROGRAM"),
        ("diff.x.textconv", "PROGRAM"),
        ("merge.x.driver", "PROGRAM"),
        ("gpg.program", "PROGRAM"),
        ("core.sshCommand", "PROGRAM"),
        ("credential.helper", "PROGRAM"),
        ("core.askPass", "PROGRAM"),
        ("core.pager", "PROGRAM"),
        ("core.editor", "PROGRAM"),
        ("sequence.editor", "PROGRAM"),
        ("core.worktree", "ELSEWHERE"),
        ("core.excludesFile", "ELSEWHERE"),
        ("extensions.worktreeConfig", "true"),
    ],
)
def test_config_that_can_run_programs_or_redirect_is_refused_by_name(
    tmp_path: Path, key: str, value: str
) -> None:
    repo = _workspace(tmp_path / "ws")
    marker = tmp_path / "marker"
    program = _planted(tmp_path, "program", marker)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in HOOKS:
        shutil.copy(program, hooks / hook)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    replaced = {"HOOKS": str(hooks), "PROGRAM": str(program), "ELSEWHERE": str(elsewhere)}
    _git(repo, "config", key, replaced.get(value, value))
    (repo / "notes.txt").write_text("hello\n")
    result = _run(repo)
    assert not marker.exists(), marker.read_text()
    assert result["success"] is False, result
    assert key.lower() in str(result["error"]).lower(), result
    assert _commits(repo) == 0


def test_a_filter_driver_is_refused_by_name_and_never_runs(tmp_path: Path) -> None:
    repo = _workspace(tmp_path / "ws")
    marker = tmp_path / "marker"
    clean = _planted(tmp_path, "clean", marker, body="cat\n")
    (repo / ".gitattributes").write_text("* filter=x\n")
    _git(repo, "config", "filter.x.clean", str(clean))
    (repo / "notes.txt").write_text("hello\n")
    result = _run(repo)
    assert not marker.exists(), marker.read_text()
    assert result["success"] is False and "filter.x.clean" in str(result["error"]), result
    assert _commits(repo) == 0


@pytest.mark.parametrize("key", ["include.path", "includeIf.gitdir:/.path"])
def test_include_directives_are_refused(tmp_path: Path, key: str) -> None:
    repo = _workspace(tmp_path / "ws")
    marker = tmp_path / "marker"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in HOOKS:
        shutil.copy(_planted(tmp_path, hook, marker), hooks / hook)
    included = tmp_path / "included.config"
    included.write_text(f"[core]\n\thooksPath = {hooks}\n")
    _git(repo, "config", key, str(included))
    (repo / "notes.txt").write_text("hello\n")
    result = _run(repo)
    assert not marker.exists(), marker.read_text()
    assert result["success"] is False and key.lower() in str(result["error"]).lower(), result
    assert _commits(repo) == 0


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_git_dir_that_points_elsewhere_is_refused(tmp_path: Path, kind: str) -> None:
    elsewhere = _workspace(tmp_path / "elsewhere")
    repo = tmp_path / "ws"
    repo.mkdir()
    if kind == "file":
        (repo / ".git").write_text(f"gitdir: {elsewhere / '.git'}\n")
    else:
        (repo / ".git").symlink_to(elsewhere / ".git")
    (repo / "notes.txt").write_text("hello\n")
    result = _run(repo)
    assert result["success"] is False, result
    assert ".git" in str(result["error"]) and kind in str(result["error"]), result
    assert _commits(elsewhere) == 0


def test_private_state_is_never_committed_even_when_pre_staged(tmp_path: Path) -> None:
    repo = _workspace(tmp_path / "ws")
    exclude = repo / ".git" / "info" / "exclude"
    exclude.write_text("# the user's own\n*.log\nbuild/")  # no final newline
    state = repo / ".fsm-agent" / "kilo-state"
    state.mkdir(parents=True)
    (state / "db.sqlite").write_text("the whole conversation\n")
    (repo / ".fsm-agent" / "kilo.pid").write_text("1234\n")
    (repo / "notes.txt").write_text("hello\n")
    _git(repo, "add", "-f", ".fsm-agent/kilo-state/db.sqlite", ".fsm-agent/kilo.pid")
    first = _run(repo)
    assert first["success"] is True, first
    (state / "db.sqlite").write_text("more conversation\n")
    (repo / ".gitignore").write_text("!/.fsm-agent/\n")  # outranks info/exclude
    (repo / "more.txt").write_text("more\n")
    _git(repo, "add", "-f", ".fsm-agent")
    second = _run(repo)
    assert second["success"] is True, second
    for commit in ("HEAD~1", "HEAD"):
        files = _git(repo, "ls-tree", "-r", "--name-only", commit).splitlines()
        assert not [f for f in files if f.startswith(".fsm-agent")], (commit, files)
    assert {"more.txt", "notes.txt", ".gitignore"} <= set(files)
    lines = exclude.read_text().splitlines()
    assert lines[:3] == ["# the user's own", "*.log", "build/"]
    assert lines.count("/.fsm-agent") == 1


def test_a_state_dir_elsewhere_in_the_workspace_is_private_too(tmp_path: Path) -> None:
    repo = _workspace(tmp_path / "ws")
    for name in ("kilo st*te", "kilo stXte"):  # a glob character must not widen the exclusion
        (repo / name).mkdir()
        (repo / name / "db.sqlite").write_text("conversation\n")
    (repo / "notes.txt").write_text("hello\n")
    result = _run(repo, private_paths=[repo / "kilo st*te", tmp_path / "outside"])
    assert result["success"] is True, result
    assert _git(repo, "ls-tree", "-r", "--name-only", "HEAD").splitlines() == [
        "README.md",
        "kilo stXte/db.sqlite",
        "notes.txt",
    ]
    assert "/kilo\\ st\\*te" in (repo / ".git" / "info" / "exclude").read_text().splitlines()
    ignored = _git(repo, "status", "--porcelain", "--ignored").splitlines()
    assert ignored == ['!! "kilo st*te/"']  # the line says exactly that path


def test_git_runs_with_a_scratch_environment_hardened_options_and_no_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shim named ``git`` first on the wrapper's PATH records what each git child receives."""
    repo = _workspace(tmp_path / "ws")
    (repo / "notes.txt").write_text("hello\n")
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    log = tmp_path / "calls"
    shim = shim_dir / "git"
    shim.write_text(
        "#!/bin/sh\n"
        f'{{ echo "ARGS $*"; echo "STDIN $(readlink /proc/$$/fd/0)"; env | sed "s/^/ENV /"; }}'
        f' >> "{log}"\n'
        f'exec "{REAL_GIT}" "$@"\n'
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FSM_AGENT_TOKEN", "secret")
    result = _run(repo)
    assert result["success"] is True, result
    calls = log.read_text().split("ARGS ")[1:]
    assert len(calls) >= 4
    for call in calls:
        assert "secret" not in call and "FSM_AGENT_TOKEN" not in call
        env = {line[4:].split("=", 1)[0] for line in call.splitlines() if line.startswith("ENV ")}
        assert env <= {
            "PATH",
            "LANG",
            "HOME",
            "GIT_TERMINAL_PROMPT",
            "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL",
            "GIT_ATTR_NOSYSTEM",
            "PWD",  # set by the shim's own shell
            "OLDPWD",
            "SHLVL",
            "_",
        }, env
        assert "GIT_CONFIG_GLOBAL=/dev/null" in call and "GIT_CONFIG_NOSYSTEM=1" in call
        assert "STDIN /dev/null" in call
        args = call.splitlines()[0]
        assert "core.fsmonitor=false" in args and "core.hooksPath=" in args
        assert f"--git-dir={repo / '.git'}" in args
    commit = next(call.splitlines()[0] for call in calls if " commit " in call.splitlines()[0])
    assert "--no-verify" in commit and "--no-gpg-sign" in commit


def test_git_environment_is_built_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsm.serve.auto_commit import git_environment

    workdir = tmp_path / "ws"
    monkeypatch.setenv("FSM_AGENT_TOKEN", "secret")
    monkeypatch.setenv("GIT_DIR", "/elsewhere/.git")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'core.hookspath'='/planted'")
    monkeypatch.setenv("PATH", f"/usr/bin:{workdir}/node_modules/.bin:.:bin::/bin")
    env = git_environment(tmp_path / "home", workdir=workdir)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_ATTR_NOSYSTEM": "1",
        "HOME": str(tmp_path / "home"),
    }


def test_the_wrappers_git_variables_and_global_config_do_not_reach_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _workspace(tmp_path / "ws")
    elsewhere = _workspace(tmp_path / "elsewhere")
    marker = tmp_path / "marker"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for hook in HOOKS:
        shutil.copy(_planted(tmp_path, hook, marker), hooks / hook)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[core]\n\thooksPath = {hooks}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_DIR", str(elsewhere / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo))
    (repo / "notes.txt").write_text("hello\n")
    result = _run(repo)
    assert not marker.exists(), marker.read_text()
    assert result["success"] is True, result
    assert _commits(repo) == 1 and _commits(elsewhere) == 0


def test_a_hostile_message_stays_a_message_and_is_capped(tmp_path: Path) -> None:
    repo = _workspace(tmp_path / "ws")
    (repo / "notes.txt").write_text("hello\n")

    async def message() -> str:
        return "--amend\n\n" + "é" * 100_000

    result = anyio.run(auto_commit, repo, "prompt", message)
    assert result["success"] is True, result
    assert _git(repo, "log", "-1", "--format=%s") == "--amend"
    body = _git(repo, "log", "-1", "--format=%B")
    assert len(body.encode()) <= 4096 and body.startswith("--amend\n\néé")
    assert _commits(repo) == 1
