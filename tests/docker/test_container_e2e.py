"""Issue 14, end to end: the control plane runs each session's wrapper as a real container.

Real dockerd, the wrapper image (``just image``; built once, cached by content hash), real Kilo
inside, the fake model on this host's loopback (``--network host``: the containers share the
host's loopback, and nothing here touches a bridge network's addresses). Each test drives
``fsm-agent control --runtime docker`` through its client API, and looks at the containers with
the ``docker`` command, as an operator would.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.runtime.docker import LABEL_SESSION
from adapters.runtime.image import ensure_image
from tests.docker_support import docker_daemon
from tests.fakes.control_process import Control, running_control, wait_for
from tests.fakes.fake_llm import FakeLLM

__all__ = ["docker_daemon"]

pytestmark = pytest.mark.kilo

FAST = {
    "ingest_heartbeat": "1s",
    "ingest_backoff_initial": "100ms",
    "ingest_backoff_max": "500ms",
    "agent_stop_grace": "1s",
    "wrapper_backoff_initial": "100ms",
    "wrapper_backoff_max": "500ms",
    "wrapper_stop_grace": "10s",
    # A paused container sends nothing: stale after 4 s, replaced 2 s later.
    "stale_heartbeat": "4s",
    "stale_grace": "2s",
}


@pytest.fixture(scope="module")
def image(docker_daemon: Path) -> str:
    return ensure_image()


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def containers(sid: str, *, running_only: bool = True) -> list[str]:
    flags = [] if running_only else ["-a"]
    out = docker("ps", *flags, "-q", "--no-trunc", "--filter", f"label={LABEL_SESSION}={sid}")
    return out.split()


def one_container(sid: str) -> str:
    ids: list[str] = wait_for(
        f"one running container of {sid}",
        lambda: (found := containers(sid)) and len(found) == 1 and found,
        60,
    )
    return ids[0]


@pytest.fixture
def control(tmp_path: Path, fake_llm: FakeLLM, image: str) -> Iterator[Control]:
    extra = ["--runtime", "docker", "--image", image]
    sessions: list[str] = []
    with running_control(tmp_path, fake_llm.provider_config(), FAST, extra_args=extra) as c:
        yield c
        sessions = [s["id"] for s in c.http.get("/sessions").json()]
    # After the control plane is gone (containers outlive it by design: a successor adopts them).
    for sid in sessions:
        for container in containers(sid, running_only=False):
            docker("rm", "-f", container, check=False)


def _final(control: Control, sid: str, mid: str, timeout: float = 120) -> dict[str, Any]:
    return control.wait_message(sid, mid, ("completed", "failed", "cancelled"), timeout)


def test_a_prompt_completes_in_a_container(control: Control) -> None:
    sid = control.create_session()
    mid = control.send(sid, "say hello MODE:text")
    assert _final(control, sid, mid)["state"] == "completed"
    container = one_container(sid)
    inspect = json.loads(docker("inspect", container))[0]
    assert inspect["HostConfig"]["NetworkMode"] == "host"
    assert not any("FSM_AGENT_TOKEN" in e for e in inspect["Config"]["Env"] or [])


def test_a_killed_container_is_noticed_and_replaced_and_the_chat_goes_on(
    control: Control, fake_llm: FakeLLM
) -> None:
    sid = control.create_session()
    first = control.send(sid, "remember the word teal MODE:text")
    assert _final(control, sid, first)["state"] == "completed"
    running = control.send(sid, "long answer MODE:slow")
    control.wait_message(sid, running, ("running",), timeout=60)
    old = one_container(sid)
    docker("kill", old)
    done = _final(control, sid, running, 60)
    assert (done["state"], done["reason"]) == ("failed", "agent_restarted"), done
    assert "signal 9" in done["error"] or "137" in done["error"], done
    new = wait_for("a new container", lambda: (c := containers(sid)) and c[0] != old and c[0], 90)
    assert new != old
    nxt = control.send(sid, "what was the word? MODE:text")
    assert _final(control, sid, nxt)["state"] == "completed"
    # The conversation was kept: the model saw the first message again in the last request.
    assert "teal" in json.dumps(fake_llm.requests[-1].get("messages"))


def test_a_paused_container_goes_stale_and_is_replaced(control: Control) -> None:
    sid = control.create_session()
    mid = control.send(sid, "say hello MODE:text")
    assert _final(control, sid, mid)["state"] == "completed"
    old = one_container(sid)
    docker("pause", old)
    try:
        wait_for(
            "stale then restarting",
            lambda: ("stale", "restarting") in control.transitions(sid),
            60,
            control.tail,
        )
        new = wait_for(
            "a new container", lambda: (c := containers(sid)) and old not in c and c[0], 90
        )
        assert new != old
    finally:
        docker("unpause", old, check=False)
    nxt = control.send(sid, "again MODE:text")
    assert _final(control, sid, nxt)["state"] == "completed"


def test_the_control_plane_killed_and_restarted_adopts_its_containers(
    control: Control,
) -> None:
    sid = control.create_session()
    mid = control.send(sid, "say hello MODE:text")
    assert _final(control, sid, mid)["state"] == "completed"
    before = one_container(sid)
    control.kill()
    time.sleep(0.5)  # not a production timeout: lets the old process's sockets close
    control.start()
    control.wait_state(sid, ("ready", "idle"), timeout=60)
    assert containers(sid) == [before]  # adopted, not duplicated
    nxt = control.send(sid, "again MODE:text")
    assert _final(control, sid, nxt)["state"] == "completed"
    assert containers(sid) == [before]
