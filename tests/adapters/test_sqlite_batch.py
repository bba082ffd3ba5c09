"""``SqliteStore.batch``: many sessions' writes in one commit, each write still atomic alone."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from adapters.store.sqlite import EventOrderError, SqliteStore
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
