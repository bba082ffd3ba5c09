"""The supervisor's host on real processes (short timers from a config file, so each test takes
well under a second): restarts a crashing command, ends with exit 0, gives up with the budget
spent, forwards SIGTERM, and hands every start the token through a pipe, never the environment
or a file that a restarted command could no longer read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fsm.serve.supervise import take_token
from fsm.settings.secrets import TOKEN_ENV

FAST = """[timers]
supervisor_backoff_initial = "20ms"
supervisor_backoff_max = "80ms"
"""

CHILD = """
import os, sys
from pathlib import Path
log = Path(sys.argv[1])
runs = len(log.read_text().splitlines()) if log.exists() else 0
token = ""
if "--token-fd" in sys.argv:
    fd = int(sys.argv[sys.argv.index("--token-fd") + 1])
    token = os.read(fd, 100).decode()
with log.open("a") as f:
    f.write(f"{runs} {token or '-'} {os.environ.get('FSM_AGENT_TOKEN', '-')} {len(sys.argv)}\\n")
codes = [int(c) for c in sys.argv[2].split(",")]
sys.exit(codes[min(runs, len(codes) - 1)])
"""


def supervise(
    tmp_path: Path, codes: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    config = tmp_path / "fsm.toml"
    config.write_text(FAST)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    log = tmp_path / "runs.log"
    supervisor = [sys.executable, "-m", "fsm.serve.supervise", "--config", str(config), "--"]
    done = subprocess.run(
        [*supervisor, sys.executable, str(child), str(log), codes, *extra],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def test_a_crashing_command_is_restarted_and_exit_0_ends_the_supervisor(tmp_path: Path) -> None:
    code, runs = supervise(tmp_path, "1,3,0")
    assert code == 0
    assert [line.split()[0] for line in runs] == ["0", "1", "2"]


def test_with_the_budget_spent_the_supervisor_exits_with_the_commands_code(
    tmp_path: Path,
) -> None:
    code, runs = supervise(tmp_path, "3")
    assert code == 3
    assert len(runs) == 6, "the first start and 5 restarts"


def test_exit_2_a_refused_command_line_is_not_restarted(tmp_path: Path) -> None:
    code, runs = supervise(tmp_path, "2")
    assert (code, len(runs)) == (2, 1)


def test_the_token_reaches_every_start_through_a_pipe_and_never_the_environment(
    tmp_path: Path,
) -> None:
    code, runs = supervise(tmp_path, "1,0", env={TOKEN_ENV: "tok-123"})
    assert code == 0
    assert [line.split()[1:3] for line in runs] == [["tok-123", "-"], ["tok-123", "-"]]


def test_a_token_file_in_the_command_is_read_once_removed_and_piped_to_each_start(
    tmp_path: Path,
) -> None:
    token = tmp_path / "token"
    token.write_text("tok-file-9\n")
    token.chmod(0o600)
    code, runs = supervise(tmp_path, "1,0", "--token-file", str(token))
    assert code == 0
    assert not token.exists()
    assert [line.split()[1] for line in runs] == ["tok-file-9", "tok-file-9"]
    # argv: child.py, log, codes, --token-fd, N: the --token-file pair is gone
    assert {line.split()[3] for line in runs} == {"5"}


def test_take_token_removes_both_spellings_of_the_flag(tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("abc")
    token.chmod(0o600)
    assert take_token(["serve", f"--token-file={token}", "--x"], {}) == (["serve", "--x"], "abc")
    assert take_token(["serve"], {TOKEN_ENV: "e"}) == (["serve"], "e")
    assert take_token(["serve"], {}) == (["serve"], None)


def test_sigterm_is_forwarded_and_the_supervisor_exits_with_the_commands_code(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    child = tmp_path / "trap.py"
    child.write_text(
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        f"Path({str(ready)!r}).write_text('up')\n"
        "time.sleep(30)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "fsm.serve.supervise", "--", sys.executable, str(child)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.01)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - started < 2
    assert process.stderr is not None
    assert '"signalling the wrapper"' in process.stderr.read()
