"""Settings of ``fsm-agent serve``: identity from flags, everything else from one TOML file.

Identity (``--agent-session``, ``--user-id``, ``--session-id``) is fixed for the life of the
process; per-execution settings arrive with each prompt. The config file holds timer overrides
(``[timers]``), the outbox bounds (``[outbox]``) and Kilo's own configuration (``[kilo.config]``,
passed verbatim as ``KILO_CONFIG_CONTENT``: providers, models, permissions), plus
``[kilo] pass_env = [...]``: the only variables of the wrapper's environment Kilo gets beyond its
allow-list (``adapters/kilo/process.py``), for keys its config names with ``{env:NAME}``.
``[kilo] user = "agent"`` (or ``FSM_AGENT_KILO_USER``, which the container image sets) runs Kilo
and its tools as that user instead of the wrapper's own (``kilo_run_as``), with Kilo's state under
``[kilo] state_dir`` (or ``FSM_AGENT_KILO_STATE_DIR``; the image's ``/var/lib/kilo``) and its
config home, read-only to that user, at ``[kilo] config_home`` (or ``FSM_AGENT_KILO_CONFIG_HOME``).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from adapters.kilo.process import RunAs
from fsm.config import ConfigError, read_toml, timer_values
from fsm.limits import LimitValues, defaults
from fsm.logs import JsonLog
from fsm.timers import TimerValues


class ServeSettings(msgspec.Struct, kw_only=True):
    agent_session: str
    user_id: str
    session_id: str
    ingest_url: str
    token: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    workdir: Path
    state_dir: Path
    kilo_bin: str | None = None
    kilo_config: dict[str, Any] = msgspec.field(default_factory=dict)
    kilo_pass_env: list[str] = []
    """Names of variables handed to Kilo from our environment (``[kilo] pass_env``); the caller
    of ``start_kilo`` passes them as ``pass_env``. Kilo and every tool it runs can read them."""
    kilo_run_as: RunAs | None = None
    """The user Kilo and its tools run as (``[kilo] user``, else ``KILO_USER_ENV``); None: ours."""
    outbox_frames: int = 1000
    outbox_bytes: int = 8 * 1024 * 1024
    flush_bound: float = 3.0
    version: str | None = None
    wrapper_id: str | None = None
    limits: LimitValues = msgspec.field(default_factory=defaults)


KILO_USER_ENV = "FSM_AGENT_KILO_USER"
"""Kilo's user when the config file names none: the image sets it to ``agent``."""
KILO_CONFIG_HOME_ENV = "FSM_AGENT_KILO_CONFIG_HOME"
"""Kilo's config home when the config file does not say (``RunAs.config_home``): the image sets
``/opt/kilo/config``, root's and empty, which Kilo reads but the agent cannot write."""
KILO_STATE_ENV = "FSM_AGENT_KILO_STATE_DIR"
"""Where that user keeps Kilo's state when the config file does not say: the image sets it to
``/var/lib/kilo`` (that user's, 0700), the mount point for a volume that outlives containers."""


def kilo_run_as(
    section: dict[str, Any], path: Path | None, environ: dict[str, str] | None = None
) -> RunAs | None:
    """``[kilo] user``, else ``FSM_AGENT_KILO_USER``, as a passwd entry, with ``[kilo] state_dir``
    and ``config_home`` (else ``FSM_AGENT_KILO_STATE_DIR``, ``FSM_AGENT_KILO_CONFIG_HOME``); None
    when no user is set, it is empty or our own uid (nothing to switch). ConfigError naming the
    key when the user does not exist or a path is not absolute."""
    env = os.environ if environ is None else environ
    user = section.get("user")
    where = f"{path}: kilo.user"
    if user is None:
        user = env.get(KILO_USER_ENV, "")
        where = KILO_USER_ENV
    if not isinstance(user, str):
        raise ConfigError(f"{where} must be a user name")
    if not user:
        return None
    paths: list[Path | None] = []
    for key, variable in (("state_dir", KILO_STATE_ENV), ("config_home", KILO_CONFIG_HOME_ENV)):
        value = section.get(key)
        named = f"{path}: kilo.{key}"
        if value is None:
            value, named = env.get(variable) or None, variable
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value)):
            raise ConfigError(f"{named} must be an absolute path, got {value!r}")
        paths.append(Path(value) if value else None)
    try:
        run_as = RunAs.lookup(user, *paths)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return None if run_as.uid == os.geteuid() else run_as


class FileSettings(msgspec.Struct, forbid_unknown_fields=True):
    """One file serves both sides: the control plane passes its own to the wrappers it starts."""

    timers: dict[str, Any] = {}
    outbox: dict[str, int] = {}
    kilo: dict[str, Any] = {}
    control: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    """The control plane's container runtime (``fsm.runtime_settings``); unused by a wrapper."""


def load_file(path: Path | None) -> tuple[FileSettings, TimerValues]:
    if path is None:
        return FileSettings(), timer_values()["wrapper"]
    data = read_toml(path)
    try:
        file_settings = msgspec.convert(data, FileSettings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = set(file_settings.outbox) - {"max_frames", "max_bytes"}
    if unknown:
        raise ConfigError(
            f"{path}: outbox.{sorted(unknown)[0]} is not a setting (known: max_frames, max_bytes)"
        )
    return file_settings, timer_values(path)["wrapper"]


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen: expected HOST:PORT (e.g. 127.0.0.1:8080), got {value!r}")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen: port {number} is out of range 0-65535")
    return host.strip("[]"), number


EXPOSED_WARNING = (
    "listening on {host} without TLS: put a TLS-terminating proxy in front; tokens and prompts "
    "cross the network in clear"
)


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (also as ``::ffff:127.x``): what only this
    machine can reach. Any other name or address (``0.0.0.0``, ``::``, a host name) may be
    reachable from the network."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def exposure_warning(host: str) -> str | None:
    """The warning to print (and log) when binding ``host`` sends secrets over a network in
    clear; None on loopback. Neither host speaks TLS itself: bearer tokens, the ingest link's
    frames and every prompt would travel readable by anyone on the path."""
    return None if is_loopback(host) else EXPOSED_WARNING.format(host=host)


def warn_if_exposed(host: str, log: JsonLog) -> None:
    """One human line on stderr and one log line when ``host`` is not loopback."""
    warning = exposure_warning(host)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
        log.warning(warning, host=host)
