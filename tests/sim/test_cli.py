"""``fsm-agent simulate`` and ``check`` as a user runs them: output, exit codes, determinism."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsm.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "tests" / "scenarios"
runner = CliRunner()

NOISY = """
name = "noisy channel"
seed = 3
[world]
jitter = "40ms"
loss = 0.01
reorder = 0.5
[[step]]
at = "5s"
do = "prompt"
message = "m1"
plan = ["text 30s"]
[[step]]
at = "12s"
do = "ingest.partition"
for = "40s"
[[expect]]
kind = "outcome"
message = "m1"
status = "completed"
"""


def test_the_library_passes_and_prints_timelines() -> None:
    result = runner.invoke(app, ["simulate", str(LIBRARY)])
    assert result.exit_code == 0, result.output
    assert "w1.wrapper         starting → ready" in result.output
    assert "PASS  message m1 ends completed" in result.output
    assert result.output.rstrip().endswith("s")
    assert "scenarios passed" in result.output.splitlines()[-1]


def test_same_seed_gives_a_byte_identical_timeline(tmp_path: Path) -> None:
    path = tmp_path / "noisy.toml"
    path.write_text(NOISY)
    runs = [
        runner.invoke(app, ["simulate", str(path), "--seed", "7", "--verbose"]).output
        for _ in range(2)
    ]
    # Only the wall-clock figures of the summary lines may differ.
    wall = re.compile(r"in \d+(\.\d+)? m?s")
    assert wall.sub("in <wall>", runs[0]) == wall.sub("in <wall>", runs[1])
    assert len(runs[0].splitlines()) > 50
    json_runs = [
        runner.invoke(app, ["simulate", str(path), "--seed", "7", "--json", "--verbose"]).output
        for _ in range(2)
    ]
    assert json_runs[0] == json_runs[1]
    other = runner.invoke(app, ["simulate", str(path), "--seed", "8", "--json", "--verbose"])
    assert other.output != json_runs[0], "the seed must matter on a noisy channel"


def test_json_lines_are_machine_readable(tmp_path: Path) -> None:
    path = tmp_path / "noisy.toml"
    path.write_text(NOISY)
    result = runner.invoke(app, ["simulate", str(path), "--json"])
    records = [json.loads(line) for line in result.output.splitlines()]
    assert {"at", "session", "machine", "kind"} <= set(records[0])
    assert records[-1]["type"] == "result" and records[-1]["seed"] == 3
    assert any(r.get("type") == "expect" for r in records)


def test_a_failing_expectation_exits_1_and_says_where(tmp_path: Path) -> None:
    path = tmp_path / "wrong.toml"
    path.write_text(NOISY.replace('status = "completed"', 'status = "failed"'))
    result = runner.invoke(app, ["simulate", str(path), "-q"])
    assert result.exit_code == 1
    assert "FAIL  message m1 ends failed" in result.output
    assert f"at:  {path}:17" in result.output  # its [[expect]] table


def test_a_bad_file_exits_2_naming_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[[step]]\nat = "later"\ndo = "stop"\n')
    result = runner.invoke(app, ["simulate", str(path)])
    assert result.exit_code == 2
    assert f"{path}:3: step[0].at: expected a duration" in result.output
    assert runner.invoke(app, ["simulate"]).exit_code == 2
    assert runner.invoke(app, ["simulate", str(tmp_path / "nope")]).exit_code == 2


def test_mutants_option_runs_them(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", str(LIBRARY / "no_progress_turn.toml"), "--mutants"])
    assert result.exit_code == 0, result.output
    assert re.search(r"PASS: .*, (\d+)/\1 mutants caught", result.output), result.output
    weak = tmp_path / "weak.toml"
    weak.write_text(
        NOISY + '[[mutant]]\nwhy = "changes nothing this scenario checks"\n'
        'timers = { idle_stop = "11m" }\n'
    )
    result = runner.invoke(app, ["simulate", str(weak), "-q", "--mutants"])
    assert result.exit_code == 1
    assert "mutant survived (no expectation noticed): changes nothing" in result.output
    assert "0/1 mutants caught" in result.output


def test_fuzz_and_check_from_the_command_line() -> None:
    result = runner.invoke(app, ["simulate", "--fuzz", "5", "--seed", "11"])
    assert result.exit_code == 0, result.output
    assert "5 schedules from seed 11" in result.output and "no invariant violated" in result.output
    result = runner.invoke(app, ["check", "--depth", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["states"] > 10 and report["transitions"] >= report["states"] - 1


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["check", "--depth", "-1"], "--depth must be 0 to 20, not -1"),
        (["check", "--depth", "21"], "--depth must be 0 to 20, not 21"),
        (["check", "--prompts", "-2"], "--prompts must be 0 to 5, not -2"),
        (["check", "--faults", "99"], "--faults must be 0 to 5, not 99"),
        (["simulate", "--fleet", "-3"], "--fleet must be 1 to 100000, not -3"),
        (["simulate", "--fleet", "2", "--shards", "0"], "--shards must be 1 to 64, not 0"),
        (["simulate", "--fleet", "2", "--span", "soon"], "--span:"),
    ],
)
def test_an_out_of_range_number_is_one_line_and_exit_2(args: list[str], named: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith(f"error: {named}")


def _on_a_terminal(args: list[str]) -> tuple[str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe): (stdout, stderr)."""
    leader, follower = pty.openpty()
    code = "from fsm.cli.app import app; app()"
    with subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=follower, cwd=ROOT
    ) as proc:
        os.close(follower)
        err = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            err += chunk
        out = proc.stdout.read() if proc.stdout is not None else b""
        assert proc.wait(timeout=120) == 0, err
    os.close(leader)
    return out.decode(), err.decode(errors="replace")


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["check", "--depth", "3"], " states, "),
        (["simulate", "--fleet", "3", "--span", "20m"], " of 0:20:00.000 simulated"),
        (["simulate", "--fuzz", "2"], "fuzz: 0/2 schedules"),
    ],
)
def test_progress_shows_on_a_terminal_and_not_in_a_pipe(args: list[str], shown: str) -> None:
    out, err = _on_a_terminal(args)
    assert shown in err and shown not in out
    assert err.endswith("\r\x1b[K")  # the progress line is cleared before the results
    piped = subprocess.run(
        [sys.executable, "-c", "from fsm.cli.app import app; app()", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert piped.stderr == "" and piped.stdout


def test_a_fleet_is_fast_forwarded_by_default_and_the_same_step_by_step() -> None:
    runs = {}
    for flag in ("--fast-forward", "--step-by-step"):
        result = runner.invoke(app, ["simulate", "--fleet", "4", "--span", "1h", "--json", flag])
        assert result.exit_code == 0, result.output
        runs[flag] = json.loads(result.output.strip().splitlines()[-1])
    default = runner.invoke(app, ["simulate", "--fleet", "4", "--span", "1h", "--json"])
    assert json.loads(default.output.strip().splitlines()[-1])["fast_forward"] is True
    fast, step = runs["--fast-forward"], runs["--step-by-step"]
    assert (fast["fast_forward"], step["fast_forward"]) == (True, False)
    assert fast["violations"] == step["violations"]
    assert fast["callbacks"] < step["callbacks"]
