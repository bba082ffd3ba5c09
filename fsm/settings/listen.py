"""``--listen HOST:PORT``: parsing it, the warning when it is not loopback, and the one-line
error when it cannot be bound.

Shared by both hosts: neither speaks TLS, so binding beyond loopback sends tokens and prompts in
clear, and both say so the same way. A port in use is the operator's mistake, not a crash of
ours: both say so in one line (exit 2) naming the address and, where this machine tells, the
process that holds it, rather than a traceback of the task group that tried to bind.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from fsm.hosting.logs import JsonLog


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


BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})
"""What binding ``--listen`` can fail with that is the operator's to fix, not a bug of ours."""


def bind_error(exc: BaseException) -> OSError | None:
    """The bind failure inside ``exc`` (an ``OSError`` or a task group's exception group), if any:
    a host binds in its task group, so the ``OSError`` arrives wrapped."""
    if isinstance(exc, OSError) and exc.errno in BIND_ERRNOS:
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = bind_error(inner)
            if found is not None:
                return found
    return None


def bind_error_message(host: str, port: int, exc: OSError) -> str:
    """One line for a ``--listen`` that cannot be bound: the address, why, and for a port in use
    who holds it when this machine will say (``/proc``, else ``ss -ltnp``)."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    why = (exc.strerror or str(exc)).lower()
    message = f"--listen {address}: {why}"
    if exc.errno == errno.EADDRINUSE:
        holder = port_holder(port)
        message += f" (held by {holder})" if holder else " (by a process this user cannot see)"
        message += "; stop it or pick another port"
    elif exc.errno == errno.EADDRNOTAVAIL:
        message += " (no interface of this machine has that address)"
    elif exc.errno == errno.EACCES:
        message += " (ports below 1024 need privileges)"
    return message


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on ``port`` (``/proc/net/tcp`` and ``tcp6``)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A: LISTEN
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _process(pid: str) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    # One line whatever the argv holds (newlines of a ``python -c``, escape codes): printable
    # characters only, whitespace runs as one space, cut at 120.
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    command = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(command) > 120:
        command = command[:119] + "…"
    return f"pid {pid}: {command}" if command else f"pid {pid}"


def port_holder(port: int) -> str | None:
    """``"pid 1234: python3 -m http.server"`` for the process listening on ``port``, or None.

    Our own processes are found through ``/proc/*/fd`` (a socket's link names its inode); for
    another user's, ``ss -ltnp`` may know (as root it always does)."""
    inodes = _listening_inodes(port)
    if inodes:
        wanted = {f"socket:[{inode}]" for inode in inodes}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fds = list((proc / "fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(fd) in wanted:
                        return _process(proc.name)
                except OSError:
                    continue
    return _ss_holder(port)


def _ss_holder(port: int) -> str | None:
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        out = subprocess.run(
            [ss, "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'users:\(\("([^"]*)",pid=(\d+)', out)
    return f"pid {match.group(2)}: {match.group(1)}" if match else None
