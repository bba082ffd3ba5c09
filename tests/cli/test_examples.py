"""Every file under ``examples/`` is loaded the way its user loads it, so none rots (issue 18):
the TOML files through the one strict loader and the CLI, the Kilo configuration by a real Kilo
that must accept it and report the provider back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from adapters.kilo.process import start_agent
from fsm.cli.app import app
from fsm.serve.main import agent_config, agent_pass_env
from fsm.settings.file import load_config
from tests.paths import ROOT

EXAMPLES = ROOT / "examples"
CONFIGS = [EXAMPLES / "control.toml", EXAMPLES / "docker" / "fsm-agent.toml"]
KILO_CONFIG = EXAMPLES / "kilo-openai.json"
RUN_SH = EXAMPLES / "docker" / "run.sh"


def test_every_example_is_covered_here() -> None:
    files = {p for p in EXAMPLES.rglob("*") if p.is_file()}
    assert files == {*CONFIGS, KILO_CONFIG, RUN_SH}, "a new example needs a test in this file"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_each_config_loads_strictly_and_every_command_accepts_it(path: Path) -> None:
    config = load_config(path)
    assert config.timers["control"].overridden() or config.timers["wrapper"].overridden()
    # Its Kilo configuration resolves (relative to the file) to the example provider config,
    # and the provider's key is the one variable passed to Kilo.
    kilo = agent_config(config.file.agent, path)
    assert kilo == json.loads(KILO_CONFIG.read_text())
    assert agent_pass_env(config.file.agent, path) == _key_variables(kilo)
    for command in ("timers", "limits"):
        result = CliRunner().invoke(app, [command, f"--config={path}"])
        assert result.exit_code == 0, result.output


def test_the_docker_example_sets_the_runtime_table() -> None:
    runtime = load_config(EXAMPLES / "docker" / "fsm-agent.toml").runtime
    assert (runtime.memory, runtime.cpus, runtime.network) == (2 * 1024**3, 2.0, "host")


def test_the_docker_script_runs_control_with_the_docker_runtime_and_its_config(
    tmp_path: Path,
) -> None:
    # The real script, with a stand-in fsm-agent that prints what it was given: the flags, a key
    # file of mode 0600 and no secret on the command line.
    root = tmp_path / "repo"
    (root / "examples" / "docker").mkdir(parents=True)
    script = root / "examples" / "docker" / "run.sh"
    script.write_text(RUN_SH.read_text())
    script.chmod(0o755)
    (root / "examples" / "docker" / "fsm-agent.toml").write_text("")
    (root / ".venv" / "bin").mkdir(parents=True)
    stand_in = root / ".venv" / "bin" / "fsm-agent"
    stand_in.write_text(f"#!{sys.executable}\nimport json, sys; print(json.dumps(sys.argv[1:]))\n")
    stand_in.chmod(0o755)
    done = subprocess.run(
        ["sh", str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"]},
    )
    assert done.returncode == 0, done.stderr
    args = json.loads(done.stdout)
    key = root / "key.txt"
    assert args == [
        "control",
        "--listen",
        "127.0.0.1:8700",
        "--api-key-file",
        str(key),
        "--runtime",
        "docker",
        "--config",
        str(root / "examples" / "docker" / "fsm-agent.toml"),
    ]
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) >= 32


def _key_variables(kilo: dict[str, Any]) -> list[str]:
    return sorted(set(re.findall(r"\{env:([A-Za-z_][A-Za-z0-9_]*)\}", json.dumps(kilo))))


@pytest.mark.kilo
@pytest.mark.anyio
async def test_a_real_kilo_accepts_the_provider_config(
    kilo_available: None, tmp_path: Path
) -> None:
    """Kilo reads the example as its configuration and reports the provider, the model and the
    key from the environment back (no request reaches the provider: nothing is prompted)."""
    kilo = json.loads(KILO_CONFIG.read_text())
    server = await start_agent(
        workdir=tmp_path,
        state_dir=tmp_path / "state",
        config=kilo,
        agent_bin=None,
        startup_timeout=60,
        env={**os.environ, "OPENAI_API_KEY": "sk-example"},
        pass_env=["OPENAI_API_KEY"],
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, auth=server.auth, timeout=30) as http:
            seen = (await http.get("/config")).json()
    finally:
        await server.stop(5)
    assert seen["model"] == kilo["model"]
    provider = seen["provider"]["llm"]
    assert provider["options"]["baseURL"] == "https://api.openai.com/v1"
    assert provider["options"]["apiKey"] == "sk-example"  # {env:OPENAI_API_KEY} was resolved


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
