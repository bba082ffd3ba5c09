"""Kilo starts from an allow-listed environment, never the wrapper's own (issue 12, point 6).

Kilo runs the agent's tools, so whatever is in its environment the agent can read. The wrapper's
token (``FSM_AGENT_TOKEN``) and anything else of the parent's that was not listed must be absent
from ``/proc/<kilo>/environ`` and from a tool's ``env``; the names listed in ``pass_env`` and
Kilo's own password are there.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from adapters.kilo.process import build_env, start_agent
from tests.fakes.fake_llm import FakeLLM

SECRET = "wrapper-token-7c1e-must-not-leak"
UNLISTED = "operator-secret-2b9d-not-listed"


def parent_env() -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/someone",
        "USER": "someone",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "TMPDIR": "/tmp",
        "FSM_AGENT_TOKEN": SECRET,
        "FSM_AGENT_API_KEY": SECRET,
        "AWS_SECRET_ACCESS_KEY": UNLISTED,
        "OPENAI_API_KEY": "sk-listed",
        "KILO_SESSION_RETRY_LIMIT": "1",
        "KILO_SERVER_PASSWORD": "inherited-must-be-overridden",
        "XDG_CONFIG_HOME": "/home/someone/.config",
        "PYTHONPATH": "/somewhere",
    }


def test_build_env_keeps_the_allow_list_the_listed_names_and_what_we_set(
    tmp_path: Path,
) -> None:
    env = build_env(parent_env(), tmp_path, "pw", {"model": "a/b"}, pass_env=["OPENAI_API_KEY"])
    assert SECRET not in env.values()
    assert UNLISTED not in env.values()
    assert not [name for name in env if name.startswith("FSM_AGENT_")]
    assert "PYTHONPATH" not in env  # not on the allow-list, not listed
    assert env["OPENAI_API_KEY"] == "sk-listed"  # listed by the operator
    for name in ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"):
        assert env[name] == parent_env()[name]
    assert env["KILO_SESSION_RETRY_LIMIT"] == "1"  # Kilo's own knob, meant for it
    assert env["KILO_SERVER_PASSWORD"] == "pw"  # ours, not the inherited one
    assert env["KILO_PARENT_PID"] == str(os.getpid())
    assert env["XDG_CONFIG_HOME"] == str(tmp_path / "xdg" / "config")  # ours, in the state dir


def test_build_env_never_passes_the_wrappers_own_even_when_listed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FSM_AGENT_TOKEN is the wrapper's own"):
        build_env(parent_env(), tmp_path, "pw", {}, pass_env=["FSM_AGENT_TOKEN"])
    # A listed name that is not set is simply absent (Kilo reports its {env:NAME} itself).
    assert "MISSING" not in build_env(parent_env(), tmp_path, "pw", {}, pass_env=["MISSING"])


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(
        item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.kilo
@pytest.mark.anyio
async def test_real_kilo_and_its_tools_hold_no_secret_of_the_parent(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    parent = {
        **os.environ,
        "FSM_AGENT_TOKEN": SECRET,
        "AWS_SECRET_ACCESS_KEY": UNLISTED,
        "PROVIDER_KEY": "listed-provider-key",
    }
    server = await start_agent(
        workdir=work,
        state_dir=tmp_path / "state",
        config=fake_llm.provider_config(),
        agent_bin=None,
        startup_timeout=60,
        env=parent,
        pass_env=["PROVIDER_KEY"],
    )
    try:
        kilo_env = environ_of(server.pid)
        assert SECRET not in kilo_env.values() and "FSM_AGENT_TOKEN" not in kilo_env
        assert UNLISTED not in kilo_env.values()
        assert kilo_env["PROVIDER_KEY"] == "listed-provider-key"
        assert kilo_env["KILO_SERVER_PASSWORD"] == server.password  # Kilo's own business
        # A tool Kilo runs (its shell endpoint runs the bash tool without a model turn).
        async with httpx.AsyncClient(base_url=server.url, auth=server.auth, timeout=60) as http:
            session = (await http.post("/session", json={})).json()
            response = await http.post(
                f"/session/{session['id']}/shell", json={"agent": "code", "command": "env"}
            )
            assert response.status_code == 200, response.text
        outputs = [
            part["state"]["output"]
            for part in response.json()["parts"]
            if part.get("type") == "tool" and part["state"].get("status") == "completed"
        ]
        assert outputs and "PROVIDER_KEY=listed-provider-key" in outputs[0]
        assert SECRET not in outputs[0] and UNLISTED not in outputs[0]
        assert "FSM_AGENT_" not in outputs[0]
    finally:
        await server.stop(5.0)
