"""``SqliteStore.batch`` on a full disk: SQLite rolls back a statement or the whole transaction,
and the store says which (``BatchAbortedError``), so nothing lost is acknowledged. What every
store's batches and savepoints do is the contract suite's (tests/adapters/store/)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from adapters.store.sqlite import (
    BatchAbortedError,
    EventRow,
    MessageRow,
    SqliteStore,
    StoreUnavailableError,
)
from tests.adapters.store.helpers import events, ids, session


def _count(path: Path) -> int:
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT count(*) FROM events").fetchone()[0])


# -- savepoints: one session's failure stays that session's ----------------------------------------


def _write_session(store: SqliteStore, sid: str) -> None:
    """What the host writes for one dirty session: a message, the snapshot, new events."""
    store.save_message(sid, MessageRow(id=f"m-{sid}", prompt="go", state="queued", created_at=5))
    store.save_session(
        sid, state="running", snapshot=b"{}", wrapper_id="w", last_seq=7, updated_at=9.0
    )
    store.append_events(sid, events(4, 5))


def _stored(path: Path, sid: str) -> tuple[str, list[int], list[str]]:
    """A session as another connection sees it: only what was committed."""
    with SqliteStore(path) as other:
        row = other.get_session(sid)
        assert row is not None
        return row.state, ids(other.events(sid)), [m.id for m in other.messages(sid)]


def _fill_the_disk(store: SqliteStore) -> None:
    """SQLite's own "database or disk is full" from the next few pages on."""
    db = store._connection()
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0] + 4}")


def _make_room(store: SqliteStore) -> None:
    store._connection().execute("PRAGMA max_page_count = 1073741823")


def _append_too_much(store: SqliteStore) -> None:
    _fill_the_disk(store)
    store.append_events("B", [EventRow(6, 6.0, "event", b'{"t":"' + b"x" * 100_000 + b'"}')])


def test_a_full_disk_in_one_sessions_savepoint_keeps_none_of_it_and_the_others_commit(
    tmp_path: Path,
) -> None:
    # The contract suite's bad writes, with SQLite's own "database or disk is full" (the events
    # INSERT fires a trigger, so SQLite keeps a statement journal and undoes only the statement).
    error, bad_write = StoreUnavailableError, _append_too_much
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        for sid in "ABC":
            store.create_session(session(sid))
            store.append_events(sid, events(1, 3))
        with store.batch("flush"):
            with store.savepoint("store session A"):
                _write_session(store, "A")
            with pytest.raises(error), store.savepoint("store session B"):
                _write_session(store, "B")  # all fine so far...
                bad_write(store)  # ...until this one
            _make_room(store)
            with store.savepoint("store session C"):
                _write_session(store, "C")
        assert _stored(path, "A") == ("running", [1, 2, 3, 4, 5], ["m-A"])
        assert _stored(path, "B") == ("starting", [1, 2, 3], [])  # nothing of that attempt
        assert _stored(path, "C") == ("running", [1, 2, 3, 4, 5], ["m-C"])
        _write_session(store, "B")  # and the store goes on working
        assert _stored(path, "B") == ("running", [1, 2, 3, 4, 5], ["m-B"])


def test_a_full_disk_mid_batch_can_void_the_whole_batch_and_every_write_after_says_so(
    tmp_path: Path,
) -> None:
    # On SQLITE_FULL, SQLite rolls back only the statement if it keeps a statement journal (the
    # events INSERT, which fires a trigger: see the case above) and otherwise the whole
    # transaction (the messages upsert, the sessions UPDATE): session A's writes, made before,
    # are then gone too, so nobody may acknowledge them.
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        for sid in "ABC":
            store.create_session(session(sid))
        huge = MessageRow(id="m-B", prompt="x" * 100_000, state="queued", created_at=5)
        with (
            pytest.raises(BatchAbortedError, match="nothing of the batch was written"),
            store.batch("flush"),
        ):
            with store.savepoint("store session A"):
                _write_session(store, "A")
            _fill_the_disk(store)
            with (
                pytest.raises(BatchAbortedError, match=r"full.*whole batch \(flush\)") as b,
                store.savepoint("store session B"),
            ):
                store.save_message("B", huge)
            assert isinstance(b.value.__cause__, StoreUnavailableError)
            _make_room(store)
            with pytest.raises(BatchAbortedError, match="void"), store.savepoint("session C"):
                _write_session(store, "C")
            with pytest.raises(BatchAbortedError, match="void"):
                _write_session(store, "C")  # even without a savepoint: no autocommit
        for sid in "ABC":
            assert _stored(path, sid) == ("starting", [], [])
        _write_session(store, "A")  # and the store works again
        assert _stored(path, "A") == ("running", [4, 5], ["m-A"])
