"""The fleet picture: drawn from a small world's run, it shows what the timeline says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsm.cli.app import app
from fsm.sim.fleet import FleetResult, run_fleet
from fsm.sim.report import fleet_counts, render_html, render_svg

SPAN = 3600.0


@pytest.fixture(scope="module")
def fleet() -> FleetResult:
    return run_fleet(12, SPAN, seed=5)


def test_the_fleet_counts_add_up_to_every_started_session(fleet: FleetResult) -> None:
    counts = fleet_counts(fleet.lines, SPAN)
    assert len(counts) == 240
    assert all(sum(tally.values()) == 12 for tally in counts[10:])
    # The counts are the states the timeline's last session transition says, at the end too.
    last: dict[str, str] = {}
    for line in fleet.lines:
        if line.machine == "session" and line.kind in ("start", "transition"):
            last[line.session] = line.dest
    end: dict[str, int] = {}
    for state in last.values():
        end[state] = end.get(state, 0) + 1
    assert counts[-1] == end
    assert {e.session: e.machines["session"] for e in fleet.ends} == last


def test_the_html_report_draws_states_faults_and_one_sessions_lanes(fleet: FleetResult) -> None:
    page = render_html(fleet.lines, SPAN, 12, "s2", "fleet of 12")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in page and "https://" not in page
    drawn = set(re.findall(r'<polygon class="state" data-state="(\w+)"', page))
    assert {"running", "idle"} <= drawn
    faults = [line for line in fleet.lines if line.kind == "do" and line.trigger != "prompt"]
    assert faults and page.count('<line class="fault"') >= len(faults)
    for kind in {f.trigger for f in faults}:
        n = sum(f.trigger == kind for f in faults)
        assert f"{kind} ({n})" in page
    lanes = re.findall(r'<text [^>]*class="lane">([^<]+)</text>', page)
    assert lanes[0] == "session" and "w1.wrapper" in lanes
    assert any(lane.startswith("w1.turn:") for lane in lanes)
    assert "Session s2" in page


def test_the_svg_report_is_one_document_with_both_drawings(fleet: FleetResult) -> None:
    svg = render_svg(fleet.lines, SPAN, 12, "s1")
    assert svg.startswith("<svg") and svg.count('class="fleet"') == 1
    assert svg.count('class="lanes"') == 1


def test_simulate_fleet_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "fleet.html"
    result = CliRunner().invoke(
        app,
        ["simulate", "--fleet", "4", "--span", "30m", "--seed", "2", "--report", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "4 sessions x 0:30:00" in result.output
    page = out.read_text()
    assert "Session s1" in page and 'class="fleet"' in page
    bad = CliRunner().invoke(app, ["simulate", "--fleet", "4", "--report", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "--report" in bad.output
    lost = CliRunner().invoke(
        app, ["simulate", "--fleet", "4", "--report", str(out), "--report-session", "s9"]
    )
    assert lost.exit_code == 2 and "s9" in lost.output


def test_a_scenario_run_can_be_drawn_as_svg(tmp_path: Path) -> None:
    out = tmp_path / "one.svg"
    scenario = (
        Path(__file__).resolve().parents[1] / "scenarios" / "agent_killed_after_progress.toml"
    )
    result = CliRunner().invoke(app, ["simulate", str(scenario), "-q", "--report", str(out)])
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert svg.startswith("<svg") and "Session s1" in svg
    assert 'data-state="failed"' in svg or 'data-state="completed"' in svg
    two = CliRunner().invoke(app, ["simulate", str(scenario), str(scenario), "--report", str(out)])
    assert two.exit_code == 2 and "one run" in two.output
    fuzzed = CliRunner().invoke(app, ["simulate", "--fuzz", "2", "--report", str(out)])
    assert fuzzed.exit_code == 2 and "one run" in fuzzed.output


def test_a_fleet_in_small_worlds_draws_the_same_report(tmp_path: Path) -> None:
    one, many = tmp_path / "one.svg", tmp_path / "many.svg"
    args = ["simulate", "--fleet", "5", "--span", "20m", "--seed", "4"]
    whole = CliRunner().invoke(app, [*args, "--report", str(one)])
    split = CliRunner().invoke(app, [*args, "--batch", "2", "--shards", "2", "--report", str(many)])
    assert whole.exit_code == 0 and split.exit_code == 0, whole.output + split.output
    assert "1 world(s), 1 at a time" in whole.output
    assert "3 world(s), 2 at a time" in split.output
    assert one.read_bytes() == many.read_bytes()
