"""Timer relations: a config whose watchdog is shorter than the heartbeat it watches, or whose
control-plane backstop is not above the wrapper's own cap, is refused naming both keys; the
defaults hold every relation."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsm.cli.app import app
from fsm.engine.durations import parse_duration
from fsm.machines import ingest_link, timer_relations
from fsm.machines.timer_relations import AGENT_HEARTBEAT_PERIOD, CONSTANTS, RELATIONS, Relation
from fsm.machines.timers import TABLES
from fsm.settings.config import ConfigError, timer_values

DEFAULTS = {k: v for table in TABLES.values() for k, v in table.defaults().items()}


def _violation(relation: Relation) -> dict[str, str]:
    """Overrides of the relation's own keys that break it (the rest stay at their defaults)."""
    shorter = relation.terms(relation.shorter)
    longer = relation.terms(relation.longer)
    needed = relation.factor * sum(CONSTANTS.get(t, DEFAULTS.get(t, 0.0)) for t in shorter)
    rest = sum(DEFAULTS[t] for t in longer[1:])
    if needed - rest > 0.002:  # shorten the longer side to half of what it needs
        return {longer[0]: f"{round((needed - rest) / 2 * 1000)}ms"}
    key = next(t for t in shorter if t not in CONSTANTS)  # or lengthen the shorter side
    total_longer = sum(DEFAULTS[t] for t in longer)
    return {key: f"{round((total_longer / relation.factor + DEFAULTS[key]) * 1000) + 1000}ms"}


def _write(tmp_path: Path, timers: dict[str, str]) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text("[timers]\n" + "".join(f'{k} = "{v}"\n' for k, v in timers.items()))
    return path


def _names(relation: Relation) -> list[str]:
    return [
        t if t in CONSTANTS else f"timers.{t}"
        for side in (relation.shorter, relation.longer)
        for t in relation.terms(side)
    ]


@pytest.mark.parametrize("relation", RELATIONS, ids=lambda r: f"{r.shorter}<{r.longer}")
def test_a_config_that_breaks_a_relation_is_refused_naming_both_keys(
    relation: Relation, tmp_path: Path
) -> None:
    bad = _violation(relation)
    path = _write(tmp_path, bad)
    with pytest.raises(ConfigError) as caught:
        timer_values(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert relation.why in message
    for name in _names(relation):
        assert name in message, (name, message)


def test_stream_silence_below_the_agents_heartbeat_is_refused(tmp_path: Path) -> None:
    """The issue's case: 5 s of allowed silence on a stream whose heartbeat comes every 10 s
    reconnected the idle link every few seconds."""
    assert AGENT_HEARTBEAT_PERIOD == 10.0
    with pytest.raises(ConfigError) as caught:
        timer_values(_write(tmp_path, {"stream_silence": "5s"}))
    assert (
        "timers.stream_silence (5s) must be longer than the agent's heartbeat period "
        "agent_heartbeat (10s)"
    ) in str(caught.value)
    timer_values(_write(tmp_path, {"stream_silence": "11s"}))  # just above it is fine


@pytest.mark.parametrize(
    ("timers", "names"),
    [
        ({"stale_heartbeat": "9s"}, ["timers.stale_heartbeat", "2 x timers.ingest_heartbeat"]),
        ({"ingest_heartbeat": "50s"}, ["timers.stale_heartbeat", "2 x timers.ingest_heartbeat"]),
        ({"hung_session": "5m"}, ["timers.hung_session", "timers.turn_no_progress"]),
        ({"turn_no_progress": "20m"}, ["timers.hung_session", "timers.turn_no_progress"]),
        ({"max_runtime": "30m"}, ["timers.max_runtime", "timers.turn_hard_cap"]),
        ({"max_runtime": "120m"}, ["timers.max_runtime", "timers.turn_hard_cap"]),
        ({"first_event_grace": "9s"}, ["timers.first_event_grace", "agent_heartbeat"]),
        (
            {"ingest_backoff_initial": "1m"},
            ["timers.ingest_backoff_max", "timers.ingest_backoff_initial"],
        ),
    ],
)
def test_the_relations_the_issue_names_are_refused(
    timers: dict[str, str], names: list[str], tmp_path: Path
) -> None:
    """Stale below two wrapper heartbeats, a backstop at or below the wrapper's cap (the source
    design's 5 min and 30 min included), a first-event grace below Kilo's heartbeat, a backoff
    whose first delay is above its largest."""
    with pytest.raises(ConfigError) as caught:
        timer_values(_write(tmp_path, timers))
    for name in names:
        assert name in str(caught.value)


def test_every_broken_relation_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        timer_values(_write(tmp_path, {"stream_silence": "5s", "max_runtime": "1m"}))
    assert "timers.stream_silence" in str(caught.value)
    assert "timers.max_runtime" in str(caught.value)


def test_the_defaults_hold_every_relation() -> None:
    assert timer_relations.broken(DEFAULTS) == []
    timer_values()
    timer_values(relations=True)


def test_the_backstop_defaults_of_the_later_design_hold_every_relation() -> None:
    """16.5 min and 125 min (shared/kilo/acceptance.md, "Timer owners") above the wrapper's 7 min
    no-progress and 120 min hard cap."""
    values = {**DEFAULTS, "hung_session": parse_duration("16.5m"), "max_runtime": 125 * 60.0}
    assert timer_relations.broken(values) == []


def test_a_relation_the_defaults_alone_break_does_not_refuse_a_config_that_leaves_it_alone() -> (
    None
):
    """The defaults are the timer table's business (the test above); a file that sets neither key
    of a broken relation is not at fault for it, and refusing it would stop every host."""
    strict = Relation("stale_heartbeat", "stale_grace", "made up for the test")
    assert not strict.holds(DEFAULTS)
    assert timer_relations.problems(DEFAULTS, configured={"idle_stop"}, relations=[strict]) == []
    (message,) = timer_relations.problems(
        {**DEFAULTS, "stale_grace": 20.0}, configured={"stale_grace"}, relations=[strict]
    )
    assert "timers.stale_grace (20s) must be longer than timers.stale_heartbeat (90s)" in message


def test_overrides_alone_are_checked_only_when_asked() -> None:
    """A simulated world sets a wrapper cap above the backstop on purpose (to see the backstop
    fire); a file, or a caller that asks, is held to the relations."""
    timer_values(overrides={"hung_session": "1m"})
    with pytest.raises(ConfigError, match=r"^overrides: timers\.hung_session"):
        timer_values(overrides={"hung_session": "1m"}, relations=True)


def test_overrides_given_with_a_file_are_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, {"idle_stop": "11m"})
    with pytest.raises(ConfigError, match=r"timers\.stream_silence"):
        timer_values(path, overrides={"stream_silence": "2s"})


def test_fsm_agent_timers_refuses_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    path = _write(tmp_path, {"stream_silence": "5s"})
    result = CliRunner().invoke(app, ["timers", "--config", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: timers.stream_silence (5s) must be longer")
    assert "agent_heartbeat" in result.output
    good = _write(tmp_path, {"stream_silence": "20s"})
    assert CliRunner().invoke(app, ["timers", "--config", str(good)]).exit_code == 0


def test_the_reconnect_jitter_is_the_ingest_links_own() -> None:
    """The stale relation allows for the wrapper's reconnect jitter; it must be the one the
    ingest link's backoff declares."""
    (relation,) = [r for r in RELATIONS if r.shorter == "ingest_backoff_max"]
    (backoff,) = ingest_link.DECLARATION.backoffs
    assert backoff.maximum == "ingest_backoff_max"
    assert relation.factor == pytest.approx(1 + backoff.jitter)


def test_a_relation_naming_no_timer_is_refused() -> None:
    assert timer_relations._undeclared(RELATIONS) == []
    (problem,) = timer_relations._undeclared([Relation("stale_hearbeat", "hung_session", "x")])
    assert "'stale_hearbeat' is neither a timer nor a constant" in problem
