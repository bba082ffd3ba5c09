"""Random fault schedules keep every invariant; a deliberately broken machine is caught.

Hypothesis draws the schedules on the pytest side (and shrinks a failure itself); ``fuzz_many``
is what ``fsm-agent simulate --fuzz`` runs, with its own shrinking to a replayable scenario file.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fsm.cli.app import app
from fsm.sim.fuzz import fuzz_many, run_schedule, schedule_toml
from fsm.sim.run import mutated
from fsm.sim.scenario import Action, Removal, Segment

PLANS = [
    (Segment("text", 20.0),),
    (Segment("stall", 5.0), Segment("text", 5.0)),
    (Segment("text", 2.0), Segment("tool", 120.0), Segment("text", 2.0)),
    (Segment("question"), Segment("text", 3.0)),
    (Segment("text", 3.0), Segment("error", text="APIError: boom")),
    (Segment("text", 2.0), Segment("stall")),
]
FAULTS = [
    "agent.crash",
    "agent.silence",
    "agent.drop_stream",
    "wrapper.crash",
    "stop",
    "abort",
    "answer",
]
TIMED = ["agent.hang", "wrapper.hang", "ingest.drop", "ingest.partition"]

times = st.floats(min_value=0, max_value=600, allow_nan=False).map(lambda t: round(t, 3))
prompts = st.builds(
    lambda at, n, plan: Action(at=at, do="prompt", message=f"m{n}", plan=plan),
    times,
    st.integers(1, 4),
    st.sampled_from(PLANS),
)
faults = st.builds(lambda at, do: Action(at=at, do=do), times, st.sampled_from(FAULTS))
timed = st.builds(
    lambda at, do, d: Action(at=at, do=do, duration=round(d, 1)),
    times,
    st.sampled_from(TIMED),
    st.floats(min_value=1, max_value=200),
)
schedules = st.lists(st.one_of(prompts, faults, timed), min_size=1, max_size=10)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(steps=schedules, seed=st.integers(0, 10_000))
def test_random_schedules_keep_every_invariant(steps: list[Action], seed: int) -> None:
    run, _world = run_schedule(steps, seed)
    assert not run.violations, "\n".join(str(v) for v in run.violations)


def test_fuzz_many_passes_on_the_real_machines() -> None:
    report = fuzz_many(25, seed=1000)
    assert report.failure is None, report.render()
    assert report.simulated > 25 * 600


BROKEN = [Removal("wrapper", "turn_ended", "running", "idle")]
"""A wrapper that never counts its last turn out: it stays 'running' with nothing to wake it."""


def test_a_broken_machine_is_caught_with_a_readable_shrunk_trace(tmp_path: Path) -> None:
    with mutated(BROKEN):
        report = fuzz_many(50, seed=0)
    failure = report.failure
    assert failure is not None
    assert failure.violation.invariant == "stuck"
    assert "w1.wrapper is in 'running' with no armed timer" in str(failure.violation)
    assert len(failure.shrunk) < len(failure.steps) and len(failure.shrunk) <= 2
    text = report.render()
    assert f"FAIL seed {failure.seed}" in text
    # The trace shows the turn ending while the wrapper, last seen entering 'running', stays.
    assert "w1.wrapper         ready → running" in failure.timeline
    # (How it ends depends on the schedule: with the control plane's backstops above the
    # wrapper's clocks it is now the wrapper's own turn timer, not a 5-minute hung abort.)
    assert any(f"emit_{end}" in failure.timeline for end in ("completed", "failed", "cancelled"))
    # The shrunk schedule is a scenario file that replays the failure.
    path = tmp_path / "shrunk.toml"
    path.write_text(schedule_toml(failure.shrunk, failure.seed))
    with mutated(BROKEN):
        result = CliRunner().invoke(app, ["simulate", str(path), "-q"])
    assert result.exit_code == 1
    assert "FAIL  invariant" in result.output and "stuck" in result.output
    assert CliRunner().invoke(app, ["simulate", str(path), "-q"]).exit_code == 0
