"""A small client of the Docker Engine API (1.41) over its unix socket, on httpx.

Only what the container runtime uses: create, start, kill, inspect, list by label, logs, remove,
image inspect and the event stream. httpx is already the project's HTTP stack and speaks to a
unix socket through ``AsyncHTTPTransport(uds=...)``; the docker SDK would bring a second stack
(requests, blocking: every call a thread under anyio) for a dozen endpoints. The same calls work
against Podman's Docker-compatible socket.

Every failure is one of two exceptions whose message is fit to show a user: ``DaemonUnavailable``
(no socket, nobody answers) and ``DockerAPIError`` (the daemon answered with an error: its own
``message`` is kept, e.g. ``No such image: x:y``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = ["API_VERSION", "DaemonUnavailable", "DockerAPI", "DockerAPIError", "check_daemon"]

API_VERSION = "v1.41"
REQUEST_TIMEOUT = 30.0
"""Any one call but the event stream; a create on a loaded daemon can take seconds."""
EVENT_LINE_BYTES = 64 * 1024
"""An event is a few hundred bytes (labels included); a longer line is not an event."""


class DockerError(Exception):
    """Something the daemon could not do; the message says what, for a user."""


class DaemonUnavailable(DockerError):
    """No daemon answers at the socket (missing, refused, or it hung up)."""


class DockerAPIError(DockerError):
    """The daemon answered an error; ``status`` is the HTTP status, the message the daemon's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _unavailable(socket: Path, exc: Exception) -> DaemonUnavailable:
    if not socket.exists():
        return DaemonUnavailable(
            f"no Docker daemon: {socket} does not exist (start dockerd, or point "
            "[runtime] socket at the daemon's socket)"
        )
    return DaemonUnavailable(
        f"the Docker daemon at {socket} does not answer: {str(exc) or type(exc).__name__}"
    )


def _error(answer: httpx.Response, what: str) -> DockerAPIError:
    try:
        message = str(answer.json().get("message", "")) or answer.text
    except (ValueError, AttributeError):
        message = answer.text
    return DockerAPIError(answer.status_code, f"{what}: {message.strip()[:1000]}")


def check_daemon(socket: Path) -> str:
    """The daemon's version string, or ``DaemonUnavailable`` (synchronous: for command lines)."""
    try:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)), timeout=REQUEST_TIMEOUT
        ) as client:
            answer = client.get(f"http://docker/{API_VERSION}/version")
    except httpx.HTTPError as exc:
        raise _unavailable(socket, exc) from None
    if answer.status_code != 200:
        raise _unavailable(socket, _error(answer, "version"))
    return str(answer.json().get("Version", "?"))


def demux_logs(data: bytes) -> bytes:
    """The payload of a non-TTY container's log stream (8-byte headers: stream, 0, 0, 0, size)."""
    out = bytearray()
    at = 0
    while at + 8 <= len(data):
        size = struct.unpack(">I", data[at + 4 : at + 8])[0]
        out += data[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out)


class DockerAPI:
    """One connection pool to the daemon; use as an async context manager."""

    def __init__(self, socket: Path) -> None:
        self.socket = Path(socket)
        self._client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url=f"http://docker/{API_VERSION}",
            timeout=REQUEST_TIMEOUT,
        )

    async def __aenter__(self) -> DockerAPI:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        try:
            return await self._client.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise _unavailable(self.socket, exc) from None

    async def version(self) -> dict[str, Any]:
        answer = await self._call("GET", "/version")
        if answer.status_code != 200:
            raise _error(answer, "version")
        return dict(answer.json())

    async def image(self, name: str) -> dict[str, Any] | None:
        """The image's inspect document, None if the daemon has no such image."""
        answer = await self._call("GET", f"/images/{name}/json")
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise _error(answer, f"inspect image {name}")
        return dict(answer.json())

    async def create(self, name: str, config: dict[str, Any]) -> str:
        """Create a container named ``name``; its id."""
        answer = await self._call("POST", "/containers/create", params={"name": name}, body=config)
        if answer.status_code != 201:
            raise _error(answer, f"create container {name}")
        return str(answer.json()["Id"])

    async def start(self, container: str) -> None:
        answer = await self._call("POST", f"/containers/{container}/start")
        if answer.status_code not in (204, 304):
            raise _error(answer, f"start container {container[:12]}")

    async def kill(self, container: str, signal: str) -> bool:
        """Send ``signal``; False if the container is not running (or gone)."""
        answer = await self._call(
            "POST", f"/containers/{container}/kill", params={"signal": signal}
        )
        if answer.status_code in (404, 409):
            return False
        if answer.status_code != 204:
            raise _error(answer, f"kill container {container[:12]}")
        return True

    async def inspect(self, container: str) -> dict[str, Any] | None:
        """The container's inspect document, None if it does not exist (any more)."""
        answer = await self._call("GET", f"/containers/{container}/json")
        if answer.status_code == 404:
            return None
        if answer.status_code != 200:
            raise _error(answer, f"inspect container {container[:12]}")
        return dict(answer.json())

    async def remove(self, container: str) -> bool:
        """Force-remove it (and its anonymous volumes); False if it was already gone."""
        answer = await self._call(
            "DELETE", f"/containers/{container}", params={"force": "1", "v": "1"}
        )
        if answer.status_code == 404:
            return False
        if answer.status_code not in (204, 409):  # 409: removal already in progress
            raise _error(answer, f"remove container {container[:12]}")
        return True

    async def containers(self, labels: list[str]) -> list[dict[str, Any]]:
        """Every container (running or not) carrying all of ``labels`` (``key`` or ``key=v``)."""
        answer = await self._call(
            "GET",
            "/containers/json",
            params={"all": "1", "filters": json.dumps({"label": labels})},
        )
        if answer.status_code != 200:
            raise _error(answer, "list containers")
        return list(answer.json())

    async def logs(self, container: str, tail: int, limit: int) -> bytes:
        """The last ``tail`` lines of stdout and stderr, interleaved, at most ``limit`` bytes."""
        params = {"stdout": "1", "stderr": "1", "tail": str(tail)}
        try:
            async with self._client.stream(
                "GET", f"/containers/{container}/logs", params=params
            ) as answer:
                if answer.status_code != 200:
                    return b""
                data = bytearray()
                async for chunk in answer.aiter_bytes():
                    data += chunk
                    if len(data) > limit + 8:
                        break
        except httpx.HTTPError as exc:
            raise _unavailable(self.socket, exc) from None
        return demux_logs(bytes(data))[-limit:]

    @asynccontextmanager
    async def events(
        self, filters: dict[str, list[str]], since: str | None = None
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """The daemon's event stream with ``filters``; entered once the daemon has subscribed
        (its headers arrive at once), so no event after that moment is missed. ``since``
        (``seconds.nanos``) replays the recent events the daemon still holds from then on."""
        params = {"filters": json.dumps(filters)}
        if since is not None:
            params["since"] = since
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=None)
        try:
            async with self._client.stream(
                "GET", "/events", params=params, timeout=timeout
            ) as answer:
                if answer.status_code != 200:
                    await answer.aread()
                    raise _error(answer, "subscribe to events")
                yield self._event_lines(answer)
        except httpx.HTTPError as exc:
            raise _unavailable(self.socket, exc) from None

    async def _event_lines(self, answer: httpx.Response) -> AsyncIterator[dict[str, Any]]:
        async for line in answer.aiter_lines():
            if not line.strip() or len(line) > EVENT_LINE_BYTES:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event
