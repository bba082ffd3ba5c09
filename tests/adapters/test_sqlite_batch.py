"""``SqliteStore.batch``: many sessions' writes in one commit, each write still atomic alone, and
``savepoint``: one session's writes undone together when one of them fails, the others kept."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.store.sqlite import (
    BatchAbortedError,
    DuplicateEventError,
    EventOrderError,
    EventRow,
    InvalidValueError,
    MessageRow,
    SessionExistsError,
    SessionNotFoundError,
    SqliteStore,
    StoreError,
    StoreUnavailableError,
)
from tests.adapters.test_sqlite_store import events, ids, session


def _count(path: Path) -> int:
    with sqlite3.connect(path) as other:
        return int(other.execute("SELECT count(*) FROM events").fetchone()[0])


def test_a_batch_commits_once_at_its_end_and_a_failed_write_is_rolled_back_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        store.create_session(session("s1"))
        store.create_session(session("s2"))
        store.append_events("s2", events(1, 3))
        with store.batch():
            store.append_events("s1", events(1, 5))
            assert _count(path) == 3  # another connection sees nothing before the commit
            with pytest.raises(EventOrderError):
                store.append_events("s2", events(3, 4))  # 3 is taken: this write alone fails
            store.append_events("s2", events(4, 6))
        assert ids(store.events("s1")) == [1, 2, 3, 4, 5]
        assert ids(store.events("s2")) == [1, 2, 3, 4, 5, 6]
        assert _count(path) == 11


def test_an_exception_escaping_the_batch_rolls_back_all_of_it(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "s.db") as store:
        store.create_session(session("s1"))
        with pytest.raises(RuntimeError), store.batch():
            store.append_events("s1", events(1, 2))
            raise RuntimeError("host crashed mid-flush")
        assert store.events("s1") == []
        store.append_events("s1", events(1, 2))  # and the store is usable afterwards
        assert ids(store.events("s1")) == [1, 2]


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


BAD_WRITES: dict[str, tuple[type[StoreError], Callable[[SqliteStore], None]]] = {
    "event id 2**64": (InvalidValueError, lambda s: s.append_events("B", events(2**64, 2**64))),
    "event id 2**63": (InvalidValueError, lambda s: s.append_events("B", events(2**63, 2**63))),
    "last_seq 2**64": (
        InvalidValueError,
        lambda s: s.save_session(
            "B", state="x", snapshot=b"", wrapper_id=None, last_seq=2**64, updated_at=1.0
        ),
    ),
    "lone surrogate in a kind": (
        InvalidValueError,
        lambda s: s.append_events("B", [EventRow(6, 6.0, "ev\ud800", b"{}")]),
    ),
    "lone surrogate in a prompt": (
        InvalidValueError,
        lambda s: s.save_message(
            "B", MessageRow(id="m2", prompt="\ud800", state="q", created_at=1)
        ),
    ),
    "data that is not JSON": (
        InvalidValueError,
        lambda s: s.append_events("B", [EventRow(6, 6.0, "event", b"{nope")]),
    ),
    "ids out of order": (
        EventOrderError,
        lambda s: s.append_events("B", [*events(7, 7), *events(6, 6)]),
    ),
    "an id already stored": (DuplicateEventError, lambda s: s.append_events("B", events(5, 6))),
    "an unknown session": (SessionNotFoundError, lambda s: s.append_events("ghost", events(1, 1))),
    "a taken session id": (SessionExistsError, lambda s: s.create_session(session("A"))),
    "a full disk": (StoreUnavailableError, _append_too_much),
}


@pytest.mark.parametrize("case", list(BAD_WRITES))
def test_a_session_whose_write_fails_in_a_batch_keeps_none_of_it_and_the_others_commit(
    tmp_path: Path, case: str
) -> None:
    error, bad_write = BAD_WRITES[case]
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


def test_a_foreign_exception_in_a_savepoint_undoes_it_and_propagates_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        for sid in "AB":
            store.create_session(session(sid))
        with store.batch():
            with pytest.raises(KeyError), store.savepoint("store session A"):
                _write_session(store, "A")
                raise KeyError("the host's own bug")
            with store.savepoint("store session B"), store.savepoint("nested"):
                _write_session(store, "B")
        assert _stored(path, "A") == ("starting", [], [])
        assert _stored(path, "B") == ("running", [4, 5], ["m-B"])


def test_a_savepoint_outside_a_batch_is_a_transaction_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteStore(path) as store:
        store.create_session(session("A"))
        with pytest.raises(InvalidValueError), store.savepoint("store session A"):
            _write_session(store, "A")
            store.append_events("A", events(2**64, 2**64))
        assert _stored(path, "A") == ("starting", [], [])
        with store.savepoint("store session A"):
            _write_session(store, "A")
            assert _count(path) == 0  # not committed before the block ends
        assert _stored(path, "A") == ("running", [4, 5], ["m-A"])


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
