"""The ``[runtime]`` table: how the container runtime starts each session's wrapper.

One table in the shared TOML file, declared here once, row by row, like the timers and limits::

    [runtime]
    image = "fsm-agent-wrapper:3f2a…"   # else --image, else the image `just image` builds
    memory = "2g"                        # bytes, or a number with k/m/g (powers of 1024)
    cpus = 2.0
    pids = 1024
    network = "host"
    volumes = ["/srv/cache:/cache:ro"]
    socket = "/var/run/docker.sock"      # or Podman's Docker-compatible socket
    user = "10001:10001"                 # the wrapper's uid[:gid] in the container, optional

An unknown key or an unusable value is an error that names ``runtime.<key>`` (the command exits
2), never a silently ignored line. Only ``--runtime docker`` reads the values; the table is
accepted (and checked) whatever the runtime, so one file serves every deployment.

``network`` defaults to ``host`` because the wrapper dials the control plane's ingest URL, which
is a loopback address unless the control plane listens elsewhere: under a bridge network the
container's 127.0.0.1 is its own. Pick another mode only with a control plane that listens on an
address the containers can reach.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from fsm.settings.config import ConfigError, read_toml

__all__ = ["SETTINGS", "RuntimeSetting", "RuntimeSettings", "resolve", "runtime_settings"]


class RuntimeSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Effective ``[runtime]`` values (sizes in bytes)."""

    image: str = ""
    """Empty: the caller picks (``--image``, else the image the project builds)."""
    memory: int = 2 * 1024**3
    cpus: float = 2.0
    pids: int = 1024
    network: str = "host"
    volumes: tuple[str, ...] = ()
    socket: Path = Path("/var/run/docker.sock")
    user: str = ""
    """``UID`` or ``UID:GID``; empty: the image's own user."""


class RuntimeSetting(msgspec.Struct, frozen=True):
    key: str
    doc: str


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,254}$")
_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_USER = re.compile(r"^\d{1,10}(:\d{1,10})?$")
_MIN_MEMORY = 6 * 1024**2  # the smallest limit dockerd accepts


def _image(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError("must be an image reference such as 'fsm-agent-wrapper:latest'")
    return value


def _memory(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a size such as '2g' or a number of bytes")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        number = int(match[1]) * 1024 ** " kmg".index(match[2].lower() or " ")
    else:
        raise ValueError("must be a size such as '512m', '2g' or a number of bytes")
    if number < _MIN_MEMORY:
        raise ValueError(f"must be at least 6m ({_MIN_MEMORY} bytes), got {value!r}")
    return number


def _cpus(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.01 <= value <= 1024:
        raise ValueError(f"must be a number of CPUs between 0.01 and 1024, got {value!r}")
    return float(value)


def _pids(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 16 <= value <= 4_194_304:
        raise ValueError(f"must be an integer between 16 and 4194304, got {value!r}")
    return value


def _network(value: Any) -> str:
    if not isinstance(value, str) or not _NETWORK.match(value):
        raise ValueError("must be a network mode: 'host', 'bridge', 'none' or a network's name")
    return value


def _volume(value: Any) -> str:
    if not isinstance(value, str) or "\0" in value or "," in value:
        raise ValueError("each entry must be 'HOST_PATH:CONTAINER_PATH' or '...:ro'")
    parts = value.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        parts = parts[:2]
    if len(parts) != 2 or not all(PurePosixPath(p).is_absolute() for p in parts):
        raise ValueError(
            f"each entry must be 'HOST_PATH:CONTAINER_PATH[:ro|rw]' with absolute paths, "
            f"got {value!r}"
        )
    return value


def _volumes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of 'HOST_PATH:CONTAINER_PATH[:ro|rw]'")
    return tuple(_volume(v) for v in value)


def _socket(value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError("must be the absolute path of the daemon's unix socket")
    return Path(value)


def _user(value: Any) -> str:
    if not isinstance(value, str) or not (value == "" or _USER.match(value)):
        raise ValueError("must be a numeric 'UID' or 'UID:GID' (names mean nothing on the host)")
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "image": _image,
    "memory": _memory,
    "cpus": _cpus,
    "pids": _pids,
    "network": _network,
    "volumes": _volumes,
    "socket": _socket,
    "user": _user,
}

SETTINGS: tuple[RuntimeSetting, ...] = (
    RuntimeSetting("image", "image each wrapper container starts from (--image overrides)"),
    RuntimeSetting("memory", "memory limit per container, swap included ('2g'); OOM past it"),
    RuntimeSetting("cpus", "CPUs per container (fractions allowed)"),
    RuntimeSetting("pids", "processes and threads per container"),
    RuntimeSetting("network", "network mode; 'host' lets the wrapper reach a loopback ingest URL"),
    RuntimeSetting("volumes", "extra bind mounts, 'HOST:CONTAINER[:ro|rw]'"),
    RuntimeSetting("socket", "the Engine API's unix socket (Docker, or Podman's compatible one)"),
    RuntimeSetting("user", "the wrapper's numeric UID[:GID] in the container (owns its token)"),
)
assert [s.key for s in SETTINGS] == list(_PARSERS)


def resolve(table: Mapping[str, Any] | None = None) -> RuntimeSettings:
    """Effective settings from a ``[runtime]`` table; ``ValueError`` naming the key."""
    values: dict[str, Any] = {}
    for key, raw in (table or {}).items():
        parse = _PARSERS.get(key)
        if parse is None:
            near = difflib.get_close_matches(key, _PARSERS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(
                f"runtime.{key} is not a runtime setting{hint} (known: {', '.join(_PARSERS)})"
            )
        try:
            values[key] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"runtime.{key} {exc}") from None
    return RuntimeSettings(**values)


def runtime_settings(path: Path | None = None) -> RuntimeSettings:
    """The ``[runtime]`` table of a configuration file (defaults without one)."""
    if path is None:
        return RuntimeSettings()
    table = read_toml(path).get("runtime", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [runtime] must be a table (image, memory, cpus, ...)")
    try:
        return resolve(table)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
