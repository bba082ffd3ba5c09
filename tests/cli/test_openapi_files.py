"""The committed OpenAPI documents are the rendering of the API declarations, and the limits
command shows the bounds in force."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from fsm.cli.app import app
from tests.paths import ROOT

runner = CliRunner()


def test_committed_openapi_documents_match_the_code() -> None:
    result = runner.invoke(app, ["openapi", "--check", "--out", str(ROOT / "docs" / "openapi")])
    assert result.exit_code == 0, result.output


def test_a_changed_limit_without_regenerating_fails_the_check(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "docs" / "openapi", tmp_path / "openapi")
    config = tmp_path / "fsm.toml"
    config.write_text("[limits]\nprompt_chars = 1000\n")
    args = ["openapi", "--out", str(tmp_path / "openapi"), "--config", str(config)]
    assert runner.invoke(app, [*args, "--check"]).exit_code == 1
    assert runner.invoke(app, args).exit_code == 0
    document = json.loads((tmp_path / "openapi" / "control.json").read_text())
    prompt = document["components"]["schemas"]["PromptBody"]["properties"]["prompt"]
    assert prompt["maxLength"] == 1000


def test_every_operation_declares_its_errors_and_a_json_body_for_them() -> None:
    for name in ("control.json", "wrapper.json"):
        document = json.loads((ROOT / "docs" / "openapi" / name).read_text())
        for path, item in document["paths"].items():
            for method, operation in item.items():
                answers = operation["responses"]
                assert "400" in answers, (name, method, path)
                if operation["security"]:
                    assert "401" in answers, (name, method, path)
                if "requestBody" in operation:
                    assert "413" in answers, (name, method, path)


def test_limits_shows_effective_values_and_defaults(tmp_path: Path) -> None:
    config = tmp_path / "fsm.toml"
    config.write_text("[limits]\nbody_bytes = 2097152\n")
    result = runner.invoke(app, ["limits", "--config", str(config)])
    assert result.exit_code == 0, result.output
    line = next(li for li in result.output.splitlines() if "body_bytes" in li)
    assert "2 MiB (default 1 MiB)" in line


def test_a_bad_limit_is_an_error_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "fsm.toml"
    for text, needle in (
        ("[limits]\nbody_byte = 10\n", "did you mean 'body_bytes'"),
        ("[limits]\nbody_bytes = -1\n", "positive integer"),
        ("[limits]\nbody_bytes = '1MB'\n", "positive integer"),
    ):
        config.write_text(text)
        result = runner.invoke(app, ["limits", "--config", str(config)])
        assert result.exit_code == 2 and needle in result.output, result.output
