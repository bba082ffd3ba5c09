"""Reading the secrets the hosts start with, from anywhere but the command line.

The agent a wrapper runs is untrusted: it executes arbitrary code as the wrapper's user, and a
prompt-injected agent uses whatever it can reach. Where a secret can come from, and why:

* **Never argv.** ``ps`` and ``/proc/<pid>/cmdline`` show it to every local user. ``--token`` and
  ``--api-key`` with a value are refused with a message pointing here.
* **A file** (``--token-file``, ``--api-key-file``): it must be a regular file owned by us with no
  permission beyond 0600, checked on the opened descriptor (no race with a swapped path, and a
  symlink is refused). The wrapper's token file is single-use: it is removed once read, so the
  secret is not left on disk for the agent to find. The control plane's key file is the
  operator's and stays.
* **An inherited descriptor** (``--token-fd``): the parent writes the token into a pipe, closes
  its end and passes the read end; nothing on disk, in the environment or in argv. This is how
  ``LocalRuntime`` hands each wrapper its token. The descriptor is read to EOF and closed.
* **The environment, last resort** (``FSM_AGENT_TOKEN``, ``FSM_AGENT_API_KEY``): read, then removed
  from ``os.environ`` so no child (Kilo, the tools it runs) inherits it. The kernel still shows
  the *original* environment in ``/proc/<pid>/environ`` to anyone of the same uid; hence
  ``make_undumpable``, which makes that file (and ``/proc/<pid>/mem``, and ptrace) root-only.

As root (CI) none of this is a boundary: root reads every process. The boundary that holds
against a same-host agent is the separate container user the agent runs as (another issue); this
module keeps the secrets out of the places a same-uid agent would look first.

Stdlib only on purpose: a test runs it under a plain interpreter as an unprivileged user.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import MutableMapping
from pathlib import Path

__all__ = [
    "API_KEY_ENV",
    "MAX_SECRET_BYTES",
    "TOKEN_ENV",
    "SecretInputError",
    "control_api_key",
    "dumpable",
    "make_undumpable",
    "read_secret_fd",
    "read_secret_file",
    "serve_token",
]

TOKEN_ENV = "FSM_AGENT_TOKEN"
"""The wrapper's token, when neither ``--token-file`` nor ``--token-fd`` gives it."""
API_KEY_ENV = "FSM_AGENT_API_KEY"
"""The control plane's client API key, when ``--api-key-file`` does not give it."""
MAX_SECRET_BYTES = 64 * 1024
"""A token is a few dozen bytes; more is the wrong file or a descriptor that never ends."""

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


class SecretInputError(Exception):
    """The secret could not be read; the message names the flag or variable (exit 2)."""


def read_secret_file(path: Path, *, flag: str, unlink: bool = False) -> str:
    """The stripped contents of ``path``, which must be ours and 0600 or stricter.

    With ``unlink`` the file is removed once read (single-use); if that fails the secret is still
    returned and a warning says so on stderr, since the process can do its job.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretInputError(f"{flag} {path}: cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretInputError(f"{flag} {path}: not a regular file")
        if info.st_uid != os.geteuid():
            raise SecretInputError(
                f"{flag} {path}: owned by uid {info.st_uid}, not by us (uid {os.geteuid()})"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~0o600:
            raise SecretInputError(
                f"{flag} {path}: mode {mode:04o} lets others at it; it must be 0600 or stricter "
                f"(chmod 600 {path})"
            )
        secret = _read_all(fd, flag, str(path))
    finally:
        os.close(fd)
    if unlink:
        try:
            path.unlink()
        except OSError as exc:
            print(
                f"warning: {flag} {path}: cannot remove it after reading "
                f"({exc.strerror or exc}); it is single-use: remove it",
                file=sys.stderr,
            )
    return secret


def read_secret_fd(fd: int, *, flag: str) -> str:
    """The stripped contents of descriptor ``fd``, read to EOF; the descriptor is closed."""
    try:
        os.fstat(fd)
    except OSError:
        raise SecretInputError(f"{flag} {fd}: not an open file descriptor") from None
    try:
        if os.isatty(fd):
            raise SecretInputError(f"{flag} {fd}: is a terminal, not a pipe or file")
        return _read_all(fd, flag, str(fd))
    finally:
        os.close(fd)


def _read_all(fd: int, flag: str, name: str) -> str:
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:  # a non-blocking regular file never says this; be safe
            continue
        except OSError as exc:
            raise SecretInputError(f"{flag} {name}: cannot read: {exc.strerror or exc}") from None
        if not chunk:
            break
        total += len(chunk)
        if total > MAX_SECRET_BYTES:
            raise SecretInputError(f"{flag} {name}: more than {MAX_SECRET_BYTES} bytes")
        chunks.append(chunk)
    try:
        secret = b"".join(chunks).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretInputError(f"{flag} {name}: not UTF-8 text") from None
    if not secret:
        raise SecretInputError(f"{flag} {name}: is empty")
    return secret


def _from_env(value: str | None, name: str, missing: str) -> str:
    if value is None:
        raise SecretInputError(missing)
    if not value.strip():
        raise SecretInputError(f"{name} is empty")
    return value.strip()


def serve_token(
    *,
    token_file: Path | None,
    token_fd: int | None,
    environ: MutableMapping[str, str] | None = None,
) -> str:
    """The wrapper's token from ``--token-file``, ``--token-fd`` or, last, ``FSM_AGENT_TOKEN``.

    ``FSM_AGENT_TOKEN`` is removed from ``environ`` (``os.environ``) whichever source is used, so
    that no child inherits it.
    """
    env = os.environ if environ is None else environ
    from_env = env.pop(TOKEN_ENV, None)
    if token_file is not None and token_fd is not None:
        raise SecretInputError("give one of --token-file and --token-fd, not both")
    if token_file is not None:
        return read_secret_file(token_file, flag="--token-file", unlink=True)
    if token_fd is not None:
        return read_secret_fd(token_fd, flag="--token-fd")
    return _from_env(
        from_env,
        TOKEN_ENV,
        f"no token: give --token-file PATH, --token-fd N or the {TOKEN_ENV} environment variable",
    )


def control_api_key(
    *, api_key_file: Path | None, environ: MutableMapping[str, str] | None = None
) -> str:
    """The control plane's API key from ``--api-key-file`` (kept) or ``FSM_AGENT_API_KEY``.

    ``FSM_AGENT_API_KEY`` is removed from ``environ`` either way: nothing the control plane starts
    may inherit the key that drives every session.
    """
    env = os.environ if environ is None else environ
    from_env = env.pop(API_KEY_ENV, None)
    if api_key_file is not None:
        return read_secret_file(api_key_file, flag="--api-key-file", unlink=False)
    return _from_env(
        from_env,
        API_KEY_ENV,
        f"no API key: give --api-key-file PATH or the {API_KEY_ENV} environment variable",
    )


def _prctl() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)``: True if this process is now undumpable (Linux only).

    An undumpable process's ``/proc/<pid>/{environ,mem,maps,fd,...}`` belong to root and ptrace by
    a same-uid process is refused, so an agent running as our user cannot read the token from our
    memory or our original environment. It also means no core dumps. ``execve`` resets the flag,
    so Kilo and the tools it runs are ordinary (dumpable) processes again. As root this is no
    boundary at all (CAP_SYS_PTRACE passes it); the separate container user is.
    """
    prctl = _prctl()
    if prctl is None:
        return False
    return int(prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0


def dumpable() -> int | None:
    """``prctl(PR_GET_DUMPABLE)``: 0 once ``make_undumpable`` ran; None off Linux."""
    prctl = _prctl()
    return None if prctl is None else int(prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))
