"""What the container tests need from the machine: a Docker (or Podman) Engine API that answers.

``docker_daemon`` (a session fixture) yields the daemon's unix socket path, or skips the test with
a one-line reason saying what is missing — never silently. With ``FSM_AGENT_REQUIRE_DOCKER=1``
(CI) a missing daemon fails the test instead, since there the container tests must run.

``docker_image`` checks that an image is present (``just setup`` builds them; nothing pulls), and
``remove_labelled`` removes every container carrying a label, for a test's cleanup. Import them
into a test module (``from tests.docker_support import docker_daemon``) or a ``conftest.py``.
Synchronous on purpose: fixtures and cleanups run outside any event loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

__all__ = [
    "BASE_IMAGE",
    "REQUIRE_ENV",
    "TEST_LABEL",
    "docker_daemon",
    "docker_image",
    "docker_socket",
    "remove_labelled",
]

BASE_IMAGE = "fsm-agent-base:bookworm"
"""Built by ``docker/base.sh``: Debian bookworm + python3 + git + tini."""

REQUIRE_ENV = "FSM_AGENT_REQUIRE_DOCKER"
TEST_LABEL = "io.fsm-agent.test"
"""Every container a test creates carries this label, so a cleanup finds them all."""

_API = "http://docker/v1.41"


def docker_socket() -> Path:
    """The daemon's socket: ``DOCKER_HOST`` if it names a unix socket, else the usual path."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return Path(host.removeprefix("unix://"))
    return Path("/var/run/docker.sock")


def _client(socket: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), timeout=10.0)


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the container tests must run here)")
    pytest.skip(reason)


def _ping(socket: Path) -> str | None:
    """None if the Engine API at ``socket`` answers 1.41, else why not (one line)."""
    if not socket.exists():
        return f"no Docker daemon: {socket} does not exist (`just setup` starts dockerd as root)"
    try:
        with _client(socket) as client:
            answer = client.get(f"{_API}/version")
    except httpx.HTTPError as exc:
        return f"no Docker daemon answers at {socket}: {exc}"
    if answer.status_code != 200:
        return f"Docker daemon at {socket} answered {answer.status_code}: {answer.text[:200]}"
    return None


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[Path]:
    """The socket of a daemon that answers the Engine API 1.41, or skip (fail under CI)."""
    socket = docker_socket()
    reason = _ping(socket)
    if reason is not None:
        _unavailable(reason)
    yield socket


def docker_image(socket: Path, image: str = BASE_IMAGE) -> str:
    """``image`` if the daemon has it; else skip (fail under CI) naming how to build it."""
    with _client(socket) as client:
        answer = client.get(f"{_API}/images/{image}/json")
    if answer.status_code != 200:
        _unavailable(f"image {image} is missing (`just setup` or `docker/base.sh` builds it)")
    return image


def remove_labelled(socket: Path, label: str = TEST_LABEL, value: str | None = None) -> int:
    """Force-remove every container with ``label`` (``=value`` if given); how many there were."""
    selector = label if value is None else f"{label}={value}"
    filters = json.dumps({"label": [selector]})
    with _client(socket) as client:
        listed = client.get(f"{_API}/containers/json", params={"all": "1", "filters": filters})
        listed.raise_for_status()
        ids = [item["Id"] for item in listed.json()]
        for container in ids:
            client.delete(f"{_API}/containers/{container}", params={"force": "1", "v": "1"})
    return len(ids)
