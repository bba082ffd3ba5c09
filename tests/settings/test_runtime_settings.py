"""The ``[runtime]`` table: sizes and limits parsed, every bad value an error naming its key, and
the command line exits 2 saying so (or naming the daemon's missing socket)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsm.cli.app import app
from fsm.settings.config import ConfigError
from fsm.settings.file import load_file
from fsm.settings.runtime import SETTINGS, RuntimeSettings, resolve, runtime_settings


def test_defaults_and_overrides() -> None:
    assert resolve() == RuntimeSettings()
    got = resolve(
        {
            "image": "fsm-agent-wrapper:abc",
            "memory": "512m",
            "cpus": 1,
            "pids": 256,
            "network": "none",
            "volumes": ["/srv/cache:/cache:ro"],
            "socket": "/run/podman/podman.sock",
            "user": "10001:10001",
        }
    )
    assert got.memory == 512 * 1024**2 and got.cpus == 1.0 and got.pids == 256
    assert got.volumes == ("/srv/cache:/cache:ro",) and str(got.socket).endswith("podman.sock")
    assert resolve({"memory": 64 * 1024**2}).memory == 64 * 1024**2
    assert resolve({"memory": "2G"}).memory == 2 * 1024**3
    assert [s.key for s in SETTINGS] == [
        "image",
        "memory",
        "cpus",
        "pids",
        "network",
        "volumes",
        "socket",
        "user",
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"memroy": "1g"}, "runtime.memroy is not a runtime setting; did you mean 'memory'?"),
        ({"memory": "lots"}, "runtime.memory must be a size"),
        ({"memory": "1m"}, "runtime.memory must be at least 6m"),
        ({"memory": True}, "runtime.memory must be a size"),
        ({"cpus": 0}, "runtime.cpus must be a number of CPUs"),
        ({"pids": 2}, "runtime.pids must be an integer between 16"),
        ({"network": ""}, "runtime.network must be a network mode"),
        ({"volumes": "/a:/b"}, "runtime.volumes must be a list"),
        ({"volumes": ["relative:/b"]}, "runtime.volumes each entry must be"),
        ({"volumes": ["/a:/b:rx"]}, "runtime.volumes each entry must be"),
        ({"socket": "docker.sock"}, "runtime.socket must be the absolute path"),
        ({"user": "fsm"}, "runtime.user must be a numeric"),
        ({"image": "-bad"}, "runtime.image must be an image reference"),
    ],
)
def test_a_bad_value_names_its_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("?", r"\?")):
        resolve(table)


def test_the_file_is_read_and_shared_with_the_wrapper(tmp_path: Path) -> None:
    config = tmp_path / "fsm-agent.toml"
    config.write_text('[runtime]\nmemory = "1g"\nnetwork = "host"\n')
    assert runtime_settings(config).memory == 1024**3
    load_file(config)  # the wrapper reads the same file and accepts the table
    config.write_text("runtime = 3\n")
    with pytest.raises(ConfigError, match=r"\[runtime\] must be a table"):
        runtime_settings(config)


def test_the_command_line_exits_2_naming_the_key_or_the_socket(tmp_path: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("key")
    key.chmod(0o600)
    dirs = ["--api-key-file", str(key), "--state-dir", str(tmp_path / "state")]
    dirs += ["--workspaces", str(tmp_path / "ws")]
    bad = tmp_path / "bad.toml"
    bad.write_text("[runtime]\ncpus = -1\n")
    result = CliRunner().invoke(
        app, ["control", "--runtime", "docker", "--config", str(bad), *dirs]
    )
    assert result.exit_code == 2 and "runtime.cpus must be" in result.output
    missing = tmp_path / "nobody.sock"
    config = tmp_path / "ok.toml"
    config.write_text(f'[runtime]\nsocket = "{missing}"\nimage = "x:1"\n')
    result = CliRunner().invoke(
        app, ["control", "--runtime", "docker", "--config", str(config), *dirs]
    )
    assert result.exit_code == 2 and f"no Docker daemon: {missing} does not exist" in result.output
    result = CliRunner().invoke(app, ["control", "--image", "x:1", *dirs])
    assert result.exit_code == 2 and "--image is for --runtime docker" in result.output
