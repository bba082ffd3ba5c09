"""``[agent]`` and the older names of it an agent declares (issue 17: ``[kilo]`` keeps working).

The shared loader never spells an agent's name: ``[kilo]`` is accepted because Kilo's
``AgentSpec.config_aliases`` says so, read as ``[agent]`` (which wins key by key) with a one-line
warning, once per file. The runtimes read ``pass_env``/``config_file`` through the same fold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.agents.registry import config_aliases
from fsm.settings.config import ConfigError
from fsm.settings.file import agent_table, load_config


def test_kilo_declares_the_only_alias() -> None:
    assert config_aliases() == {"kilo": "kilo"}


def test_the_alias_is_read_as_agent_which_wins_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fsm-agent.toml"
    path.write_text(
        '[kilo]\nconfig_file = "k.json"\npass_env = ["A"]\n\n[agent]\nname = "opencode"\n'
        'pass_env = ["B"]\n'
    )
    first = load_config(path).file.agent
    again = load_config(path).file.agent
    assert first == again == {"config_file": "k.json", "pass_env": ["B"], "name": "opencode"}
    err = capsys.readouterr().err
    assert err == f"warning: {path}: [kilo] is deprecated, write [agent] (same keys)\n"


def test_agent_alone_warns_nothing_and_a_bad_alias_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "fsm-agent.toml"
    path.write_text('[agent]\npass_env = ["B"]\n')
    assert load_config(path).file.agent == {"pass_env": ["B"]}
    assert capsys.readouterr().err == ""
    with pytest.raises(ConfigError, match=r"\[kilo\] must be a table"):
        agent_table(path, {"kilo": 3})
    with pytest.raises(ConfigError, match=r"kilo\.nme is not a setting; did you mean 'name'"):
        agent_table(path, {"kilo": {"nme": "x"}})
