"""Settings of ``fsm-agent serve``: identity from flags, everything else from one TOML file.

Identity (``--agent-session``, ``--user-id``, ``--session-id``) is fixed for the life of the
process; per-execution settings arrive with each prompt. The config file holds timer overrides
(``[timers]``), the outbox bounds (``[outbox]``) and the agent's own configuration
(``[agent.config]``, passed verbatim in the agent's config variable, ``AgentSpec.config_env``:
providers, models, permissions), plus ``[agent] pass_env = [...]``: the only variables of the
wrapper's environment the agent gets beyond its allow-list (``adapters/kilo/process.py``), for
keys its config names with ``{env:NAME}``. ``[agent] user = "agent"`` (or
``FSM_AGENT_AGENT_USER``) runs the agent and its tools as that user instead of the wrapper's own
(``agent_run_as``), with the agent's state under ``[agent] state_dir`` (or
``FSM_AGENT_AGENT_STATE_DIR``) and its config home, read-only to that user, at ``[agent]
config_home`` (or ``FSM_AGENT_AGENT_CONFIG_HOME``). An agent may declare older names for these
variables (``AgentSpec.env_aliases``: the wrapper image sets Kilo's), read when these are unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from adapters.agents.base import AgentSpec
from adapters.agents.registry import DEFAULT_AGENT, agent_spec
from adapters.kilo.process import RunAs
from fsm.settings.config import ConfigError
from fsm.settings.limits import LimitValues, defaults


class ServeSettings(msgspec.Struct, kw_only=True):
    agent_session: str
    user_id: str
    session_id: str
    ingest_url: str
    token: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    workdir: Path
    state_dir: Path
    agent: str = DEFAULT_AGENT
    """Which agent server (``--agent``, ``[agent] name``): a key of ``agents.registry.AGENTS``."""
    agent_bin: str | None = None
    """The agent's binary (``--agent-bin``, or an alias its spec declares)."""
    agent_config: dict[str, Any] = msgspec.field(default_factory=dict)
    agent_pass_env: list[str] = []
    """Names of variables handed to the agent from our environment (``[agent] pass_env``); the
    caller of ``start_agent`` passes them as ``pass_env``. The agent and its tools can read them."""
    agent_run_as: RunAs | None = None
    """The user the agent and its tools run as (``[agent] user``, else ``AGENT_USER_ENV``); None:
    ours."""
    outbox_frames: int = 1000
    outbox_bytes: int = 8 * 1024 * 1024
    flush_bound: float = 3.0
    version: str | None = None
    wrapper_id: str | None = None
    limits: LimitValues = msgspec.field(default_factory=defaults)


AGENT_USER_ENV = "FSM_AGENT_AGENT_USER"
"""The agent's user when the config file names none (a container image sets it to ``agent``)."""
AGENT_CONFIG_HOME_ENV = "FSM_AGENT_AGENT_CONFIG_HOME"
"""The agent's config home when the config file does not say (``RunAs.config_home``): the image
sets one that is root's and empty, which the agent reads but cannot write."""
AGENT_STATE_ENV = "FSM_AGENT_AGENT_STATE_DIR"
"""Where that user keeps the agent's state when the config file does not say: the image sets a
directory of that user's (0700), the mount point for a volume that outlives containers."""


def agent_run_as(
    section: dict[str, Any],
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    spec: AgentSpec | None = None,
) -> RunAs | None:
    """``[agent] user``, else ``FSM_AGENT_AGENT_USER``, as a passwd entry, with ``[agent]
    state_dir`` and ``config_home`` (else ``FSM_AGENT_AGENT_STATE_DIR``,
    ``FSM_AGENT_AGENT_CONFIG_HOME``; each variable also under the older name ``spec`` declares,
    default the default agent's); None when no user is set, it is empty or our own uid (nothing to
    switch). ConfigError naming the key when the user does not exist or a path is not absolute."""
    env = os.environ if environ is None else environ
    agent = spec or agent_spec(None)
    user = section.get("user")
    where = f"{path}: agent.user"
    if user is None:
        where = agent.env_name(AGENT_USER_ENV, env)
        user = env.get(where, "")
    if not isinstance(user, str):
        raise ConfigError(f"{where} must be a user name")
    if not user:
        return None
    paths: list[Path | None] = []
    for key, variable in (("state_dir", AGENT_STATE_ENV), ("config_home", AGENT_CONFIG_HOME_ENV)):
        value = section.get(key)
        named = f"{path}: agent.{key}"
        if value is None:
            named = agent.env_name(variable, env)
            value = env.get(named) or None
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value)):
            raise ConfigError(f"{named} must be an absolute path, got {value!r}")
        paths.append(Path(value) if value else None)
    try:
        run_as = RunAs.lookup(user, *paths)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return None if run_as.uid == os.geteuid() else run_as
