"""The committed diagrams are the rendering of the current code, and the renderer shows timers."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsm.cli.app import app
from fsm.engine import graph
from fsm.machines import catalog
from fsm.settings.config import timer_values
from tests.paths import ROOT

runner = CliRunner()


def test_committed_diagrams_match_the_code() -> None:
    result = runner.invoke(app, ["graph", "--check", "--out", str(ROOT / "diagrams")])
    assert result.exit_code == 0, result.output


def test_changing_a_timer_default_without_regenerating_fails_the_check(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "diagrams", tmp_path / "diagrams")
    config = tmp_path / "fsm.toml"
    config.write_text('[timers]\nstale_heartbeat = "91s"\n')
    result = runner.invoke(
        app, ["graph", "--check", "--out", str(tmp_path / "diagrams"), "--config", str(config)]
    )
    assert result.exit_code == 1
    assert "-    ready --> stale : after 90s / heartbeat_missed" in result.output
    assert "+    ready --> stale : after 91s / heartbeat_missed" in result.output
    assert "session.svg was rendered from an older DOT source" in result.output


def test_timers_appear_on_edges_and_in_the_table() -> None:
    values = timer_values()
    session = catalog.BY_NAME["session"]
    mmd = graph.mermaid(session.definition, values["control"])
    assert "running --> stale : after 90s / heartbeat_missed" in mmd
    assert "stale --> restarting : after 15s / replace<br/>[budget wrapper_restarts]" in mmd
    page = graph.markdown(catalog.ALL, values)
    assert (
        "| `ready, waiting, running, idle` | `stale` | `silence` | `stale_heartbeat` | `90s` |"
        in page
    )


def test_graph_writes_every_format_and_the_check_accepts_it(tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.fail(graph.DOT_MISSING)
    result = runner.invoke(app, ["graph", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = {p.name for p in tmp_path.iterdir()}
    for spec in catalog.ALL:
        assert {f"{spec.name}.mmd", f"{spec.name}.dot", f"{spec.name}.svg"} <= names
    assert (tmp_path / "README.md").read_text().count("```mermaid") == len(catalog.ALL)
    assert "<svg" in (tmp_path / "turn.svg").read_text()
    assert runner.invoke(app, ["graph", "--check", "--out", str(tmp_path)]).exit_code == 0


def test_without_graphviz_graph_says_what_to_install_and_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = runner.invoke(app, ["graph", "--out", str(tmp_path / "d")])
    assert result.exit_code == 0
    assert "apt-get install graphviz" in result.output
    assert (tmp_path / "d" / "wrapper.mmd").exists()
    assert not (tmp_path / "d" / "wrapper.svg").exists()


def test_bad_format_and_bad_config_exit_2_naming_the_problem(tmp_path: Path) -> None:
    result = runner.invoke(app, ["graph", "--format", "png", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown format(s) png" in result.output
    config = tmp_path / "bad.toml"
    config.write_text('[timers]\nstale_hearbeat = "90s"\n')
    result = runner.invoke(app, ["graph", "--config", str(config), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "timers.stale_hearbeat is not a timer; did you mean 'stale_heartbeat'?" in result.output
    config.write_text('[timers]\nstale_heartbeat = "soon"\n')
    result = runner.invoke(app, ["timers", "--config", str(config)])
    assert result.exit_code == 2
    assert "stale_heartbeat" in result.output and "expected a duration" in result.output


def test_help_explains_every_command() -> None:
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for command in ("graph", "timers"):
        assert command in top.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0
        assert "--config" in sub.output
    assert "--check" in runner.invoke(app, ["graph", "--help"]).output


def test_timers_command_shows_effective_values(tmp_path: Path) -> None:
    config = tmp_path / "fsm.toml"
    config.write_text('[timers]\nstale_heartbeat = "10m"\n')
    result = runner.invoke(app, ["timers", "--config", str(config)])
    assert result.exit_code == 0
    line = next(ln for ln in result.output.splitlines() if "stale_heartbeat" in ln)
    assert "10m" in line and "(default 90s)" in line


def test_diagrams_run_top_down_with_every_label_folded_to_a_narrow_column() -> None:
    """Left to right, one label per line, the session diagram was 5,822 pt wide: unreadable at
    page width. Top-down with folded labels no label line is wider than its column."""
    values = timer_values()
    for spec in catalog.ALL:
        side = values[spec.table.side]
        mmd = graph.mermaid(spec.definition, side)
        assert mmd.splitlines()[2] == "    direction TB"
        for line in mmd.splitlines():
            if " --> " in line and " : " in line:
                first, *rest = line.split(" : ", 1)[1].split("<br/>")
                assert not first.startswith(("[", "=>", " ")), line
                for part in rest:
                    folded = part.startswith(("[", "=>", " "))
                    width = graph.LABEL_WIDTH + 2
                    assert len(part) <= width or not folded or " " not in part.strip(), line
        text = graph.dot(spec.definition, side)
        assert "rankdir=TB;" in text
        for label in text.split('label="')[1:]:
            for part in label.split('"', 1)[0].split("\\l"):
                width = max(graph.LABEL_WIDTH, graph.NOTE_WIDTH) + 2
                folded = part.startswith(("[", "=>", " ")) or " timer " in part
                assert len(part) <= width or not folded or " " not in part.strip(), part


def test_mermaid_draws_one_arrow_per_pair_of_states_with_its_transitions_stacked() -> None:
    mmd = graph.mermaid(catalog.BY_NAME["session"].definition, timer_values()["control"])
    arrows = [ln.split(" : ")[0] for ln in mmd.splitlines() if " --> " in ln]
    assert len(arrows) == len(set(arrows))
    assert "    running --> running : wrapper_connected<br/>heartbeat<br/>frame<br/>" in mmd


def test_sources_of_one_labelled_arrow_meet_at_a_junction_so_the_label_is_drawn_once() -> None:
    text = graph.dot(catalog.BY_NAME["session"].definition, timer_values()["control"])
    # ready, waiting, running and idle all go stale on the same silence timer.
    assert text.count("after 90s / heartbeat_missed") == 1
    junction = next(
        line.split(" -> ")[0].strip()
        for line in text.splitlines()
        if "-> stale [label=" in line and "heartbeat_missed" in line
    )
    for state in ("ready", "waiting", "running", "idle"):
        assert f"    {state} -> {junction} [arrowhead=none];" in text


def test_the_page_shows_each_machine_as_an_unlabelled_shape_with_its_transitions_beside() -> None:
    """Fully labelled, GitHub's Mermaid layout was 1,700-4,300 px wide; the page's figure is the
    shape only, and the labels are table rows under it, each transition once."""
    values = timer_values()
    page = graph.markdown(catalog.ALL, values)
    session = catalog.BY_NAME["session"].definition
    overview = graph.mermaid_overview(session)
    assert overview in page.replace("```mermaid\n", "").replace("```", "")
    assert " : " not in overview
    arrows = [ln.strip() for ln in overview.splitlines() if " --> " in ln]
    assert len(arrows) == len(set(arrows))
    assert "ready --> ready" not in arrows and "ready --> stale" in arrows
    rows = graph.transition_rows(session, values["control"])
    assert (
        "ready, waiting, running, idle",
        "stale",
        "after 90s / heartbeat_missed",
        "",
        "",
    ) in rows
    assert (
        "stale",
        "restarting",
        "after 15s / replace",
        "budget wrapper_restarts",
        "fail_connection_lost",
    ) in rows
    assert ("ready, waiting, running, idle", graph.STAYS, "heartbeat", "", "") in rows
    assert (
        "| `ready, waiting, running, idle` | `stale` | `after 90s / heartbeat_missed` |  |  |"
        in page
    )
    # Every labelled arrow of the full figure is some row's (source among its from, same to).
    for edge in graph.edges(session, values["control"]):
        dest = graph.STAYS if edge.dest == edge.source else edge.dest
        assert any(edge.source in r[0].split(", ") and r[1] == dest for r in rows), edge


MERMAID = ROOT / ".venv" / "mermaid" / "node_modules" / "mermaid" / "dist" / "mermaid.min.js"
PAGE_WIDTH = 1000
"""Pixels a figure may take on a GitHub page (its column is about 1,000 px wide at most)."""
RENDER = """<!doctype html><html><body><pre id="out">pending</pre><div id="work"></div>
<script src="%s"></script><script>
const figures = %s;
mermaid.initialize({startOnLoad: false, securityLevel: "strict"});
(async () => {
  const found = {};
  let n = 0;
  for (const [name, text] of Object.entries(figures)) {
    try {
      const {svg} = await mermaid.render("figure" + n++, text);
      const box = document.getElementById("work");
      box.innerHTML = svg;
      const width = box.querySelector("svg").viewBox.baseVal.width;
      found[name] = {width: width, literal_br: svg.includes("&lt;br")};
    } catch (e) { found[name] = {error: String(e)}; }
  }
  document.getElementById("out").textContent = "RESULT" + JSON.stringify(found);
})();
</script></body></html>"""


def test_every_mermaid_figure_renders_as_github_would_and_the_page_fits_its_width(
    tmp_path: Path,
) -> None:
    """Mermaid 11 in headless Chromium, as GitHub renders ```mermaid: no figure may fail to parse
    or show a literal ``<br/>``, and the page's figures must fit a page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed: scripts/setup-chromium.sh (just setup) installs it")
    if not MERMAID.is_file():
        pytest.skip("mermaid not installed: scripts/setup-mermaid.sh (just setup) installs it")
    page = (ROOT / "diagrams" / "README.md").read_text(encoding="utf-8")
    figures = {
        f"README.md {name}": text
        for name, text in re.findall(r"## `(\w+)`.*?```mermaid\n(.*?)```", page, re.S)
    }
    assert len(figures) == len(catalog.ALL)
    figures |= {p.name: p.read_text() for p in sorted((ROOT / "diagrams").glob("*.mmd"))}
    document = tmp_path / "render.html"
    document.write_text(RENDER % (MERMAID.as_uri(), json.dumps(figures)), encoding="utf-8")
    dom = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",  # the tests run as root in CI, where Chromium's sandbox refuses
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            "--virtual-time-budget=60000",
            "--dump-dom",
            document.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    found = re.search(r"RESULT(\{[^<]*)", dom)
    assert found is not None, dom[-2000:]
    results = json.loads(html.unescape(found.group(1)))
    assert set(results) == set(figures)
    for name, result in results.items():
        assert "error" not in result, (name, result)
        assert not result["literal_br"], name
        if name.startswith("README.md"):
            assert result["width"] <= PAGE_WIDTH, (name, result["width"])
