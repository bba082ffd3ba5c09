"""``--listen HOST:PORT``: parsing it, and the warning when it is not loopback.

Shared by both hosts: neither speaks TLS, so binding beyond loopback sends tokens and prompts in
clear, and both say so the same way.
"""

from __future__ import annotations

import ipaddress
import sys

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
