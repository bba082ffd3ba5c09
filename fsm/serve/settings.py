"""Settings of ``fsm-agent serve``: identity from flags, everything else from one TOML file.

Identity (``--agent-session``, ``--user-id``, ``--session-id``) is fixed for the life of the
process; per-execution settings arrive with each prompt. The config file holds timer overrides
(``[timers]``), the outbox bounds (``[outbox]``) and Kilo's own configuration (``[kilo.config]``,
passed verbatim as ``KILO_CONFIG_CONTENT``: providers, models, permissions), plus
``[kilo] pass_env = [...]``: the only variables of the wrapper's environment Kilo gets beyond its
allow-list (``adapters/kilo/process.py``), for keys its config names with ``{env:NAME}``.
``[kilo] user = "agent"`` (or ``FSM_AGENT_KILO_USER``, which the container image sets) runs Kilo
and its tools as that user instead of the wrapper's own (``kilo_run_as``), with Kilo's state under
``[kilo] state_dir`` (or ``FSM_AGENT_KILO_STATE_DIR``; the image's ``/var/lib/kilo``) and its
config home, read-only to that user, at ``[kilo] config_home`` (or ``FSM_AGENT_KILO_CONFIG_HOME``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

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
    agent: str = "kilo"
    """Which agent server (``--agent``, ``[agent] name``): a key of ``agents.base.AGENTS``."""
    kilo_bin: str | None = None
    """The agent's binary (``--agent-bin``, alias ``--kilo-bin``), whichever agent it is."""
    kilo_config: dict[str, Any] = msgspec.field(default_factory=dict)
    kilo_pass_env: list[str] = []
    """Names of variables handed to Kilo from our environment (``[kilo] pass_env``); the caller
    of ``start_kilo`` passes them as ``pass_env``. Kilo and every tool it runs can read them."""
    kilo_run_as: RunAs | None = None
    """The user Kilo and its tools run as (``[kilo] user``, else ``KILO_USER_ENV``); None: ours."""
    outbox_frames: int = 1000
    outbox_bytes: int = 8 * 1024 * 1024
    flush_bound: float = 3.0
    version: str | None = None
    wrapper_id: str | None = None
    limits: LimitValues = msgspec.field(default_factory=defaults)


def agent_section(file_kilo: dict[str, Any], file_agent: dict[str, Any]) -> dict[str, Any]:
    """The agent's settings: ``[kilo]`` (the older name, kept as an alias) under ``[agent]``."""
    return {**file_kilo, **file_agent}


KILO_USER_ENV = "FSM_AGENT_KILO_USER"
"""Kilo's user when the config file names none: the image sets it to ``agent``."""
KILO_CONFIG_HOME_ENV = "FSM_AGENT_KILO_CONFIG_HOME"
"""Kilo's config home when the config file does not say (``RunAs.config_home``): the image sets
``/opt/kilo/config``, root's and empty, which Kilo reads but the agent cannot write."""
KILO_STATE_ENV = "FSM_AGENT_KILO_STATE_DIR"
"""Where that user keeps Kilo's state when the config file does not say: the image sets it to
``/var/lib/kilo`` (that user's, 0700), the mount point for a volume that outlives containers."""


def kilo_run_as(
    section: dict[str, Any], path: Path | None, environ: dict[str, str] | None = None
) -> RunAs | None:
    """``[kilo] user``, else ``FSM_AGENT_KILO_USER``, as a passwd entry, with ``[kilo] state_dir``
    and ``config_home`` (else ``FSM_AGENT_KILO_STATE_DIR``, ``FSM_AGENT_KILO_CONFIG_HOME``); None
    when no user is set, it is empty or our own uid (nothing to switch). ConfigError naming the
    key when the user does not exist or a path is not absolute."""
    env = os.environ if environ is None else environ
    user = section.get("user")
    where = f"{path}: kilo.user"
    if user is None:
        user = env.get(KILO_USER_ENV, "")
        where = KILO_USER_ENV
    if not isinstance(user, str):
        raise ConfigError(f"{where} must be a user name")
    if not user:
        return None
    paths: list[Path | None] = []
    for key, variable in (("state_dir", KILO_STATE_ENV), ("config_home", KILO_CONFIG_HOME_ENV)):
        value = section.get(key)
        named = f"{path}: kilo.{key}"
        if value is None:
            value, named = env.get(variable) or None, variable
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value)):
            raise ConfigError(f"{named} must be an absolute path, got {value!r}")
        paths.append(Path(value) if value else None)
    try:
        run_as = RunAs.lookup(user, *paths)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return None if run_as.uid == os.geteuid() else run_as
