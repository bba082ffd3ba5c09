"""`fsm-agent demo`, the README's "run it" command, as a user runs it: real control plane, wrapper
and Kilo, the scripted model or an unreachable one."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from adapters.agents.registry import AGENTS
from fsm.demo.progress import Progress
from fsm.demo.scripted_model import last_prompt
from tests.fakes.agent_binaries import require_agent

PROGRESS = "starting the control plane…"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FSM_AGENT_MODEL")}


@pytest.mark.kilo
@pytest.mark.parametrize("agent", list(AGENTS))
def test_the_demo_runs_a_prompt_end_to_end_and_shows_every_machine(agent: str) -> None:
    """``fsm-agent demo`` and ``fsm-agent demo --agent opencode`` (the README's promise)."""
    require_agent(agent)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "fsm", "demo", "--no-color", "--agent", agent),
            *("--prompt", "write hello.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    # It says what the scripted model is, that it does not act on the prompt, and how to use a
    # real one; and the reply shows the prompt arrived (issue 18: it was silently ignored).
    assert "built-in scripted model" in out and "does not act on it" in out
    assert "--model-url" in out and "--model-key" in out
    for machine_line in ("session ", "wrapper ", "agent_link ", "turn:"):
        assert machine_line in out, machine_line
    assert "message.part.delta" in out and "session.turn.close" in out
    summary = out.split("\nsummary\n", 1)[1]
    assert ": completed" in summary
    reply = next(line for line in summary.splitlines() if line.startswith("  reply"))
    assert "You asked: 'write hello.txt'" in reply and "do not act on prompts" in reply
    assert "\033[" not in out  # --no-color means no escape codes
    # Not a terminal: no progress lines.
    assert PROGRESS not in done.stdout + done.stderr
    # The temporary control plane, wrapper and Kilo are all gone and their folder removed.
    folder = out.splitlines()[0].removeprefix("fsm-agent demo in ").strip()
    assert not os.path.exists(folder)


def _run_on_a_terminal(args: list[str], timeout: float) -> tuple[int, str, float]:
    """Run with stdout and stderr on a pseudo-terminal: (exit code, output, seconds)."""
    master, slave = pty.openpty()
    started = time.monotonic()
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=_env(), close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while time.monotonic() - started < timeout:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace"), time.monotonic() - started


@pytest.mark.kilo
def test_an_unreachable_model_fails_fast_with_the_agents_own_error(kilo_available: None) -> None:
    code, out, took = _run_on_a_terminal(
        [
            sys.executable,
            "-m",
            "fsm",
            "demo",
            "--no-color",
            "--model-url=http://127.0.0.1:9/v1",
            "--model-key=x",
            "--timeout=90",
        ],
        timeout=120,
    )
    assert code == 1, out[-3000:]
    assert took < 60, f"waited {took:.0f}s of the 90 s timeout"
    # Progress on a terminal, each start-up step named.
    assert PROGRESS in out and "Kilo ready" in out, out[:3000]
    summary = out.split("\nsummary", 1)[1]
    error = next(line for line in summary.splitlines() if line.strip().startswith("error"))
    assert "Cannot connect to API" in error, summary
    assert "the agent said: Cannot connect to API" in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-url=http://x/v1"], "give both --model-url and --model-key"),
        (["--model-url=ftp://x", "--model-key=k"], "--model-url: expected an http(s):// URL"),
        (["--timeout=0"], "--timeout must be a positive number"),
    ],
)
def test_bad_demo_arguments_are_one_line_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fsm", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_progress_is_quiet_off_a_terminal_and_stamped_on_one() -> None:
    quiet = io.StringIO()
    Progress(quiet).step("starting")
    assert quiet.getvalue() == ""  # a StringIO is no terminal

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    loud = Terminal()
    Progress(loud).step("starting")
    assert loud.getvalue().endswith("] starting\n") and loud.getvalue().startswith("[")


def test_the_scripted_model_reads_the_prompt_without_kilos_context() -> None:
    parts = [
        {"type": "text", "text": "write hello.txt"},
        {"type": "text", "text": "<environment_details>t"},
    ]
    assert last_prompt([{"role": "user", "content": parts}]) == "write hello.txt"
    assert last_prompt([{"role": "user", "content": "a\n<environment_details>\nx"}]) == "a"
    assert last_prompt([{"role": "system", "content": "s"}]) == ""
