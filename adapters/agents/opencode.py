"""Upstream OpenCode's declaration on the agent port: served by the same client and process
owner as Kilo (``adapters.kilo``), since Kilo forked its HTTP/SSE API. Measured on 1.18.33."""

from __future__ import annotations

from adapters.agents.base import AgentSpec

OPENCODE = AgentSpec(
    name="opencode",
    title="OpenCode",
    version="1.18.33",
    package="opencode-linux-x64",
    install_dir=".opencode",
    binary="opencode",
    bin_env="FSM_AGENT_OPENCODE_BIN",
    env_prefix="OPENCODE_",
    username="opencode",
    password_env="OPENCODE_SERVER_PASSWORD",
    username_env="OPENCODE_SERVER_USERNAME",
    config_env="OPENCODE_CONFIG_CONTENT",
    parent_pid_env=None,
    quiet_env={
        "OPENCODE_DISABLE_MODELS_FETCH": "1",
        "OPENCODE_DISABLE_AUTOUPDATE": "1",
        "OPENCODE_DISABLE_SHARE": "1",
        "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
        # Its missing routes then answer 500 instead of 200 with the web UI's HTML.
        "OPENCODE_DISABLE_EMBEDDED_WEB_UI": "1",
    },
    serve_error=(b"EADDRINUSE", b"ServeError", b"address already in use"),
    dialect="idle",
    capabilities=frozenset(),
    stop_grace=2.0,
    log_stem="opencode",
)
