"""`fsm-agent demo`, the README's "run it" command, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.kilo


def test_the_demo_runs_a_prompt_end_to_end_and_shows_every_machine(kilo_available: None) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSM_AGENT_MODEL")}
    done = subprocess.run(
        [sys.executable, "-m", "fsm", "demo", "--no-color"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "built-in scripted model" in out
    for machine_line in ("session ", "wrapper ", "agent_link ", "turn:"):
        assert machine_line in out, machine_line
    assert "message.part.delta" in out and "session.turn.close" in out
    summary = out.split("\nsummary\n", 1)[1]
    assert ": completed" in summary
    assert "\033[" not in out  # --no-color means no escape codes
    # The temporary control plane, wrapper and Kilo are all gone and their folder removed.
    folder = out.splitlines()[0].removeprefix("fsm-agent demo in ").strip()
    assert not os.path.exists(folder)
