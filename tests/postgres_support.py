"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, 127.0.0.1 only, a free port.

``postgres_cluster`` (a session fixture) yields a running ``Cluster``, or skips the test with a
one-line reason saying what is missing — never silently. With ``FSM_AGENT_REQUIRE_POSTGRES=1`` a
missing PostgreSQL fails the test instead (for a CI that must run these). ``postgres_dsn`` gives
each test a fresh, empty database of that cluster and drops it afterwards.

The server refuses to run as root, so when the tests run as root (CI does) ``initdb`` and
``pg_ctl`` run as the ``postgres`` system user through ``runuser``, in a folder it owns. The
cluster authenticates with scram-sha-256 and a random password written to a 0600 file for
``initdb --pwfile`` (never in argv); the password is only in the DSN this process hands psycopg.
It listens on 127.0.0.1 and a unix socket inside its own folder, nowhere else. ``fsync`` is off:
a throwaway cluster need not survive a power cut, and a clean ``pg_ctl stop`` (what ``restart``
does) still writes everything out, so "nothing accepted is lost across a restart" is tested.

With pytest-xdist each worker starts its own cluster (about a second): simpler than sharing one
through a lock, and a test that restarts its cluster disturbs no other worker.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["REQUIRE_ENV", "Cluster", "find_bindir", "postgres_cluster", "postgres_dsn"]

REQUIRE_ENV = "FSM_AGENT_REQUIRE_POSTGRES"
_SEARCH = "/usr/lib/postgresql"


def find_bindir() -> Path | None:
    """The folder holding ``initdb``/``pg_ctl``/``postgres``: Debian's newest, else on PATH."""
    root = Path(_SEARCH)
    if root.is_dir():
        versions = sorted(
            (p for p in root.iterdir() if (p / "bin" / "pg_ctl").exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else 0,
        )
        if versions:
            return versions[-1] / "bin"
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One initdb'd data folder and the server on it; ``dsn(db)`` is what psycopg connects to."""

    def __init__(self, bindir: Path, *, durable: bool = False) -> None:
        """``durable``: fsync as a production server does (the bench); tests need not."""
        self.bindir = bindir
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="fsm-pg-"))
        self.data = self.root / "data"
        self.user = "postgres"
        self.password = secrets.token_urlsafe(24)
        self.port = 0
        self._as: list[str] = []
        self._uid: int | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")  # KeyError: no such user, the caller skips
            self._uid = entry.pw_uid
            self._as = ["runuser", "-u", "postgres", "--"]
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(self.password + "\n")
        if self._uid is not None:
            os.chown(pwfile, self._uid, -1)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        pwfile.unlink()

    def _run(self, tool: str, *args: str) -> str:
        done = subprocess.run(
            [*self._as, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout

    def start(self) -> None:
        """Start the server; a fresh port the first time, the same one on a restart."""
        for attempt in itertools.count():
            port = self.port or _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {self.root} "
                "-c max_connections=60 -c shared_buffers=32MB"
            )
            if not self.durable:
                options += " -c fsync=off -c full_page_writes=off"
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                    "-t", "30", "-o", options, "start",
                )  # fmt: skip
            except RuntimeError:
                if self.port or attempt >= 2:  # a port taken meanwhile: try another, twice
                    raise RuntimeError(f"{self.log_tail()}") from None
                continue
            self.port = port
            return

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are cut off, everything committed is written)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", mode, "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def pids(self) -> list[int]:
        """The postmaster and every process it forked (a backend per connection, the writers)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
        return [postmaster, *map(int, children)]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The whole server SIGSTOPped (a host paused, a server that stopped answering without
        closing a connection), then SIGCONTed. Queries in flight and new connections hang."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def dsn(self, dbname: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} "
            f"dbname={dbname} connect_timeout=5"
        )

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"PostgreSQL is required here ({REQUIRE_ENV}=1) but {reason}")
    pytest.skip(f"PostgreSQL not available: {reason} (scripts/setup-postgres.sh installs it)")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A running throwaway cluster for the whole test session (one per xdist worker)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[dev]')")
    bindir = find_bindir()
    if bindir is None:
        _unavailable(f"no pg_ctl under {_SEARCH}/*/bin or on PATH")
    try:
        cluster = Cluster(bindir)
    except KeyError:
        _unavailable("running as root and there is no 'postgres' user to run the server as")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"initdb failed: {str(exc).splitlines()[0][:200]}")
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        cluster.destroy()
        _unavailable(f"the server did not start: {str(exc)[-300:]}")
    yield cluster
    cluster.destroy()


_databases = itertools.count(1)


@pytest.fixture
def postgres_dsn(postgres_cluster: Cluster) -> Iterator[str]:
    """A fresh empty database for one test, dropped (connections and all) when it ends."""
    import psycopg

    name = f"t{os.getpid()}_{next(_databases)}"
    with psycopg.connect(postgres_cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield postgres_cluster.dsn(name)
    with (
        contextlib.suppress(psycopg.Error),
        psycopg.connect(postgres_cluster.dsn(), autocommit=True) as admin,
    ):
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
