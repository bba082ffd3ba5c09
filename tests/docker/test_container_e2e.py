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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.runtime.docker import LABEL_SESSION
from adapters.runtime.image import ensure_image
from tests.docker_support import docker_daemon
from tests.fakes.control_process import WRAPPER_FAST, Control, running_control, wait_for
from tests.fakes.fake_llm import FakeLLM

__all__ = ["docker_daemon"]

pytestmark = pytest.mark.kilo

FAST = {
    **WRAPPER_FAST,
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


@contextmanager
def docker_control(
    tmp: Path, fake_llm: FakeLLM, image: str, runtime: dict[str, str] | None = None
) -> Iterator[Control]:
    extra = ["--runtime", "docker", "--image", image]
    sessions: list[str] = []
    # Everything allowed: a tool the model runs must not wait on a permission nobody answers
    # (Kilo asks before touching paths outside the workspace, e.g. /proc).
    config = fake_llm.provider_config(permission={"bash": "allow", "*": "allow"})
    # Kilo's snapshot system, after a container was killed mid-turn, can take long enough to
    # initialize that Kilo asks the user whether to disable it (question.asked, "Snapshot is
    # slow", seen under load): the turn then rightly waits for an answer nobody here gives.
    config["snapshot"] = False
    with running_control(tmp, config, FAST, extra_args=extra, runtime=runtime) as c:
        yield c
        sessions = [s["id"] for s in c.http.get("/sessions").json()]
    # After the control plane is gone (containers outlive it by design: a successor adopts them).
    for sid in sessions:
        for container in containers(sid, running_only=False):
            docker("rm", "-f", container, check=False)


@pytest.fixture
def control(tmp_path: Path, fake_llm: FakeLLM, image: str) -> Iterator[Control]:
    with docker_control(tmp_path, fake_llm, image) as c:
        yield c


def _logs(container: str) -> str:
    done = subprocess.run(["docker", "logs", container], capture_output=True, text=True)
    return done.stdout + done.stderr


def _final(control: Control, sid: str, mid: str, timeout: float = 120) -> dict[str, Any]:
    try:
        return control.wait_message(sid, mid, ("completed", "failed", "cancelled"), timeout)
    except AssertionError as exc:
        # The live containers' own output (the runtime keeps it only once one exits).
        logs = "".join(
            f"\n--- docker logs {c[:12]}\n" + "\n".join(_logs(c).splitlines()[-40:])
            for c in containers(sid)
        )
        asked = [
            json.dumps(e.data["event"])[:600]
            for e in control.events(sid)
            if e.kind == "event" and str(e.data["event"].get("type", "")).endswith(".asked")
        ]
        raise AssertionError(f"{exc}{logs}\n--- asked: {asked}") from None


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


def _tool_output(fake_llm: FakeLLM) -> str:
    """What the last bash tool printed, as the model was shown it."""
    for body in reversed(fake_llm.requests):
        tools = [m for m in body.get("messages") or [] if m.get("role") == "tool"]
        if tools:
            return json.dumps(tools[-1].get("content"))
    raise AssertionError("no tool result reached the model")


def test_a_memory_limit_hit_in_the_container_is_reported(
    tmp_path: Path, fake_llm: FakeLLM, image: str
) -> None:
    """A tool that eats memory past ``runtime.memory``: the kernel kills it (the container
    lives on), the daemon's ``oom`` event reaches the session as a runtime notice in its event
    stream, and the turn goes on with the tool's failure."""
    # Kilo alone is about 530 MB: the hog must outgrow it before the limit, or Kilo is the
    # process the kernel picks.
    with docker_control(tmp_path, fake_llm, image, {"memory": "2g"}) as control:
        sid = control.create_session()
        hog = "python3 -c 'x = b\"x\" * (3 * 1024 ** 3)'; echo status=$?"
        mid = control.send(sid, f"RUN[{hog}] MODE:run")
        done = _final(control, sid, mid)
        notices = [e.data for e in control.events(sid) if e.kind == "runtime"]
        assert notices and notices[0]["notice"] == "oom", notices
        assert "memory limit (2048 MiB, runtime.memory)" in notices[0]["detail"], notices
        assert done["state"] == "completed", (done, control.tail(30))
        assert "status=137" in _tool_output(fake_llm)
        assert len(containers(sid)) == 1  # the container lives on


def test_a_memory_limit_kilo_cannot_live_under_fails_the_session_saying_so(
    tmp_path: Path, fake_llm: FakeLLM, image: str
) -> None:
    """Kilo alone needs about 530 MB here: under a 400 MiB limit the kernel kills it at every
    start, the wrapper spends its restart budget, and the user is told why, not only
    ``agent_unavailable``: the message's error is the OOM notice, and the session is failed."""
    with docker_control(tmp_path, fake_llm, image, {"memory": "400m"}) as control:
        sid = control.create_session()
        mid = control.send(sid, "hello MODE:text")
        done = _final(control, sid, mid)
        assert (done["state"], done["reason"]) == ("failed", "agent_unavailable"), done
        assert "killed at its memory limit (400 MiB" in done["error"], done
        assert control.wait_state(sid, ("failed",), timeout=60) == "failed"


def test_the_agent_finds_no_secret_and_cannot_reach_the_control_planes_data(
    control: Control, fake_llm: FakeLLM
) -> None:
    """What a prompt-injected agent would try, as a Kilo bash tool inside the container: the
    environment of PID 1 and its own, the wrapper's state, the control plane's database (a
    path on the host), and the control plane's API on the shared loopback."""
    sid = control.create_session()
    api = f"http://127.0.0.1:{control.port}/sessions"
    probe = (
        "cat /proc/1/environ; echo environ=$?; env; "
        "ls /var/lib/fsm-agent/*; echo state=$?; "
        f"cat {control.db}; echo db=$?; "
        "python3 -c \"import urllib.request as u; u.urlopen('" + api + "')\" 2>&1 | tail -1"
    )
    mid = control.send(sid, f"RUN[{probe}] MODE:run")
    assert _final(control, sid, mid)["state"] == "completed"
    out = _tool_output(fake_llm)
    assert "environ=1" in out and "state=2" in out and "db=1" in out, out
    assert "401" in out, out
    for secret in ("FSM_AGENT_TOKEN", "KILO_SERVER_PASSWORD", "FSM_AGENT_API_KEY"):
        assert secret not in out, out


def _top(container: str) -> list[tuple[int, str, str]]:
    """(host pid, user, command) of every process in ``container``."""
    rows = docker("top", container, "-eo", "pid,user,args").splitlines()[1:]
    out = []
    for row in rows:
        pid, user, args = row.split(None, 2)
        out.append((int(pid), user, args))
    return out


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_the_wrapper_killed_inside_its_container_is_restarted_there_by_the_supervisor(
    control: Control,
) -> None:
    """Acceptance 13: the wrapper process dies, the container does not. The in-container
    supervisor starts a new wrapper, the old Kilo is gone with the old wrapper, the accepted
    message fails agent_restarted, and the next one works in the same container."""
    sid = control.create_session()
    first = control.send(sid, "say hello MODE:text")
    assert _final(control, sid, first)["state"] == "completed"
    container = one_container(sid)
    labels = json.loads(docker("inspect", container))[0]["Config"]["Labels"]
    fsm, agent = labels["io.fsm-agent.fsm-uid"], labels["io.fsm-agent.agent-uid"]
    before = _top(container)  # the host has no such users: docker top shows their uids
    wrapper = [pid for pid, user, args in before if user in (fsm, "fsm") and " serve" in args]
    kilo = [pid for pid, user, args in before if user in (agent, "agent") and "kilo" in args]
    assert wrapper and kilo, before
    running = control.send(sid, "long answer MODE:slow")
    control.wait_message(sid, running, ("running",), timeout=60)
    subprocess.run(["kill", "-9", str(wrapper[0])], check=True)
    done = _final(control, sid, running, 90)
    assert (done["state"], done["reason"]) == ("failed", "agent_restarted"), done
    nxt = control.send(sid, "again MODE:text")
    assert _final(control, sid, nxt)["state"] == "completed"
    assert containers(sid) == [container]  # the same container: its supervisor did it
    assert not any(_alive(pid) for pid in kilo), "the old Kilo outlived its wrapper"


def test_auto_commit_works_in_the_agents_workspace(control: Control, fake_llm: FakeLLM) -> None:
    """The workspace is the agent's; git runs as the agent (found broken by the image tests:
    git as the wrapper's uid could not write the agent's .git)."""
    sid = control.create_session()
    setup = "git init -q && git config user.email a@example.com && git config user.name a"
    mid = control.send(sid, f"RUN[{setup} && echo hi > f.txt] MODE:run", auto_commit=True)
    assert _final(control, sid, mid)["state"] == "completed"
    reports = wait_for(
        "the auto-commit report",
        lambda: [
            e.data["event"]["properties"]
            for e in control.events(sid)
            if e.kind == "event" and e.data["event"].get("type") == "wrapper.auto_commit"
        ],
        60,
        control.tail,
    )
    assert reports[0]["success"] and not reports[0]["skipped"], reports
