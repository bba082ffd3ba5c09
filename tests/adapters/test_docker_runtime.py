"""The Docker runtime against the real daemon: containers start labelled with the token in a file
only (never argv, never the environment), every exit is reported once through the event stream
with its reason (exit code, OOM kill, our stop, removed under us), a restarted control plane adopts
running containers without duplicating them, and a start the daemon refuses says why.

A tiny Python stand-in for ``fsm-agent serve`` runs on the bare base image (``command`` replaces
the entrypoint); its behaviour is picked with ``STANDIN_MODE`` (through ``extra_env``). Every
container carries ``TEST_LABEL=<test id>`` and is removed afterwards, whatever happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from adapters.runtime.base import (
    ExitReason,
    RuntimePortError,
    WrapperAlreadyRunningError,
    WrapperSpec,
    WrapperStartError,
)
from adapters.runtime.docker import LABEL_CONTROL, LABEL_SESSION, DockerRuntime
from fsm.control.api import build_app
from fsm.control.host import ControlHost, ControlSettings
from fsm.hosting.logs import JsonLog
from fsm.settings.config import timer_values
from fsm.settings.runtime import RuntimeSettings
from tests.docker_support import TEST_LABEL, docker_daemon, docker_image, remove_labelled

__all__ = ["docker_daemon"]  # the fixture, used by name

pytestmark = pytest.mark.anyio

TOKEN = "tok-" + "x7" * 20
STANDIN = r"""
import hashlib, os, signal, sys, time
mode = os.environ.get("STANDIN_MODE", "serve")
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
path = args["token-file"]
with open(path) as f:
    token = f.read().strip()
os.unlink(path)  # as fsm.settings.secrets does: single-use
with open(os.path.join(args["workdir"], "standin.txt"), "w") as f:
    f.write(hashlib.sha256(token.encode()).hexdigest() + "\n" + " ".join(sys.argv[1:]))
if "config" in args:  # what the wrapper would read: the config and the Kilo file it names
    folder = os.path.dirname(args["config"])
    with open(os.path.join(args["workdir"], "config.txt"), "w") as f:
        f.write(open(args["config"]).read() + open(os.path.join(folder, "kilo.json")).read())
if mode == "exit":
    sys.exit(3)
if mode == "oom":
    hog = []
    while True:
        hog.append(bytearray(8 * 1024 * 1024))
if mode != "ignore_term":  # PID 1 ignores SIGTERM unless it handles it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"""
COMMAND = ["python3", "-c", STANDIN]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Exits:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, ExitReason | None, str]] = []
        self.event = anyio.Event()

    def __call__(
        self, session_id: str, code: int | None, reason: ExitReason | None = None, detail: str = ""
    ) -> None:
        self.calls.append((session_id, code, reason, detail))
        self.event.set()

    async def wait(self, count: int = 1, timeout: float = 20.0) -> None:
        with anyio.fail_after(timeout):
            while len(self.calls) < count:
                self.event = anyio.Event()
                await self.event.wait()


@pytest.fixture
def label(docker_daemon: Path) -> Iterator[str]:
    """This test's label value; every container carrying it is removed afterwards."""
    value = uuid.uuid4().hex[:12]
    yield value
    remove_labelled(docker_daemon, TEST_LABEL, value)


def runtime(
    tmp_path: Path,
    socket: Path,
    label: str,
    exits: Exits,
    image: str | None = None,
    **settings: Any,
) -> DockerRuntime:
    return DockerRuntime(
        RuntimeSettings(socket=socket, network="host", **settings),
        exits,
        state_dir=tmp_path / "state",
        image=image or docker_image(socket),
        command=COMMAND,
        labels={TEST_LABEL: label},
        exit_grace=2.0,
    )


def spec(tmp_path: Path, session_id: str = "s1", mode: str = "serve") -> WrapperSpec:
    workdir = tmp_path / "ws" / session_id
    workdir.mkdir(parents=True, exist_ok=True)
    return WrapperSpec(
        session_id=session_id,
        agent_session=f"agent_{session_id}",
        user_id="u1",
        ingest_url=f"ws://127.0.0.1:9/ingest/{session_id}",
        token=TOKEN,
        workdir=workdir,
        extra_env={"STANDIN_MODE": mode},
    )


def inspect(socket: Path, container: str) -> dict[str, Any] | None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket))) as client:
        answer = client.get(f"http://docker/v1.41/containers/{container}/json")
    return None if answer.status_code == 404 else dict(answer.json())


def _is_podman(socket: Path) -> bool:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket))) as client:
        version = client.get("http://docker/v1.41/version").json()
    return any("Podman" in str(c.get("Name")) for c in version.get("Components") or [])


def ours(socket: Path, label: str) -> list[dict[str, Any]]:
    filters = json.dumps({"label": [f"{TEST_LABEL}={label}"]})
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket))) as client:
        answer = client.get(
            "http://docker/v1.41/containers/json", params={"all": "1", "filters": filters}
        )
    return list(answer.json())


async def wait_ready(workdir: Path, timeout: float = 20.0) -> str:
    """What the stand-in wrote once it had read its token."""
    marker = workdir / "standin.txt"
    with anyio.fail_after(timeout):
        while not marker.exists() or not marker.read_text().strip():
            await anyio.sleep(0.05)
    return marker.read_text()


@pytest.fixture
async def started(
    tmp_path: Path, docker_daemon: Path, label: str
) -> AsyncIterator[tuple[DockerRuntime, Exits]]:
    exits = Exits()
    async with runtime(tmp_path, docker_daemon, label, exits) as rt:
        yield rt, exits


async def test_started_container_is_labelled_and_its_token_is_only_in_a_consumed_file(
    tmp_path: Path, docker_daemon: Path, label: str, started: tuple[DockerRuntime, Exits]
) -> None:
    rt, exits = started
    the_spec = spec(tmp_path)
    await rt.start(the_spec)
    assert rt.running("s1")
    written = await wait_ready(the_spec.workdir)
    assert written.splitlines()[0] == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert "--token-file=/run/fsm-agent/secrets/token" in written
    container = rt.container("s1")
    assert container is not None
    info = inspect(docker_daemon, container)
    assert info is not None and info["State"]["Running"]
    labels = info["Config"]["Labels"]
    assert labels[LABEL_SESSION] == "s1" and labels[LABEL_CONTROL] == rt.control_plane_id
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert TOKEN not in json.dumps(info)  # not in Env, Cmd, Args, Path, Labels, Mounts
    # The stand-in unlinked the file it read: gone from the container and from the host.
    assert list(rt.secrets_dir("s1").iterdir()) == []
    with pytest.raises(WrapperAlreadyRunningError):
        await rt.start(the_spec)

    assert await rt.stop("s1", grace=5) == 0
    assert exits.calls == [("s1", 0, "killed_by_us", "")]
    assert not rt.running("s1")
    assert inspect(docker_daemon, container) is None  # removed on stop
    assert not rt.secrets_dir("s1").exists()
    log_text = (rt.log_dir / "s1.log").read_text()
    assert "starting container" in log_text and "exited: 0 (killed_by_us)" in log_text


async def test_an_exit_is_reported_once_through_the_event_stream_with_its_code(
    tmp_path: Path, docker_daemon: Path, label: str, started: tuple[DockerRuntime, Exits]
) -> None:
    rt, exits = started
    await rt.start(spec(tmp_path, mode="exit"))
    await exits.wait()
    await anyio.sleep(0.5)  # a second report would arrive by now (die, then destroy)
    assert exits.calls == [("s1", 3, "exited", "")]
    assert not rt.running("s1")
    assert ours(docker_daemon, label) == []
    assert await rt.stop("s1", grace=1) is None  # nothing runs: nothing to report


async def test_a_memory_limit_hit_is_reported_as_oom_killed_with_137(
    tmp_path: Path, docker_daemon: Path, label: str
) -> None:
    exits = Exits()
    async with runtime(tmp_path, docker_daemon, label, exits, memory=32 * 1024**2) as rt:
        await rt.start(spec(tmp_path, mode="oom"))
        await exits.wait(timeout=30)
    [(sid, code, reason, detail)] = exits.calls
    assert (sid, code) == ("s1", 137)
    if reason == "exited" and _is_podman(docker_daemon):
        pytest.xfail("Podman 4.3 on cgroup v1 leaves State.OOMKilled false (and sends no oom)")
    assert reason == "oom_killed"
    assert str(32 * 1024**2) in detail


async def test_a_wrapper_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, started: tuple[DockerRuntime, Exits]
) -> None:
    rt, exits = started
    the_spec = spec(tmp_path, mode="ignore_term")
    await rt.start(the_spec)
    await wait_ready(the_spec.workdir)
    began = anyio.current_time()
    assert await rt.stop("s1", grace=0.5, asked=True) == 137
    # asked: 0.5 s to leave on its own, then SIGTERM and 0.5 s more, then SIGKILL
    assert anyio.current_time() - began >= 1.0
    assert exits.calls == [("s1", 137, "killed_by_us", "")]


async def test_a_container_killed_or_removed_behind_our_back_is_reported_with_that_reason(
    tmp_path: Path, docker_daemon: Path, started: tuple[DockerRuntime, Exits]
) -> None:
    rt, exits = started
    for sid in ("s1", "s2"):
        await rt.start(spec(tmp_path, sid))
        await wait_ready(tmp_path / "ws" / sid)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(docker_daemon))) as client:
        client.post(f"http://docker/v1.41/containers/{rt.container('s1')}/kill")
        client.delete(f"http://docker/v1.41/containers/{rt.container('s2')}?force=1")
    await exits.wait(2)
    by_session = {sid: (code, reason) for sid, code, reason, _ in exits.calls}
    assert by_session["s1"] == (137, "exited")  # SIGKILL from someone else: a crash
    assert by_session["s2"][1] in ("removed", "exited")  # gone before or after we looked
    assert len(exits.calls) == 2


def _crash(rt: DockerRuntime) -> None:
    """What a control plane killed with -9 does to its containers: nothing. Forget them, so that
    leaving the runtime does not stop them."""
    rt._boxes.clear()
    rt._by_id.clear()


async def test_a_restarted_control_plane_adopts_running_containers_without_duplicates(
    tmp_path: Path, docker_daemon: Path, label: str
) -> None:
    first = Exits()
    async with runtime(tmp_path, docker_daemon, label, first) as rt:
        await rt.start(spec(tmp_path, "s1"))
        await rt.start(spec(tmp_path, "s2"))
        await wait_ready(tmp_path / "ws" / "s2")
        container = rt.container("s1")
        _crash(rt)
    assert first.calls == []
    assert len(ours(docker_daemon, label)) == 2

    second = Exits()
    async with runtime(tmp_path, docker_daemon, label, second) as rt:
        pid = rt.adopt("s1")
        assert pid is not None and pid > 0
        assert rt.running("s1") and rt.container("s1") == container
        assert rt.adopt("s1") is None  # already ours
        with pytest.raises(WrapperAlreadyRunningError):
            await rt.start(spec(tmp_path, "s1"))
        # s2's leftover was not adopted: starting s2 replaces it, never runs two.
        (tmp_path / "ws" / "s2" / "standin.txt").unlink()
        await rt.start(spec(tmp_path, "s2"))
        await wait_ready(tmp_path / "ws" / "s2")
        sessions = sorted(c["Labels"][LABEL_SESSION] for c in ours(docker_daemon, label))
        assert sessions == ["s1", "s2"]
        # The adopted container's exit is heard, with its code.
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(docker_daemon))) as client:
            client.post(f"http://docker/v1.41/containers/{container}/kill?signal=SIGTERM")
        await second.wait()
        assert second.calls == [("s1", 0, "exited", "")]
        assert not rt.running("s1")
    assert [call[:3] for call in second.calls[1:]] == [("s2", 0, "killed_by_us")]  # on leaving
    assert ours(docker_daemon, label) == []


async def test_a_missing_image_fails_the_start_with_the_daemons_message(
    tmp_path: Path, docker_daemon: Path, label: str
) -> None:
    exits = Exits()
    async with DockerRuntime(
        RuntimeSettings(socket=docker_daemon),
        exits,
        state_dir=tmp_path / "state",
        image="fsm-agent-test-missing:nope",
        labels={TEST_LABEL: label},
    ) as rt:
        # Docker's words; Podman's say "no such image: docker.io/library/...: image not known"
        missing = r"(?i)no such image: (docker\.io/library/)?fsm-agent-test-missing:nope"
        with pytest.raises(WrapperStartError, match=missing):
            await rt.start(spec(tmp_path))
        assert not rt.running("s1")
        assert not rt.secrets_dir("s1").exists()  # no token left behind
    assert exits.calls == [] and ours(docker_daemon, label) == []


async def test_a_missing_daemon_socket_fails_the_start_saying_so(tmp_path: Path) -> None:
    missing = tmp_path / "no-docker.sock"
    async with DockerRuntime(
        RuntimeSettings(socket=missing), Exits(), state_dir=tmp_path / "state", image="any:1"
    ) as rt:
        assert rt.adopt("s1") is None
        with pytest.raises(WrapperStartError, match=f"no Docker daemon: {missing} does not exist"):
            await rt.start(spec(tmp_path))
        assert not rt.running("s1")


async def test_no_image_configured_is_refused_on_entry(tmp_path: Path) -> None:
    with pytest.raises(RuntimePortError, match=r"--image or \[runtime\] image"):
        async with DockerRuntime(RuntimeSettings(), Exits(), state_dir=tmp_path):
            pass


def test_the_token_never_reaches_the_create_body(tmp_path: Path) -> None:
    rt = DockerRuntime(RuntimeSettings(), Exits(), state_dir=tmp_path, image="x:1")
    the_spec = spec(tmp_path)
    body = rt._create_body(the_spec, the_spec.workdir)
    assert TOKEN not in json.dumps(body)
    assert (
        os.fspath(rt.secrets_dir("s1")) + ":/run/fsm-agent/secrets:rw"
        in body["HostConfig"]["Binds"]
    )


class CuttableProxy:
    """A unix socket in front of the daemon's whose connections can all be cut at once, and new
    ones refused, as a daemon restart does to the runtime's event stream. Plain threads, so that
    it runs whatever the test's event loop is doing."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path, self.target = path, target
        self.refusing = False
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def cut(self) -> None:
        self.refusing = True
        for sock in list(self._sockets):  # both pumps see EOF and end
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(self.target))
            self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._sockets -= {source, sink}


async def test_an_exit_while_the_event_stream_is_down_is_reported_once_it_is_back(
    tmp_path: Path, docker_daemon: Path, label: str
) -> None:
    proxy = CuttableProxy(tmp_path / "proxy.sock", docker_daemon)
    exits = Exits()
    try:
        image = docker_image(docker_daemon)
        async with runtime(tmp_path, proxy.path, label, exits, image) as rt:
            await rt.start(spec(tmp_path))
            await wait_ready(tmp_path / "ws" / "s1")
            container = rt.container("s1")
            proxy.cut()  # the stream breaks; reopening it fails for now
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(docker_daemon))) as client:
                client.post(f"http://docker/v1.41/containers/{container}/kill?signal=SIGTERM")
            await anyio.sleep(1.0)
            assert exits.calls == [] and rt.running("s1")  # nobody could tell us yet
            proxy.refusing = False
            await exits.wait()
            await anyio.sleep(0.5)  # replayed events (since=) and the reconciliation agree
            assert exits.calls == [("s1", 0, "exited", "")]
            assert inspect(docker_daemon, str(container)) is None
    finally:
        proxy.close()


@pytest.mark.parametrize("table", ["agent", "kilo"])
async def test_the_config_reaches_the_container_as_a_private_copy_even_if_ours_is_0600(
    tmp_path: Path, started: tuple[DockerRuntime, Exits], table: str
) -> None:
    """``[agent] config_file``, or ``[kilo]``'s (its older name, Kilo's config alias)."""
    rt, _ = started
    config = tmp_path / "etc" / "fsm-agent.toml"
    config.parent.mkdir()
    config.write_text(f'[{table}]\nconfig_file = "kilo.json"\n')
    (tmp_path / "etc" / "kilo.json").write_text('{"model": "demo/x"}')
    for path in (config, tmp_path / "etc" / "kilo.json"):
        path.chmod(0o600)
    the_spec = msgspec.structs.replace(spec(tmp_path), config=config)
    await rt.start(the_spec)
    await wait_ready(the_spec.workdir)
    seen_file = the_spec.workdir / "config.txt"
    with anyio.fail_after(10):  # the stand-in writes it in place: wait for its content too
        while not (seen_file.exists() and '"model"' in seen_file.read_text()):
            await anyio.sleep(0.05)
    assert "--config=/etc/fsm-agent/config.toml" in (the_spec.workdir / "standin.txt").read_text()
    seen = seen_file.read_text()
    assert 'config_file = "kilo.json"' in seen and '"model": "demo/x"' in seen
    copy = rt.config_dir("s1")
    assert copy.stat().st_mode & 0o777 == 0o700
    assert (copy / "config.toml").stat().st_mode & 0o777 == 0o600
    await rt.stop("s1", grace=5)
    assert not copy.exists()


async def test_the_control_plane_runs_a_container_per_session_and_removes_it_on_delete(
    tmp_path: Path, docker_daemon: Path
) -> None:
    state = tmp_path / "state"
    settings = ControlSettings(
        db=state / "control.db",
        api_key="key",
        base_dir=tmp_path / "workspaces",
        state_dir=state,
        runtime="docker",
        runtime_settings=RuntimeSettings(
            socket=docker_daemon, image=docker_image(docker_daemon), network="host"
        ),
        wrapper_command=COMMAND,
    )
    log = io.StringIO()
    values = timer_values(overrides={"wrapper_stop_grace": "2s"})["control"]
    host = ControlHost(settings, values, JsonLog(log))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(host.run, build_app)
            await host.ready.wait()
            assert isinstance(host.runtime, DockerRuntime)
            entry, token = host.create_session()
            sid = entry.row.id
            workspace = Path(entry.row.workdir)
            written = await wait_ready(workspace)
            # The container got the token minted for it, not the one shown at creation.
            assert entry.token is not None and entry.token != token
            assert written.splitlines()[0] == hashlib.sha256(entry.token.encode()).hexdigest()
            assert f"--ingest-url=ws://127.0.0.1:{host.port}/ingest/{sid}" in written
            container = host.runtime.container(sid)
            assert container is not None
            host.delete_session(sid)
            with anyio.move_on_after(20):
                while sid in host.sessions:
                    await anyio.sleep(0.05)
            assert sid not in host.sessions, log.getvalue()[-4000:]
            with anyio.fail_after(10):  # the session may be forgotten first (its stop grace)
                while inspect(docker_daemon, container) is not None:
                    await anyio.sleep(0.1)
            assert '"reason":"killed_by_us"' in log.getvalue().replace(" ", "")
            host.request_stop()
    finally:
        control = (state / "control-plane-id").read_text().strip()
        remove_labelled(docker_daemon, LABEL_CONTROL, control)
