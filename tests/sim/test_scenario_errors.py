"""A scenario that cannot be run says where (file and line), which field, and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsm.sim.scenario import ScenarioError, load_scenario, parse_scenario

GOOD_STEP = '[[step]]\nat = "1s"\ndo = "prompt"\nmessage = "m1"\n'


def error_of(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "s.toml")
    return info.value


def test_a_valid_scenario_compiles_with_seconds() -> None:
    s = parse_scenario('name = "x"\n' + GOOD_STEP + 'plan = ["text 20s", "stall"]\n', "s.toml")
    assert s.actions[0].at == 1.0
    assert [seg.label() for seg in s.actions[0].plan or ()] == ["text 20s", "stall"]
    assert s.until == 61.0


def test_toml_syntax_error_names_the_line() -> None:
    err = error_of('name = "x"\n\n[[step]\nat = "1s"\n')
    assert (err.file, err.line) == ("s.toml", 3)
    assert str(err).startswith("s.toml:3: not valid TOML")


def test_unknown_field_names_line_field_and_suggests() -> None:
    err = error_of('name = "x"\n' + GOOD_STEP + 'mesage = "m2"\n')
    assert err.line == 6 and err.field == "step[0].mesage"
    assert "did you mean 'message'" in str(err)


def test_bad_duration_names_the_step_and_field() -> None:
    err = error_of('name = "x"\n' + GOOD_STEP + GOOD_STEP.replace('"1s"', '"soon"'))
    assert str(err).startswith("s.toml:7: step[1].at: expected a duration like '90s'")


def test_wrong_type_is_reported_by_msgspec_with_the_path() -> None:
    err = error_of('name = "x"\n[[step]]\nat = "1s"\ndo = "stop"\nrepeat = "twice"\n')
    assert err.line == 5 and err.field == "step[0].repeat"
    assert "expected int, got str" in err.problem


def test_missing_required_field() -> None:
    err = error_of('name = "x"\n[[step]]\nat = "1s"\n')
    assert err.field == "step[0].do" and err.problem == "is required" and err.line == 2


def test_unknown_action_suggests_the_nearest() -> None:
    err = error_of('name = "x"\n[[step]]\nat = "1s"\ndo = "agent.hnag"\n')
    assert err.line == 4 and "did you mean 'agent.hang'" in str(err)


def test_a_field_the_action_does_not_take() -> None:
    err = error_of('name = "x"\n[[step]]\nat = "1s"\ndo = "agent.crash"\nfor = "5s"\n')
    assert err.line == 5 and err.field == "step[0].for"
    assert "does not apply to agent.crash" in err.problem


def test_prompt_needs_a_message_and_drop_needs_a_duration() -> None:
    assert "required by prompt" in str(error_of('name = "x"\n[[step]]\nat = "0s"\ndo = "prompt"\n'))
    err = error_of('name = "x"\n[[step]]\nat = "0s"\ndo = "ingest.drop"\n')
    assert err.field == "step[0].for"


def test_bad_plan_part_names_its_index() -> None:
    err = error_of('name = "x"\n' + GOOD_STEP + 'plan = ["text 2s", "dance 3s"]\n')
    assert err.field == "step[0].plan[1]" and err.line == 6
    assert "expected a plan part like" in err.problem


def test_unknown_timer_key_suggests() -> None:
    err = error_of('name = "x"\n[timers]\nstale_hartbeat = "90s"\n')
    assert err.line == 3 and "did you mean 'stale_heartbeat'" in str(err)


def test_expectation_kind_and_comparator_checks() -> None:
    err = error_of('name = "x"\n[[expect]]\nkind = "stat"\n')
    assert err.field == "expect[0].kind" and err.line == 3
    err = error_of('name = "x"\n[[expect]]\nkind = "count"\naction = "agent.spawn"\n')
    assert "needs one of equals, at_least, at_most" in err.problem and err.line == 2
    err = error_of(
        'name = "x"\n[[expect]]\nkind = "state"\nmachine = "wraper"\nat = "1s"\nis = "x"\n'
    )
    assert err.field == "expect[0].machine" and err.line == 4


def test_window_must_be_two_ordered_durations() -> None:
    base = 'name = "x"\n[[expect]]\nkind = "outcome"\nmessage = "m"\nstatus = "completed"\n'
    assert "ends before it starts" in str(error_of(base + 'within = ["5s", "1s"]\n'))
    assert "two durations" in str(error_of(base + 'within = ["5s"]\n'))


def test_mutant_removal_must_name_a_real_transition() -> None:
    err = error_of(
        'name = "x"\n[[mutant]]\nwhy = "w"\nremove = ["turn: dispatch running -> accepted"]\n'
    )
    assert err.field == "mutant[0].remove[0]" and "has no transition" in err.problem


def test_until_before_a_step() -> None:
    err = error_of('name = "x"\nuntil = "1s"\n[[step]]\nat = "5s"\ndo = "stop"\n')
    assert err.field == "until" and err.line == 2


def test_load_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[world]\nloss = 2.0\n')
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}:3: world.loss: is a probability")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
