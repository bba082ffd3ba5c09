"""Kilo as another user (``[kilo] user``): the setting, the environment and the command line.

What it does inside a real container (Kilo's uid, its capabilities, what the agent can read) is
checked in ``tests/docker/test_image.py``; these are the parts that need no second user.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from adapters.agents.opencode import OPENCODE
from adapters.kilo.process import RunAs, build_env
from fsm.serve.settings import AGENT_CONFIG_HOME_ENV, AGENT_STATE_ENV, AGENT_USER_ENV, agent_run_as
from fsm.settings.config import ConfigError

AGENT = RunAs("agent", 10002, 10002, Path("/home/agent"), "/bin/bash")


def test_build_env_gives_kilo_its_users_login_and_state_in_its_home(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/fsm", "USER": "fsm", "FSM_AGENT_TOKEN": "t"}
    state = tmp_path / "s1"
    env = build_env(base, state, "pw", {}, run_as=AGENT)
    assert (env["HOME"], env["USER"], env["LOGNAME"], env["SHELL"]) == (
        "/home/agent",
        "agent",
        "agent",
        "/bin/bash",
    )
    assert env["XDG_DATA_HOME"] == "/home/agent/.local/state/fsm-agent/s1/xdg/data"
    volume = RunAs("agent", 10002, 10002, Path("/home/agent"), "/bin/bash", Path("/var/lib/kilo"))
    env = build_env(base, state, "pw", {}, run_as=volume)
    assert env["XDG_STATE_HOME"] == "/var/lib/kilo/s1/xdg/state"
    assert env["XDG_CONFIG_HOME"] == "/var/lib/kilo/s1/xdg/config"
    read_only = RunAs("agent", 1, 1, Path("/h"), "/bin/sh", Path("/k"), Path("/opt/kilo/config"))
    assert build_env(base, state, "pw", {}, run_as=read_only)["XDG_CONFIG_HOME"] == (
        "/opt/kilo/config"
    )
    assert "FSM_AGENT_TOKEN" not in env
    assert not state.exists(), "Kilo's user creates its own state, not the wrapper"


def test_the_command_switches_user_clears_groups_and_capabilities_and_changes_dir() -> None:
    argv = AGENT.command(["/opt/kilo/bin/kilo", "serve"], Path("/workspace"))
    assert argv[0].endswith("setpriv")
    options = argv[1 : argv.index("--")]
    assert options == [
        "--reuid=10002",
        "--regid=10002",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--no-new-privs",
    ]
    assert argv[argv.index("--") + 1 :] == [
        "env",
        "-C",
        "/workspace",
        "/opt/kilo/bin/kilo",
        "serve",
    ]


def test_kilo_user_comes_from_the_file_then_the_environment(tmp_path: Path) -> None:
    other = next((p for p in pwd.getpwall() if p.pw_uid != os.geteuid()), None)
    if other is None:
        pytest.fail("no second user in /etc/passwd")
    path = tmp_path / "fsm.toml"
    assert agent_run_as({"user": other.pw_name}, path, {}) == RunAs.lookup(other.pw_name)
    assert agent_run_as({}, path, {AGENT_USER_ENV: other.pw_name}) == RunAs.lookup(other.pw_name)
    assert agent_run_as({}, path, {}) is None
    assert agent_run_as({"user": ""}, path, {AGENT_USER_ENV: other.pw_name}) is None
    env = {AGENT_USER_ENV: other.pw_name, AGENT_STATE_ENV: "/var/lib/kilo"}
    run_as = agent_run_as({}, path, env)
    assert run_as is not None and run_as.state_root == Path("/var/lib/kilo")
    run_as = agent_run_as({"state_dir": "/srv/k"}, path, env)
    assert run_as is not None and run_as.state_root == Path("/srv/k")
    run_as = agent_run_as({}, path, {**env, AGENT_CONFIG_HOME_ENV: "/opt/kilo/config"})
    assert run_as is not None and run_as.config_home == Path("/opt/kilo/config")
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert agent_run_as({"user": me}, path, {}) is None, "our own user: nothing to switch"


def test_kilos_older_variable_names_are_still_read_and_named(tmp_path: Path) -> None:
    """Images built before issue 17 set ``FSM_AGENT_KILO_*``: Kilo's spec declares them as the
    older names of ``FSM_AGENT_AGENT_*``, read when the new one is unset; OpenCode has none."""
    other = next((p for p in pwd.getpwall() if p.pw_uid != os.geteuid()), None)
    if other is None:
        pytest.fail("no second user in /etc/passwd")
    path = tmp_path / "fsm.toml"
    older = {
        "FSM_AGENT_KILO_USER": other.pw_name,
        "FSM_AGENT_KILO_STATE_DIR": "/var/lib/kilo",
        "FSM_AGENT_KILO_CONFIG_HOME": "/opt/kilo/config",
    }
    run_as = agent_run_as({}, path, older)
    assert run_as is not None and run_as.user == other.pw_name
    assert (run_as.state_root, run_as.config_home) == (
        Path("/var/lib/kilo"),
        Path("/opt/kilo/config"),
    )
    assert agent_run_as({}, path, {**older, AGENT_USER_ENV: ""}) is None, "the new name wins"
    assert agent_run_as({}, path, older, spec=OPENCODE) is None
    with pytest.raises(ConfigError, match=r"^FSM_AGENT_KILO_USER: kilo user 'ghost'"):
        agent_run_as({}, path, {"FSM_AGENT_KILO_USER": "ghost"})


def test_an_unknown_kilo_user_is_an_error_naming_where_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "fsm.toml"
    with pytest.raises(ConfigError, match=r"fsm.toml: agent.user: kilo user 'nobody-here'"):
        agent_run_as({"user": "nobody-here"}, path, {})
    with pytest.raises(ConfigError, match=f"^{AGENT_USER_ENV}: kilo user 'ghost'"):
        agent_run_as({}, path, {AGENT_USER_ENV: "ghost"})
    with pytest.raises(ConfigError, match="must be a user name"):
        agent_run_as({"user": 3}, path, {})
    with pytest.raises(ConfigError, match=r"agent.state_dir must be an absolute path"):
        agent_run_as({"user": "root", "state_dir": "rel"}, path, {})
    with pytest.raises(ConfigError, match=f"^{AGENT_CONFIG_HOME_ENV} must be an absolute path"):
        agent_run_as({"user": "root"}, path, {AGENT_CONFIG_HOME_ENV: "x"})


def test_missing_capabilities_are_named() -> None:
    missing = AGENT.missing_capabilities()
    if os.geteuid() == 0:
        assert missing == []
    else:
        assert set(missing) <= {"setuid", "setgid", "kill"}
