"""SQLite's own ways to be unavailable (another writer's lock, a full disk) are a retryable
``StoreUnavailableError``, and the files it keeps are its owner's only. The hostile values every
store must refuse with a ``StoreError`` are the contract suite's (tests/adapters/store/).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from adapters.store.sqlite import (
    InvalidValueError,
    SqliteStore,
    StoreError,
    StoreUnavailableError,
)
from tests.adapters.store.helpers import assert_untouched, event, events, ids, session


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "control.sqlite") as s:
        s.create_session(session("s1"))
        s.append_events("s1", events(1, 3))
        yield s


# -- StoreUnavailableError: the disk or another writer, not the value ------------------------------


def test_a_store_locked_by_another_writer_is_unavailable_then_works_again(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite"
    with SqliteStore(path, busy_timeout=0.05) as store:
        store.create_session(session("s1"))
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailableError, match=r"append 2 events.*'s1'.*locked") as e:
                store.append_events("s1", events(1, 2))
            assert not isinstance(e.value, InvalidValueError)  # worth retrying: not the data
            other.execute("ROLLBACK")
        finally:
            other.close()
        store.append_events("s1", events(1, 2))
        assert ids(store.events("s1")) == [1, 2]


def test_a_full_disk_is_unavailable_and_writes_resume_once_there_is_room(
    store: SqliteStore,
) -> None:
    db = store._connection()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own "disk is full"
    big = msgspec.json.encode({"text": "x" * 100_000})
    with pytest.raises(StoreUnavailableError, match=r"append 1 event to session 's1'.*full") as e:
        store.append_events("s1", [event(data=big)])
    assert not isinstance(e.value, InvalidValueError)  # worth retrying: not the data
    db.execute("PRAGMA max_page_count = 1073741823")
    assert_untouched(store)


# -- defect 4: the files are private ---------------------------------------------------------------


def modes(*paths: Path) -> list[str]:
    return [f"{p.name}={stat.S_IMODE(os.stat(p).st_mode):04o}" for p in paths]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_the_store_files_are_0600_and_its_new_folders_0700_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    path = tmp_path / "a" / "b" / "control.sqlite"
    before = stat.S_IMODE(os.stat(tmp_path).st_mode)
    old = os.umask(umask)
    try:
        with SqliteStore(path) as store:
            store.create_session(session("s1"))
            store.append_events("s1", events(1, 3))
            wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
            got = modes(path, wal, shm, tmp_path / "a", tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert got == [
        "control.sqlite=0600",
        "control.sqlite-wal=0600",
        "control.sqlite-shm=0600",
        "a=0700",
        "b=0700",
    ]
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == before  # not the store's folder


def test_files_found_readable_by_others_are_set_to_0600_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "control.sqlite"
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    # A control plane that stopped without closing leaves -wal and -shm behind.
    first = SqliteStore(path)
    first.create_session(session("s1"))
    for p in (path, wal, shm):
        os.chmod(p, 0o644)
    with caplog.at_level(logging.WARNING, logger="fsm_agent.store"), SqliteStore(path) as second:
        assert modes(path, wal, shm) == [
            "control.sqlite=0600",
            "control.sqlite-wal=0600",
            "control.sqlite-shm=0600",
        ]
        assert second.get_session("s1") is not None
    first.close()
    warned = [r.getMessage() for r in caplog.records]
    for p in (path, wal, shm):
        assert f"the store file {p} had mode 0644, readable by other users; setting it to 0600" in (
            warned
        )
    # A file that is not a database is refused, and is not the store's to chmod.
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"this is not sqlite" * 100)
    os.chmod(junk, 0o644)
    with pytest.raises(StoreError, match="fsm-agent SQLite file"):
        SqliteStore(junk)
    assert modes(junk) == ["notes.txt=0644"]
