"""What a wrapper or an API client can send ends up in the store: no value it is given may make a
store call raise anything but a ``StoreError`` (one frame with ``seq = 2**64`` once stopped the
control plane's flush loop with an ``OverflowError``), and the files it keeps are its owner's only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.store.sqlite import (
    MAX_EVENTS_PAGE,
    EventRow,
    InvalidValueError,
    MessageRow,
    SessionRow,
    SqliteStore,
    StoreError,
    StoreUnavailableError,
    hash_token,
)
from tests.adapters.test_sqlite_store import events, ids, session


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "control.sqlite") as s:
        s.create_session(session("s1"))
        s.append_events("s1", events(1, 3))
        yield s


def message(**fields: Any) -> MessageRow:
    return msgspec.structs.replace(
        MessageRow(id="m1", prompt="fix it", state="queued", created_at=1.0), **fields
    )


def event(**fields: Any) -> EventRow:
    return msgspec.structs.replace(EventRow(4, 4.0, "event", b'{"n":4}'), **fields)


def save(store: SqliteStore, **fields: Any) -> None:
    values: dict[str, Any] = {
        "state": "running",
        "snapshot": b"{}",
        "wrapper_id": "w-1",
        "last_seq": 1,
        "updated_at": 2.0,
    }
    store.save_session(fields.pop("id", "s1"), **(values | fields))


def assert_untouched(store: SqliteStore) -> None:
    """Nothing of the refused write is stored and the store goes on working."""
    got = store.get_session("s1")
    assert got is not None and got.state == "starting" and got.last_seq == 0
    assert ids(store.events("s1")) == [1, 2, 3]
    assert store.messages("s1") == []
    store.append_events("s1", events(4, 4))
    save(store, last_seq=2**63 - 1)
    assert store.last_event_id("s1") == 4


# -- defect 1: integers beyond SQLite's 64 bits ----------------------------------------------------


@pytest.mark.parametrize("seq", [2**63, 2**64, -(2**63) - 1])
def test_an_event_id_beyond_64_bits_is_an_invalid_value_naming_session_and_field(
    store: SqliteStore, seq: int
) -> None:
    with pytest.raises(InvalidValueError, match=r"append 1 event to session 's1'.*#1.* id ="):
        store.append_events("s1", [event(id=seq)])
    assert_untouched(store)


@pytest.mark.parametrize("seq", [2**63, 2**64, -1])
def test_a_last_seq_beyond_64_bits_or_negative_is_an_invalid_value(
    store: SqliteStore, seq: int
) -> None:
    with pytest.raises(InvalidValueError, match=r"save session 's1'.*last_seq"):
        save(store, last_seq=seq)
    with pytest.raises(InvalidValueError, match=r"create session 's2'.*last_seq"):
        store.create_session(msgspec.structs.replace(session("s2"), last_seq=seq))
    assert store.get_session("s2") is None
    assert_untouched(store)


def test_an_invalid_value_is_a_value_error_too(store: SqliteStore) -> None:
    # A caller that knows nothing of the store can still catch it for what it is.
    with pytest.raises(ValueError):
        store.append_events("s1", [event(id=2**64)])


# -- defect 1: strings without a UTF-8 form, and bytes that are not UTF-8 JSON ---------------------

LONE = "a\ud800b"  # a lone surrogate: a valid Python str that has no UTF-8 encoding

Write = Callable[[SqliteStore], object]


def create_with(field: str, value: object, store: SqliteStore, sid: str = "s2") -> None:
    store.create_session(msgspec.structs.replace(session(sid), **{field: value}))


def save_with(field: str, value: object, store: SqliteStore, sid: str = "s1") -> None:
    save(store, **({"id": sid} | {field: value}))


def message_with(field: str, value: object, store: SqliteStore, sid: str = "s1") -> None:
    store.save_message(sid, message(**{field: value}))


def event_with(field: str, value: object, store: SqliteStore, sid: str = "s1") -> None:
    store.append_events(sid, [event(**{field: value})])


WRITES_WITH_TEXT: list[tuple[str, str, Write]] = [
    ("create session", "id", partial(create_with, "id", LONE)),
    *[
        ("create session 's2'", field, partial(create_with, field, LONE))
        for field in ("agent_session", "user_id", "workdir", "state", "wrapper_id")
    ],
    ("save session 's1'", "state", partial(save_with, "state", LONE)),
    ("save session 's1'", "wrapper_id", partial(save_with, "wrapper_id", LONE)),
    ("save session", "id", partial(save_with, "id", LONE)),
    *[
        ("save message 'm1' of session 's1'", field, partial(message_with, field, LONE))
        for field in ("prompt", "state", "reason", "error")
    ],
    ("save message", "id", partial(message_with, "id", LONE)),
    ("save message 'm1' of session", "session_id", lambda s: s.save_message(LONE, message())),
    ("append 1 event to session 's1'", "kind", partial(event_with, "kind", LONE)),
    ("append 1 event to session", "session_id", lambda s: s.append_events(LONE, [event()])),
    ("delete session", "id", lambda s: s.delete_session(LONE)),
    (
        "set the token hash of session",
        "session_id",
        lambda s: s.set_token_hash(LONE, hash_token("t")),
    ),
]


@pytest.mark.parametrize(
    ("what", "field", "write"), WRITES_WITH_TEXT, ids=[f"{w}-{f}" for w, f, _ in WRITES_WITH_TEXT]
)
def test_a_lone_surrogate_in_any_text_field_is_an_invalid_value_naming_it(
    store: SqliteStore, what: str, field: str, write: Write
) -> None:
    with pytest.raises(InvalidValueError) as info:
        write(store)
    text = str(info.value)
    assert text.startswith(f"could not {what}") and f"{field} has no UTF-8 form" in text
    assert "lone surrogate '\\ud800'" in text and "character 1" in text
    assert store.get_session("s2") is None
    assert_untouched(store)


@pytest.mark.parametrize(
    ("field", "write"),
    [
        ("data", lambda s: s.append_events("s1", [event(data=b'{"t":"\xff"}')])),
        ("options", lambda s: s.save_message("s1", message(options=b'{"m":"\xc3"}'))),
    ],
)
def test_json_that_is_not_utf8_is_an_invalid_value_naming_the_field(
    store: SqliteStore, field: str, write: Write
) -> None:
    with pytest.raises(InvalidValueError, match=rf"session 's1'.*{field} is not UTF-8 JSON"):
        write(store)
    assert_untouched(store)


# -- defect 1: every field of every write, with every hostile value --------------------------------

HOSTILE: list[object] = [
    2**63,
    2**64,
    -(2**63) - 1,
    10**5000,  # more digits than int → str allows
    -1,
    LONE,
    "\udfff",
    b"\xff\xfe",
    None,
    True,
    1.5,
    float("nan"),
    float("inf"),
    {"a": 1},
    ["x"],
    object(),
    "",
]


SidWrite = Callable[[SqliteStore, str], object]


def label(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit int>"
    return f"{value!r:.20}"


def all_hostile_calls() -> Iterator[tuple[str, SidWrite]]:
    """Every field of every write (and every argument of the reads) with every hostile value;
    each call names the session it may use, which exists and has events 1..3."""

    def new(field: str, value: object, store: SqliteStore, sid: str) -> None:
        create_with(field, value, store, f"{sid}-new")

    for value in HOSTILE:
        for field in SessionRow.__struct_fields__:
            yield f"create_session.{field}={label(value)}", partial(new, field, value)
        for field in ("id", "state", "snapshot", "wrapper_id", "last_seq", "updated_at"):
            yield f"save_session.{field}={label(value)}", partial(save_with, field, value)
        for field in MessageRow.__struct_fields__:
            yield f"save_message.{field}={label(value)}", partial(message_with, field, value)
        for field in EventRow.__struct_fields__:
            yield f"append_events.{field}={label(value)}", partial(event_with, field, value)
        calls: dict[str, SidWrite] = {
            "save_message.session_id": lambda s, _, v=value: s.save_message(v, message()),
            "append_events.session_id": lambda s, _, v=value: s.append_events(v, [event()]),
            "delete_session.id": lambda s, _, v=value: s.delete_session(v),
            "set_token_hash.session_id": lambda s, _, v=value: s.set_token_hash(v, "0" * 64),
            "set_token_hash.token_hash": lambda s, sid, v=value: s.set_token_hash(sid, v),
            "get_session.id": lambda s, _, v=value: s.get_session(v),
            "messages.session_id": lambda s, _, v=value: s.messages(v),
            "events.session_id": lambda s, _, v=value: s.events(v),
            "last_event_id.session_id": lambda s, _, v=value: s.last_event_id(v),
        }
        for name, call in calls.items():
            yield f"{name}={label(value)}", call


@pytest.mark.parametrize("in_batch", [False, True], ids=["alone", "in-a-batch"])
def test_no_hostile_value_in_any_field_makes_a_call_raise_anything_but_a_store_error(
    tmp_path: Path, in_batch: bool
) -> None:
    refused = accepted = 0
    escaped: list[str] = []
    with SqliteStore(tmp_path / "control.sqlite") as store:
        for n, (name, call) in enumerate(all_hostile_calls()):
            sid = f"s{n}"
            store.create_session(session(sid))
            store.append_events(sid, events(1, 3))
            try:
                if in_batch:
                    with store.batch(), store.savepoint(sid):
                        call(store, sid)
                else:
                    call(store, sid)
            except StoreError:
                refused += 1
            except Exception as exc:  # the point: nothing else may come out
                escaped.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
            else:
                accepted += 1
            # And the store goes on working.
            after = store.last_event_id(sid) + 1
            store.append_events(sid, events(after, after))
            assert store.last_event_id(sid) == after
    assert escaped == [], "\n".join(escaped)
    print(
        f"\n[hostile values, {'in a batch' if in_batch else 'alone'}] {refused} calls refused "
        f"with a StoreError, {accepted} accepted, none raised anything else"
    )
    assert refused > 400


# -- reads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [-1, 2**63, 2**64, -(2**70)])
def test_events_refuses_an_after_outside_0_to_2_63_naming_it(
    store: SqliteStore, after: int
) -> None:
    assert store.events("s1", after=2**63 - 1) == []  # the bounds themselves are fine
    with pytest.raises(ValueError, match=r"^after must be an event id from 0 to 2\*\*63 - 1"):
        store.events("s1", after=after)


@pytest.mark.parametrize("limit", [0, -1, MAX_EVENTS_PAGE + 1, 2**64])
def test_events_refuses_a_limit_outside_1_to_10000_naming_it(
    store: SqliteStore, limit: int
) -> None:
    assert ids(store.events("s1", limit=MAX_EVENTS_PAGE)) == [1, 2, 3]
    assert ids(store.events("s1", limit=1)) == [1]
    with pytest.raises(ValueError, match=r"^limit must be from 1 to 10000"):
        store.events("s1", limit=limit)


def test_a_read_with_an_id_sqlite_cannot_bind_is_a_store_error(store: SqliteStore) -> None:
    for read in (store.get_session, store.messages, store.events, store.last_event_id):
        with pytest.raises(InvalidValueError, match="'a\\\\ud800b'"):
            read(LONE)


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
