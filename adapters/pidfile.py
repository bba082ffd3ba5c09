"""Pidfiles that survive pid reuse: the pid plus the kernel's start time of that process.

Both the Kilo adapter (a Kilo left by a crashed wrapper) and the local runtime (a wrapper left by a
crashed control plane) must find what a previous owner left running, and must never signal an
unrelated process that happens to have been given the same pid since.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell reuse from survival."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat.rsplit(")", 1)[1].split()
    if fields and fields[0] == "Z":
        return None  # a zombie has exited; only its parent's wait is missing
    return int(fields[19])


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "start_time": process_start_time(pid)}))


def remove_pidfile(path: Path, pid: int) -> None:
    """Remove ``path`` only if it still names ``pid`` (a successor may have rewritten it)."""
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def live_pid(path: Path) -> tuple[int, int] | None:
    """(pid, start time) if the pidfile names a process that is still the one it recorded."""
    try:
        data = json.loads(path.read_text())
        pid, start = int(data["pid"]), data.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if start is None or process_start_time(pid) != start:
        return None
    return pid, int(start)


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_stale_group(pidfile: Path) -> bool:
    """Kill the group a previous owner left behind, if its pidfile still names a live process."""
    found = live_pid(pidfile)
    if found is not None:
        signal_group(found[0], signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return found is not None
