"""What only the SQLite store does: one file in WAL mode, its own schema versions (migration 2
hashed the tokens at rest), nothing of a token on disk, readers that never block the writer.
What every store does is the contract suite's (tests/adapters/store/test_store_contract.py)."""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.store.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    EventRow,
    SchemaTooNewError,
    SqliteStore,
    StoreError,
    hash_token,
    token_matches,
)
from tests.adapters.store.helpers import events, ids, session


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "control.sqlite"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(db_path) as s:
        yield s


# -- opening ---------------------------------------------------------------------------------------


def test_open_creates_the_file_in_wal_mode_with_the_current_schema(
    store: SqliteStore, db_path: Path
) -> None:
    assert db_path.exists()
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"schema_version", "sessions", "messages", "events"} <= tables
    finally:
        raw.close()
    # synchronous and foreign_keys are per connection: look at the store's own.
    conn = store._connection()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reopening_keeps_the_schema_and_does_not_migrate_twice(db_path: Path) -> None:
    SqliteStore(db_path).close()
    with SqliteStore(db_path) as again:
        rows = again._connection().execute("SELECT version FROM schema_version").fetchall()
        assert rows == [(SCHEMA_VERSION,)]


def test_a_file_from_a_newer_schema_is_refused_with_what_to_do(db_path: Path) -> None:
    SqliteStore(db_path).close()
    raw = sqlite3.connect(db_path)
    raw.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    raw.commit()
    raw.close()
    with pytest.raises(SchemaTooNewError, match=r"newer than .* upgrade fsm-agent"):
        SqliteStore(db_path)


def test_a_file_that_is_not_a_database_is_refused_naming_it(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt.*fsm-agent SQLite file"):
        SqliteStore(junk)


# -- tokens at rest --------------------------------------------------------------------------------


def test_only_the_hash_of_a_token_is_stored(store: SqliteStore, db_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    store.create_session(msgspec.structs.replace(session("s1"), token_hash=hash_token(token)))
    got = store.get_session("s1")
    assert got is not None and token_matches(token, got.token_hash)
    raw = sqlite3.connect(db_path)
    try:
        columns = [r[1] for r in raw.execute("PRAGMA table_info(sessions)")]
        assert "token" not in columns and "token_hash" in columns
    finally:
        raw.close()
    on_disk = db_path.read_bytes() + Path(f"{db_path}-wal").read_bytes()
    assert hash_token(token).encode() in on_disk and token.encode() not in on_disk


def test_the_schema_refuses_a_token_hash_stored_as_a_blob(
    store: SqliteStore, db_path: Path
) -> None:
    # SQLite's columns take any type: the trigger checks typeof(), which PostgreSQL's text does not
    # need (the contract suite checks the rest of what the schema refuses, for both).
    store.create_session(session("s1"))
    raw = sqlite3.connect(db_path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="never the token"):
            raw.execute("UPDATE sessions SET token_hash = ? WHERE id = 's1'", (b"0" * 64,))
        raw.rollback()
    finally:
        raw.close()


@pytest.mark.parametrize("secure_delete", ["ON", "OFF"])
def test_migration_2_replaces_each_stored_token_by_its_hash(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, secure_delete: str
) -> None:
    # SQLite's default for secure_delete is a build option (Debian's is ON): try both, since
    # with OFF the bytes a row update frees keep the old token until the space is reused.
    connect = sqlite3.connect

    def connect_with_default(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(*args, **kwargs)
        db.execute(f"PRAGMA secure_delete={secure_delete}")
        return db

    monkeypatch.setattr(sqlite3, "connect", connect_with_default)
    # A file as fsm-agent wrote it at schema version 1, with plain tokens.
    tokens = {f"s{i}": secrets.token_urlsafe(32) for i in range(50)}
    db_path.parent.mkdir()
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("BEGIN")
    for statement in MIGRATIONS[0]:
        raw.execute(statement)
    raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    raw.execute("INSERT INTO schema_version (version) VALUES (1)")
    for sid, token in tokens.items():
        raw.execute(
            "INSERT INTO sessions (id, token, agent_session, user_id, workdir, state, "
            "created_at, updated_at) VALUES (?, ?, 'a', 'u', '/w', 'running', 1, 1)",
            (sid, token),
        )
    raw.execute("INSERT INTO events VALUES ('s1', 1, 1.0, 'event', '{}')")
    raw.execute("COMMIT")
    raw.close()

    with SqliteStore(db_path) as store:
        assert store._connection().execute("SELECT version FROM schema_version").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        for sid, token in tokens.items():
            row = store.get_session(sid)
            assert row is not None and row.token_hash == hash_token(token)
        assert ids(store.events("s1")) == [1]
        # No copy of a token is left in the file or its WAL, even before the store closes.
        on_disk = db_path.read_bytes() + Path(f"{db_path}-wal").read_bytes()
        assert [sid for sid, token in tokens.items() if token.encode() in on_disk] == []
        store.create_session(session("new"))  # and the migrated file takes new rows


# -- durability and concurrency --------------------------------------------------------------------


def test_a_second_connection_reads_committed_rows_while_one_writes(db_path: Path) -> None:
    with SqliteStore(db_path) as writer, SqliteStore(db_path) as reader:
        writer.create_session(session("s1"))
        writer.append_events("s1", events(1, 5))
        assert ids(reader.events("s1")) == [1, 2, 3, 4, 5]

        # WAL: a reader inside a long read transaction neither blocks the writer nor sees
        # half of its work; once it ends, it sees everything committed.
        raw = sqlite3.connect(db_path, isolation_level=None)
        try:
            raw.execute("BEGIN")
            assert raw.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 5
            writer.append_events("s1", events(6, 10))  # does not wait for the reader
            assert raw.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 5
            raw.execute("COMMIT")
            assert raw.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 10
        finally:
            raw.close()
        assert reader.last_event_id("s1") == 10


def test_throughput_of_appending_events_in_batches(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    batch, total = 100, 10_000
    data = msgspec.json.encode({"type": "message.part.updated", "text": "x" * 200})
    started = time.perf_counter()
    for first in range(1, total + 1, batch):
        store.append_events(
            "s1", [EventRow(i, float(i), "event", data) for i in range(first, first + batch)]
        )
    elapsed = time.perf_counter() - started
    assert store.last_event_id("s1") == total
    # The figure goes to the log (pytest shows it with the test's failure, or with
    # --log-cli-level=INFO), not into the suite's progress line; `just bench` is the place for
    # throughput figures.
    logging.getLogger(__name__).info(
        "[sqlite store] appended %d events in batches of %d: %.3f s, %.0f events/s",
        total,
        batch,
        elapsed,
        total / elapsed,
    )
