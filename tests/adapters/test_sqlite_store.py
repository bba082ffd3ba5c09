"""The SQLite store keeps sessions, snapshots, messages and the event log across restarts, refuses
anything that would break the append-only, strictly increasing event log, and lets a second
connection read while one writes."""

from __future__ import annotations

import hashlib
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
    DuplicateEventError,
    EventOrderError,
    EventRow,
    InvalidValueError,
    MessageRow,
    SchemaTooNewError,
    SessionExistsError,
    SessionNotFoundError,
    SessionRow,
    SqliteStore,
    StoreError,
    hash_token,
    token_matches,
)
from fsm.engine.machine import ArmedTimer, Snapshot


def session(sid: str = "s1", created_at: float = 100.0) -> SessionRow:
    return SessionRow(
        id=sid,
        token_hash=hash_token(f"secret-token-{sid}"),
        agent_session=f"agent_{sid}",
        user_id="u1",
        workdir=f"/work/{sid}",
        state="starting",
        created_at=created_at,
        updated_at=created_at,
    )


def snapshot(state: str = "running") -> Snapshot:
    return Snapshot(
        machine="session",
        machine_id="s1",
        state=state,
        taken_at=150.0,
        timers=[ArmedTimer("stale_heartbeat", 240.0, 7), ArmedTimer("max_runtime", 1950.0, 8)],
        budgets={"wrapper_restart": [120.0, 130.5]},
        backoffs={},
        context={"wrapper_id": "w-1", "nested": {"a": [1, 2]}},
        next_token=9,
    )


def events(first: int, last: int) -> list[EventRow]:
    return [
        EventRow(i, 1000.0 + i, "event", msgspec.json.encode({"type": "text", "n": i}))
        for i in range(first, last + 1)
    ]


def ids(rows: list[EventRow]) -> list[int]:
    return [row.id for row in rows]


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


def test_a_closed_store_says_so(db_path: Path) -> None:
    s = SqliteStore(db_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        s.get_session("s1")


# -- sessions --------------------------------------------------------------------------------------


def test_session_round_trip_and_save(store: SqliteStore) -> None:
    row = session("s1")
    store.create_session(row)
    assert store.get_session("s1") == row
    assert store.get_session("nope") is None

    snap = msgspec.json.encode(snapshot())
    store.save_session(
        "s1", state="running", snapshot=snap, wrapper_id="w-1", last_seq=42, updated_at=150.0
    )
    got = store.get_session("s1")
    assert got is not None
    assert (got.state, got.wrapper_id, got.last_seq, got.updated_at) == ("running", "w-1", 42, 150)
    assert got.created_at == 100.0 and got.token_hash == row.token_hash
    assert msgspec.json.decode(got.snapshot, type=Snapshot) == snapshot()


def test_the_token_hash_stays_out_of_the_rows_repr(store: SqliteStore) -> None:
    row = session("s1")
    assert row.token_hash not in repr(row) and "token_hash='***'" in repr(row)


# -- tokens at rest --------------------------------------------------------------------------------


def test_hash_token_is_the_hex_sha256_of_the_token_and_never_raises() -> None:
    token = secrets.token_urlsafe(32)
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token_matches(token, hash_token(token))
    assert not token_matches(token + "x", hash_token(token))
    assert not token_matches("\ud800", hash_token(token))  # a header no minted token has


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


def test_a_plain_token_is_refused_by_the_store_and_by_the_schema(
    store: SqliteStore, db_path: Path
) -> None:
    token = secrets.token_urlsafe(32)
    with pytest.raises(InvalidValueError, match=r"token_hash must be hash_token\(token\)"):
        store.create_session(msgspec.structs.replace(session("s1"), token_hash=token))
    assert store.get_session("s1") is None
    store.create_session(session("s1"))
    raw = sqlite3.connect(db_path)
    try:
        for sql, params in (
            ("UPDATE sessions SET token_hash = ? WHERE id = 's1'", (token,)),
            ("UPDATE sessions SET token_hash = ? WHERE id = 's1'", ("A" * 64,)),
            ("UPDATE sessions SET token_hash = ? WHERE id = 's1'", (b"0" * 64,)),
            (
                "INSERT INTO sessions (id, token_hash, agent_session, user_id, workdir, state, "
                "created_at, updated_at) VALUES ('s2', ?, 'a', 'u', '/w', 'x', 0, 0)",
                (token,),
            ),
        ):
            with pytest.raises(sqlite3.IntegrityError, match="never the token"):
                raw.execute(sql, params)
        raw.rollback()
    finally:
        raw.close()


def test_set_token_hash_replaces_the_hash_for_a_new_wrapper(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    store.set_token_hash("s1", hash_token(new))
    got = store.get_session("s1")
    assert got is not None and token_matches(new, got.token_hash)
    assert not token_matches(old, got.token_hash)
    with pytest.raises(SessionNotFoundError, match="'ghost'"):
        store.set_token_hash("ghost", hash_token(new))
    with pytest.raises(InvalidValueError, match=r"'s1'.*token_hash.*got a 43-character string"):
        store.set_token_hash("s1", new)  # the token itself, by mistake: and not quoted
    assert token_matches(new, store.get_session("s1").token_hash)  # type: ignore[union-attr]


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


def test_sessions_are_listed_oldest_first(store: SqliteStore) -> None:
    store.create_session(session("b", created_at=2.0))
    store.create_session(session("a", created_at=3.0))
    store.create_session(session("c", created_at=1.0))
    assert [r.id for r in store.list_sessions()] == ["c", "b", "a"]


def test_creating_a_taken_id_and_saving_an_unknown_one_fail_naming_the_id(
    store: SqliteStore,
) -> None:
    store.create_session(session("s1"))
    with pytest.raises(SessionExistsError, match="'s1'"):
        store.create_session(session("s1"))
    with pytest.raises(SessionNotFoundError, match="'ghost'"):
        store.save_session(
            "ghost", state="x", snapshot=b"", wrapper_id=None, last_seq=0, updated_at=0.0
        )
    with pytest.raises(SessionNotFoundError, match="'ghost'"):
        store.append_events("ghost", events(1, 1))
    with pytest.raises(SessionNotFoundError, match="'ghost'"):
        store.save_message("ghost", MessageRow(id="m1", prompt="p", state="queued", created_at=0))
    with pytest.raises(SessionNotFoundError, match="'ghost'"):
        store.delete_session("ghost")


def test_soft_delete_hides_the_session_but_keeps_its_log(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    store.create_session(session("s2", created_at=200.0))
    store.append_events("s1", events(1, 3))
    store.save_message("s1", MessageRow(id="m1", prompt="hi", state="completed", created_at=1))

    store.delete_session("s1")
    store.delete_session("s1")  # idempotent

    assert store.get_session("s1") is None
    deleted = store.get_session("s1", include_deleted=True)
    assert deleted is not None and deleted.deleted
    assert [r.id for r in store.list_sessions()] == ["s2"]
    assert [r.id for r in store.list_sessions(include_deleted=True)] == ["s1", "s2"]
    assert ids(store.events("s1")) == [1, 2, 3]
    assert [m.id for m in store.messages("s1")] == ["m1"]
    with pytest.raises(SessionExistsError, match="deleted sessions"):
        store.create_session(session("s1"))


# -- messages --------------------------------------------------------------------------------------


def test_messages_are_upserted_and_listed_in_creation_order(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    m1 = MessageRow(
        id="m1", prompt="one", state="queued", created_at=10.0, options=b'{"model":"x"}'
    )
    m2 = MessageRow(id="m2", prompt="two", state="queued", created_at=11.0)
    store.save_message("s1", m1)
    store.save_message("s1", m2)
    done = MessageRow(
        id="m1",
        prompt="one",
        state="failed",
        reason="agent_restarted",
        error="the wrapper restarted",
        created_at=10.0,
        finished_at=20.5,
        options=b'{"model":"x"}',
    )
    store.save_message("s1", done)
    assert store.messages("s1") == [done, m2]
    assert store.messages("other") == []


def test_message_options_must_be_json(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    bad = MessageRow(id="m1", prompt="p", state="queued", created_at=1, options=b"{nope")
    with pytest.raises(StoreError, match=r"'m1'.*json_valid"):
        store.save_message("s1", bad)
    assert store.messages("s1") == []


# -- events ----------------------------------------------------------------------------------------


def test_events_resume_after_an_id_in_pages(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    store.create_session(session("s2"))
    store.append_events("s1", events(1, 4))
    store.append_events("s1", events(5, 10))
    store.append_events("s2", events(1, 2))

    assert store.events("s1") == events(1, 10)
    assert ids(store.events("s1", after=4)) == [5, 6, 7, 8, 9, 10]
    assert ids(store.events("s1", after=10)) == []
    assert ids(store.events("s2")) == [1, 2]
    assert store.last_event_id("s1") == 10
    assert store.last_event_id("s2") == 2
    assert store.last_event_id("nobody") == 0

    # The SSE endpoint's loop: pages of `limit` until a short page.
    seen: list[int] = []
    last = 3
    while True:
        page = store.events("s1", after=last, limit=3)
        seen += ids(page)
        if len(page) < 3:
            break
        last = page[-1].id
    assert seen == [4, 5, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="limit"):
        store.events("s1", limit=0)


def test_a_batch_with_a_duplicate_id_is_rejected_whole(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    store.append_events("s1", events(1, 3))

    with pytest.raises(DuplicateEventError, match=r"event id 3 is already stored.*nothing"):
        store.append_events("s1", events(3, 5))  # a batch appended twice, partly
    with pytest.raises(DuplicateEventError, match="event id 5 appears twice"):
        store.append_events("s1", [*events(4, 5), *events(5, 6)])
    with pytest.raises(StoreError, match="event 5 is not valid JSON"):
        store.append_events(
            "s1", [*events(4, 4), EventRow(5, 1.0, "event", b"{oops"), *events(6, 6)]
        )

    assert ids(store.events("s1")) == [1, 2, 3]
    store.append_events("s1", events(4, 5))  # the same ids are fine once in order
    assert store.last_event_id("s1") == 5


def test_ids_must_strictly_increase_even_without_a_duplicate(store: SqliteStore) -> None:
    store.create_session(session("s1"))
    store.append_events("s1", [*events(1, 1), *events(5, 5)])
    with pytest.raises(EventOrderError, match="not after the last stored id 5") as info:
        store.append_events("s1", events(3, 3))  # a gap fill: a client at id 5 would miss it
    assert not isinstance(info.value, DuplicateEventError)
    with pytest.raises(EventOrderError, match="comes after 7"):
        store.append_events("s1", [*events(7, 7), *events(6, 6)])
    with pytest.raises(EventOrderError, match="ids start at 1"):
        store.append_events("s1", [EventRow(0, 0.0, "x", b"{}")])
    assert ids(store.events("s1")) == [1, 5]


def test_the_log_is_append_only_for_any_writer(store: SqliteStore, db_path: Path) -> None:
    store.create_session(session("s1"))
    store.append_events("s1", events(1, 3))
    raw = sqlite3.connect(db_path)
    try:
        for sql in (
            "UPDATE events SET kind = 'x' WHERE id = 2",
            "DELETE FROM events WHERE id = 2",
            "INSERT INTO events VALUES ('s1', 2, 0.0, 'event', '{}')",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                raw.execute(sql)
        raw.rollback()
    finally:
        raw.close()
    assert store.events("s1") == events(1, 3)


# -- durability and concurrency --------------------------------------------------------------------


def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    snap = msgspec.json.encode(snapshot("waiting_for_wrapper"))
    message = MessageRow(
        id="m1",
        prompt="fix the bug",
        state="accepted",
        created_at=101.0,
        options=b'{"model":"m","auto_commit":true}',
    )
    with SqliteStore(db_path) as first:
        first.create_session(session("s1"))
        first.save_session(
            "s1",
            state="waiting_for_wrapper",
            snapshot=snap,
            wrapper_id="w-9",
            last_seq=17,
            updated_at=160.0,
        )
        first.save_message("s1", message)
        first.append_events("s1", events(1, 50))

    with SqliteStore(db_path) as second:
        got = second.get_session("s1")
        assert got is not None
        assert (got.state, got.wrapper_id, got.last_seq) == ("waiting_for_wrapper", "w-9", 17)
        restored = msgspec.json.decode(got.snapshot, type=Snapshot)
        assert restored == snapshot("waiting_for_wrapper")
        assert [t.deadline for t in restored.timers] == [240.0, 1950.0]
        assert second.messages("s1") == [message]
        assert second.events("s1", limit=1000) == events(1, 50)
        assert second.last_event_id("s1") == 50


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


def test_throughput_of_appending_events_in_batches(
    store: SqliteStore, capsys: pytest.CaptureFixture[str]
) -> None:
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
    with capsys.disabled():
        print(
            f"\n[sqlite store] appended {total} events in batches of {batch}: "
            f"{elapsed:.3f} s, {total / elapsed:,.0f} events/s"
        )
