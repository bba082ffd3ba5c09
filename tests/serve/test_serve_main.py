"""``fsm-agent serve``'s command line: the non-loopback warning, ``[kilo] pass_env``, and Kilo's
state kept out of the workspace by default (issue 12). The host itself is a stub here: what is
checked is what ``run_serve`` hands it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import fsm.serve.launch
import fsm.serve.main
from fsm.cli.app import app
from fsm.serve.main import default_state_dir
from fsm.serve.settings import ServeSettings
from fsm.settings.listen import is_loopback

WARNING = "without TLS: put a TLS-terminating proxy in front"


class StubHost:
    """Stands in for the launcher (``fsm.serve.launch.run_wrapper``: Kilo, then the host)."""

    seen: list[ServeSettings] = []

    @staticmethod
    async def run(settings: ServeSettings, values: Any, log: Any) -> int:
        StubHost.seen.append(settings)
        return 0


@pytest.fixture
def serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Any:  # a function running the CLI, returning (exit code, stderr, settings)
    monkeypatch.setattr(fsm.serve.launch, "run_wrapper", StubHost.run)
    monkeypatch.setattr(fsm.serve.main, "make_undumpable", lambda: True)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    StubHost.seen = []
    workdir = tmp_path / "workspace"
    workdir.mkdir()

    def run(*args: str, config: str | None = None) -> tuple[int, str, ServeSettings | None]:
        extra = []
        if config is not None:
            (tmp_path / "fsm-agent.toml").write_text(config)
            extra.append(f"--config={tmp_path / 'fsm-agent.toml'}")
        result = CliRunner().invoke(
            app,
            [
                "serve",
                "--agent-session=a",
                "--user-id=u",
                "--session-id=sess-9",
                "--ingest-url=ws://127.0.0.1:9/ingest/sess-9",
                f"--workdir={workdir}",
                *extra,
                *args,
            ],
            env={"FSM_AGENT_TOKEN": "tok"},
        )
        return result.exit_code, result.output, StubHost.seen[-1] if StubHost.seen else None

    return run


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_warns_once_when_listening_beyond_loopback(serve: Any) -> None:
    code, out, _ = serve("--listen=0.0.0.0:0")
    assert code == 0, out
    lines = [line for line in out.splitlines() if WARNING in line]
    assert len(lines) == 2  # the human line and the JSON log line
    assert lines[0].startswith("warning: listening on 0.0.0.0 without TLS")
    code, out, _ = serve("--listen=127.0.0.1:0")
    assert code == 0 and WARNING not in out


def test_kilo_state_defaults_outside_the_workspace(serve: Any, tmp_path: Path) -> None:
    code, out, settings = serve()
    assert code == 0, out
    assert settings is not None
    assert settings.state_dir == (tmp_path / "xdg-state" / "fsm-agent" / "sess-9").resolve()
    assert not settings.state_dir.is_relative_to(settings.workdir)
    code, out, settings = serve(f"--state-dir={tmp_path / 'workspace' / 'state'}")
    assert code == 0 and "is inside the workspace" in out


def test_default_state_dir_needs_a_session_id_that_names_a_directory() -> None:
    env = {"HOME": "/home/u"}
    assert default_state_dir("s_1", env) == Path("/home/u/.local/state/fsm-agent/s_1")
    assert default_state_dir("s_1", {**env, "XDG_STATE_HOME": "relative"}) == Path(
        "/home/u/.local/state/fsm-agent/s_1"
    )  # a relative XDG_STATE_HOME is invalid by the spec: ignored
    for bad in ("..", ".", "a/b", "x" * 200):
        with pytest.raises(ValueError, match="give --state-dir"):
            default_state_dir(bad, env)


def test_kilo_pass_env_comes_from_the_config_and_is_checked(serve: Any) -> None:
    code, out, settings = serve(config='[agent]\npass_env = ["OPENAI_API_KEY"]\n')
    assert code == 0, out
    assert settings is not None and settings.agent_pass_env == ["OPENAI_API_KEY"]
    for bad, message in (
        ('pass_env = "OPENAI_API_KEY"', "agent.pass_env must be a list"),
        ("pass_env = [1]", "agent.pass_env must be a list"),
        ('pass_env = ["NOT A NAME"]', "agent.pass_env: 'NOT A NAME' is not an environment"),
        ('pass_env = ["FSM_AGENT_TOKEN"]', "agent.pass_env: FSM_AGENT_TOKEN is the wrapper's own"),
    ):
        code, out, _ = serve(config=f"[agent]\n{bad}\n")
        assert code == 2 and message in out, out


def test_serve_refuses_a_typod_table_as_every_command_does(serve: Any) -> None:
    code, out, settings = serve(config="[timerz]\nstale_heartbeat = '90s'\n")
    assert code == 2 and settings is None
    assert "[timerz] is not a table of this file; did you mean [timers]?" in out
    assert out.strip().count("\n") == 0
