"""A real ``fsm-agent control`` replica on PostgreSQL for tests and benches, and lease reads.

The replica runs ``--runtime external`` (its wrappers are whoever the caller starts); the
database password goes in ``PGPASSWORD`` (the replica takes it out of its environment), never in
argv, exactly as an operator would give it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.control_process import API_KEY, free_port, wait_for


class Replica:
    def __init__(self, tmp: Path, name: str, dsn: str, password: str, config: Path) -> None:
        self.name, self.port = name, free_port()
        self.log_path = tmp / f"{name}.log"
        command = [
            sys.executable, "-m", "fsm", "control",
            "--listen", f"127.0.0.1:{self.port}",
            "--db", dsn,
            "--replica-id", name,
            "--runtime", "external",
            "--state-dir", str(tmp / name / "state"),
            "--workspaces", str(tmp / name / "spaces"),
            "--config", str(config),
        ]  # fmt: skip
        env = {**os.environ, "FSM_AGENT_API_KEY": API_KEY, "PGPASSWORD": password}
        with self.log_path.open("ab") as err:
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
            )
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=10,
        )
        wait_for(f"{name} to listen", lambda: self.said("control plane listening") or self.dead())
        assert not self.dead(), self.tail()

    def dead(self) -> bool:
        return self.process.poll() is not None

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"message": raw})
        return out

    def said(self, message: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("message") == message]

    def tail(self) -> str:
        return f"--- {self.name}\n" + "\n".join(self.log_path.read_text().splitlines()[-30:])

    def stop(self) -> None:
        if not self.dead():
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.http.close()


def split_password(dsn: str) -> tuple[str, str]:
    parts = dsn.split()
    password = next(p.split("=", 1)[1] for p in parts if p.startswith("password="))
    return " ".join(p for p in parts if not p.startswith("password=")), password


def leases(dsn: str, db: Any = None) -> dict[str, tuple[str | None, float, float, int]]:
    """Every lease as ``(owner, expires_at, the database's now, epoch)``. ``db``: an open
    autocommit psycopg connection to poll with (a poll every 50 ms that connects anew each time
    is load of its own on a busy machine); None connects once for this read."""
    import psycopg

    query = (
        "SELECT session_id, owner, expires_at, extract(epoch FROM clock_timestamp()), epoch "
        "FROM leases"
    )
    if db is None:
        with psycopg.connect(dsn) as own:
            rows = own.execute(query).fetchall()
    else:
        rows = db.execute(query).fetchall()
    return {r[0]: (r[1], float(r[2]), float(r[3]), int(r[4])) for r in rows}
