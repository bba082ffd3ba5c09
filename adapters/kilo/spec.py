"""Kilo's declaration on the agent port (``adapters.agents.base.AgentSpec``): every name Kilo
reads or that an older Kilo-only fsm-agent used, kept here so the shared code never spells one.

Measured on Kilo 7.7.9. The compatibility it carries is what a user relies on: the config file's
``[kilo]`` table (now ``[agent]``), the ``--kilo-bin`` flag (now ``--agent-bin``) and the
``FSM_AGENT_KILO_*`` variables the wrapper image sets (now ``FSM_AGENT_AGENT_*``).
"""

from __future__ import annotations

from adapters.agents.base import COMMIT_MESSAGE, NETWORK_REPLY, AgentSpec

KILO = AgentSpec(
    name="kilo",
    title="Kilo",
    version="7.7.9",
    package="@kilocode/cli-linux-x64",
    install_dir=".kilo",
    binary="kilo",
    bin_env="FSM_AGENT_KILO_BIN",
    env_prefix="KILO_",
    username="kilo",
    password_env="KILO_SERVER_PASSWORD",
    username_env="KILO_SERVER_USERNAME",
    config_env="KILO_CONFIG_CONTENT",
    parent_pid_env="KILO_PARENT_PID",
    # Measured: start-up 0.5 s faster and SIGTERM exit in 0.5 s instead of 2.6 s (offline the
    # telemetry flush times out). Nothing here is needed by a headless wrapper.
    quiet_env={
        "KILO_DISABLE_MODELS_FETCH": "1",
        "KILO_DISABLE_AUTOUPDATE": "1",
        "KILO_TELEMETRY_LEVEL": "off",
    },
    serve_error=(b"ServeError",),
    dialect="brackets",
    capabilities=frozenset({COMMIT_MESSAGE, NETWORK_REPLY}),
    log_stem="kilo",
    config_aliases=("kilo",),
    flag_aliases=("--kilo-bin",),
    env_aliases={
        "FSM_AGENT_AGENT_USER": "FSM_AGENT_KILO_USER",
        "FSM_AGENT_AGENT_STATE_DIR": "FSM_AGENT_KILO_STATE_DIR",
        "FSM_AGENT_AGENT_CONFIG_HOME": "FSM_AGENT_KILO_CONFIG_HOME",
    },
)
