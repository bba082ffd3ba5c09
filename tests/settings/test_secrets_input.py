"""Secrets reach the hosts from a file, a descriptor or (last) the environment; never argv.

The agent runs as the wrapper's user: argv is public (``ps``), the environment is inherited by
every child and shown in ``/proc/<pid>/environ``. These tests pin down what each source accepts,
what it refuses (naming the flag, exit 2 on the command line) and that the wrapper makes itself
undumpable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fsm.serve.main
from fsm.cli.app import app
from fsm.settings.secrets import (
    API_KEY_ENV,
    TOKEN_ENV,
    SecretInputError,
    control_api_key,
    read_secret_fd,
    read_secret_file,
    serve_token,
)
from tests.paths import ROOT

TOKEN = "tok-5d2e-from-a-file"


def secret_file(path: Path, text: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# -- files -----------------------------------------------------------------------------------------


def test_a_token_file_is_read_stripped_and_removed(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "token")
    assert read_secret_file(path, flag="--token-file", unlink=True) == TOKEN
    assert not path.exists()  # single-use


def test_an_api_key_file_is_kept(tmp_path: Path) -> None:
    path = secret_file(tmp_path / "key", mode=0o400)
    assert control_api_key(api_key_file=path, environ={}) == TOKEN
    assert path.exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o700, 0o666])
def test_a_file_others_could_reach_is_refused_and_left_alone(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path / "token", mode=mode)
    with pytest.raises(SecretInputError, match=rf"--token-file .*mode {mode:04o}.*0600"):
        read_secret_file(path, flag="--token-file", unlink=True)
    assert path.exists()


def test_a_symlink_another_owner_an_empty_file_and_a_directory_are_refused(
    tmp_path: Path,
) -> None:
    target = secret_file(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretInputError, match=r"--token-file .*link: cannot open"):
        read_secret_file(link, flag="--token-file")
    with pytest.raises(SecretInputError, match="is empty"):
        read_secret_file(secret_file(tmp_path / "empty", " \n"), flag="--token-file")
    with pytest.raises(SecretInputError, match="not a regular file"):
        read_secret_file(tmp_path, flag="--token-file")
    with pytest.raises(SecretInputError, match="cannot open"):
        read_secret_file(tmp_path / "missing", flag="--token-file")
    if os.geteuid() == 0:
        other = secret_file(tmp_path / "other")
        os.chown(other, 65534, 65534)
        with pytest.raises(SecretInputError, match="owned by uid 65534, not by us"):
            read_secret_file(other, flag="--token-file")


# -- descriptors and the environment ---------------------------------------------------------------


def test_a_descriptor_is_read_to_eof_and_closed() -> None:
    read, write = os.pipe()
    os.write(write, b"tok-from-a-pipe\n")
    os.close(write)
    assert read_secret_fd(read, flag="--token-fd") == "tok-from-a-pipe"
    with pytest.raises(OSError):
        os.fstat(read)  # closed: nothing else in the process can read it again


def test_a_bad_or_empty_descriptor_is_refused() -> None:
    read, write = os.pipe()
    os.close(write)
    with pytest.raises(SecretInputError, match=r"--token-fd .*is empty"):
        read_secret_fd(read, flag="--token-fd")
    with pytest.raises(SecretInputError, match=r"--token-fd .*not an open file descriptor"):
        read_secret_fd(read, flag="--token-fd")


def test_the_environment_is_the_last_resort_and_is_emptied(tmp_path: Path) -> None:
    env = {TOKEN_ENV: "tok-from-env", "OTHER": "x"}
    assert serve_token(token_file=None, token_fd=None, environ=env) == "tok-from-env"
    assert env == {"OTHER": "x"}  # popped: no child inherits it
    # Given a file, the variable still goes: it must not reach Kilo either way.
    env = {TOKEN_ENV: "tok-from-env"}
    assert serve_token(token_file=secret_file(tmp_path / "t"), token_fd=None, environ=env) == TOKEN
    assert env == {}
    env = {API_KEY_ENV: "key-from-env"}
    assert control_api_key(api_key_file=None, environ=env) == "key-from-env" and env == {}


def test_no_source_an_empty_one_or_two_at_once_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretInputError, match="--token-file PATH, --token-fd N or the FSM_AGENT"):
        serve_token(token_file=None, token_fd=None, environ={})
    with pytest.raises(SecretInputError, match="FSM_AGENT_TOKEN is empty"):
        serve_token(token_file=None, token_fd=None, environ={TOKEN_ENV: " "})
    with pytest.raises(SecretInputError, match="not both"):
        serve_token(token_file=tmp_path / "t", token_fd=5, environ={})
    with pytest.raises(SecretInputError, match="--api-key-file PATH or the FSM_AGENT_API_KEY"):
        control_api_key(api_key_file=None, environ={})


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # In-process: the test runner itself must not become undumpable; the call is checked apart.
    monkeypatch.setattr(fsm.serve.main, "make_undumpable", lambda: True)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    return CliRunner()


SERVE = ["serve", "--agent-session=a", "--user-id=u", "--session-id=s"]
BAD_URL = "--ingest-url=http://not-ws"  # run_serve's first check: reached only with a token


def test_a_value_on_the_command_line_is_refused_with_the_way_to_give_it(
    runner: CliRunner,
) -> None:
    result = runner.invoke(app, [*SERVE, BAD_URL, "--token", "tok-in-argv"])
    assert result.exit_code == 2
    assert "--token takes no value on the command line" in result.output
    assert "--token-file" in result.output and "FSM_AGENT_TOKEN" in result.output
    result = runner.invoke(app, ["control", "--api-key", "key-in-argv"])
    assert result.exit_code == 2
    assert "--api-key takes no value on the command line" in result.output
    assert "--api-key-file" in result.output


def test_serve_takes_its_token_from_a_file_a_descriptor_or_the_environment(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = secret_file(tmp_path / "token")
    result = runner.invoke(app, [*SERVE, BAD_URL, f"--token-file={path}"])
    assert result.exit_code == 2 and "--ingest-url" in result.output, result.output
    assert not path.exists()
    read, write = os.pipe()
    os.write(write, b"tok")
    os.close(write)
    result = runner.invoke(app, [*SERVE, BAD_URL, f"--token-fd={read}"])
    assert result.exit_code == 2 and "--ingest-url" in result.output, result.output
    result = runner.invoke(app, [*SERVE, BAD_URL], env={TOKEN_ENV: "tok"})
    assert result.exit_code == 2 and "--ingest-url" in result.output, result.output


def test_serve_without_a_usable_token_exits_2_naming_the_flag(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, [*SERVE, BAD_URL])
    assert result.exit_code == 2 and "no token" in result.output
    loose = secret_file(tmp_path / "token", mode=0o644)
    result = runner.invoke(app, [*SERVE, BAD_URL, f"--token-file={loose}"])
    assert result.exit_code == 2 and "--token-file" in result.output and "0644" in result.output
    empty = secret_file(tmp_path / "empty", "\n")
    result = runner.invoke(app, [*SERVE, BAD_URL, f"--token-file={empty}"])
    assert result.exit_code == 2 and "is empty" in result.output
    result = runner.invoke(app, [*SERVE, BAD_URL], env={TOKEN_ENV: ""})
    assert result.exit_code == 2 and "FSM_AGENT_TOKEN is empty" in result.output


def test_control_without_a_usable_key_exits_2_naming_the_flag(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["control"])
    assert result.exit_code == 2 and "no API key" in result.output
    loose = secret_file(tmp_path / "key", mode=0o640)
    result = runner.invoke(app, ["control", f"--api-key-file={loose}"])
    assert result.exit_code == 2 and "--api-key-file" in result.output
    result = runner.invoke(app, ["control"], env={API_KEY_ENV: ""})
    assert result.exit_code == 2 and "FSM_AGENT_API_KEY is empty" in result.output


def test_serve_becomes_undumpable_before_it_reads_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(fsm.serve.main, "make_undumpable", lambda: calls.append("undumpable"))

    def token(**kwargs: object) -> str:
        calls.append("read")
        return "tok"

    monkeypatch.setattr(fsm.serve.main, "serve_token", token)
    result = CliRunner().invoke(app, [*SERVE, BAD_URL])
    assert result.exit_code == 2
    assert calls == ["undumpable", "read"]


# -- undumpable ------------------------------------------------------------------------------------

PROBE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from fsm.settings.secrets import dumpable, make_undumpable
before = dumpable()
if sys.argv[2] == "protect":
    assert make_undumpable()
print(before, dumpable(), flush=True)
time.sleep(30)
"""


def test_make_undumpable_clears_the_dumpable_flag_of_the_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", PROBE, str(ROOT), "protect"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["1", "0"]  # PR_GET_DUMPABLE: 1, then 0
    finally:
        child.kill()
        child.wait()


def _unprivileged() -> tuple[list[str], int | None]:
    """A python and a uid that are not root: ourselves, or (as root) nobody with the system
    python (the test's own interpreter lives under /root)."""
    if os.geteuid() != 0:
        return [sys.executable], None
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("running as root and no system python3 for an unprivileged user")
    return [python], 65534


@pytest.mark.parametrize(("mode", "readable"), [("protect", False), ("plain", True)])
def test_a_same_uid_process_cannot_read_an_undumpable_ones_environ(
    mode: str, readable: bool
) -> None:
    python, uid = _unprivileged()
    env = {"PATH": "/usr/bin:/bin", "PLANTED": "secret-in-env"}
    child = subprocess.Popen(
        [*python, "-c", PROBE, str(ROOT), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        user=uid,
        cwd="/",
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            pytest.skip("the unprivileged python could not import fsm.settings.secrets")
        reader = subprocess.run(
            [
                *python,
                "-c",
                "import sys\n"
                "try:\n    print(open(sys.argv[1], 'rb').read().count(b'secret-in-env'))\n"
                "except PermissionError:\n    print('denied')",
                f"/proc/{child.pid}/environ",
            ],
            capture_output=True,
            text=True,
            user=uid,
            cwd="/",
            timeout=30,
        )
        assert reader.stdout.strip() == ("1" if readable else "denied"), reader.stderr
    finally:
        child.kill()
        child.wait()
