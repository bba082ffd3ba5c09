"""The two stores behind the store port, as one parametrised ``backend`` fixture.

A ``Backend`` opens stores on one database (a file for SQLite, a fresh database of the
throwaway cluster for PostgreSQL: ``tests/postgres_support.py``) and runs raw SQL as "any other
writer" would, so the contract suite can check what the schema itself refuses.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.store.base import Store
from adapters.store.sqlite import SqliteStore
from tests.postgres_support import Cluster, postgres_cluster, postgres_dsn

__all__ = ["Backend", "backend", "postgres_cluster", "postgres_dsn", "store"]


@dataclass
class Backend:
    kind: str
    """``sqlite`` or ``postgres``."""
    opener: Callable[..., Store]
    raw_error: type[Exception]
    """What the database raises when its schema refuses a raw write."""
    _raw: Callable[[str, tuple[Any, ...]], None]
    _rows: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]
    opened: list[Store] = field(default_factory=list)
    cluster: Cluster | None = None
    dsn: str = ""

    def open(self, **options: Any) -> Store:
        store = self.opener(**options)
        self.opened.append(store)
        return store

    def raw(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Run one statement as another writer would (its own connection, autocommit)."""
        self._raw(sql, params)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read as another connection would: what was committed, nothing of an open batch."""
        return self._rows(sql, params)

    def session_tables(self) -> list[str]:
        """Every table whose rows reference ``sessions(id)`` (by foreign key), by name."""
        if self.kind == "sqlite":
            tables = [
                str(r[0]) for r in self.rows("SELECT name FROM sqlite_master WHERE type = 'table'")
            ]
            return sorted(
                t
                for t in tables
                if any(fk[2] == "sessions" for fk in self.rows(f"PRAGMA foreign_key_list({t})"))
            )
        return sorted(
            str(r[0])
            for r in self.rows(
                "SELECT conrelid::regclass::text FROM pg_constraint "
                "WHERE contype = 'f' AND confrelid = 'sessions'::regclass"
            )
        )

    @property
    def holds_nul(self) -> bool:
        """Whether text may contain U+0000 (SQLite's may; PostgreSQL's text cannot)."""
        return self.kind == "sqlite"


def _sqlite(tmp_path: Path) -> Backend:
    path = tmp_path / "state" / "control.sqlite"

    def raw(sql: str, params: tuple[Any, ...]) -> None:
        db = sqlite3.connect(path)
        try:
            db.execute(sql.replace("%s", "?"), params)
            db.commit()
        finally:
            db.close()

    def rows(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(path)
        try:
            return list(db.execute(sql.replace("%s", "?"), params).fetchall())
        finally:
            db.close()

    return Backend("sqlite", lambda **o: SqliteStore(path, **o), sqlite3.IntegrityError, raw, rows)


def _postgres(request: pytest.FixtureRequest) -> Backend:
    import psycopg

    from adapters.store.postgres import PostgresStore

    dsn: str = request.getfixturevalue("postgres_dsn")

    def raw(sql: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(sql, params)  # type: ignore[arg-type]

    def rows(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(dsn, autocommit=True) as db:
            return db.execute(sql, params).fetchall()  # type: ignore[arg-type]

    backend = Backend(
        "postgres",
        lambda **o: PostgresStore(dsn, **o),
        psycopg.errors.IntegrityError,
        raw,
        rows,
        cluster=request.getfixturevalue("postgres_cluster"),
        dsn=dsn,
    )
    return backend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = _sqlite(tmp_path) if request.param == "sqlite" else _postgres(request)
    yield b
    for store in b.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()
