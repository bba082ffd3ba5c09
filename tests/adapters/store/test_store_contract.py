"""One contract for every store behind the port (``adapters/store/base.py``), run against SQLite
and PostgreSQL so that the two cannot drift: sessions, snapshots with their timer deadlines,
messages and the append-only, strictly increasing event log survive a reopen; a second
connection sees what was committed; batches and savepoints keep one session's failure that
session's; and no value a wrapper or a client can send makes a call raise anything but a
``StoreError``. What only one database does (SQLite's files and WAL, PostgreSQL's leases and
reconnects) is tested beside its adapter."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from functools import partial

import msgspec
import pytest

from adapters.store.base import Store
from adapters.store.rows import (
    MAX_EVENTS_PAGE,
    DuplicateEventError,
    EventOrderError,
    EventRow,
    InvalidValueError,
    MessageRow,
    SessionExistsError,
    SessionNotFoundError,
    SessionRow,
    StoreError,
    hash_token,
    token_matches,
)
from fsm.engine.machine import Snapshot
from tests.adapters.store.conftest import Backend
from tests.adapters.store.helpers import (
    assert_untouched,
    event,
    events,
    ids,
    message,
    save,
    session,
    snapshot,
)

# -- sessions --------------------------------------------------------------------------------------


def test_session_round_trip_and_save(store: Store) -> None:
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


def test_the_token_hash_stays_out_of_the_rows_repr() -> None:
    row = session("s1")
    assert row.token_hash not in repr(row) and "token_hash='***'" in repr(row)


def test_hash_token_is_the_hex_sha256_of_the_token_and_never_raises() -> None:
    token = secrets.token_urlsafe(32)
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token_matches(token, hash_token(token))
    assert not token_matches(token + "x", hash_token(token))
    assert not token_matches("\ud800", hash_token(token))  # a header no minted token has


def test_a_plain_token_is_refused_by_the_store_and_by_the_schema(
    store: Store, backend: Backend
) -> None:
    token = secrets.token_urlsafe(32)
    with pytest.raises(InvalidValueError, match=r"token_hash must be hash_token\(token\)"):
        store.create_session(msgspec.structs.replace(session("s1"), token_hash=token))
    assert store.get_session("s1") is None
    store.create_session(session("s1"))
    for sql, params in (
        ("UPDATE sessions SET token_hash = %s WHERE id = 's1'", (token,)),
        ("UPDATE sessions SET token_hash = %s WHERE id = 's1'", ("A" * 64,)),
        (
            "INSERT INTO sessions (id, token_hash, agent_session, user_id, workdir, state, "
            "created_at, updated_at) VALUES ('s2', %s, 'a', 'u', '/w', 'x', 0, 0)",
            (token,),
        ),
    ):
        with pytest.raises(backend.raw_error, match=r"never.the.token"):
            backend.raw(sql, params)
    got = store.get_session("s1")
    assert got is not None and got.token_hash == session("s1").token_hash
    assert store.get_session("s2") is None


def test_set_token_hash_replaces_the_hash_for_a_new_wrapper(store: Store) -> None:
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


def test_sessions_are_listed_oldest_first(store: Store) -> None:
    store.create_session(session("b", created_at=2.0))
    store.create_session(session("a", created_at=3.0))
    store.create_session(session("c", created_at=1.0))
    assert [r.id for r in store.list_sessions()] == ["c", "b", "a"]


def test_creating_a_taken_id_and_saving_an_unknown_one_fail_naming_the_id(store: Store) -> None:
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


def test_soft_delete_hides_the_session_but_keeps_its_log(store: Store) -> None:
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


def test_a_deleted_session_keeps_only_its_log_and_its_lease_is_gone(backend: Backend) -> None:
    # Issue 16: the lease of a deleted session stayed, so its replica renewed it (and tried to
    # restore the session) at every keeper pass, forever. The delete drops every row that keys
    # the session (the lease; any deadline or claim row a later schema adds), in its own
    # transaction; what stays is the session row (marked) and its messages and events.
    replicated = backend.kind == "postgres"
    store = backend.open(replica="a", lease_ttl=10) if replicated else backend.open()
    store.create_session(session("s1"))
    store.create_session(session("s2", created_at=200.0))
    store.append_events("s1", events(1, 2))
    store.delete_session("s1")
    store.delete_session("s1")  # still idempotent once the lease is gone

    kept = {"sessions", "messages", "events"}
    for table in sorted(set(backend.session_tables()) - kept):
        left = backend.rows(f"SELECT count(*) FROM {table} WHERE session_id = %s", ("s1",))
        assert left == [(0,)], f"{table} keeps a row of the deleted session"
    assert ids(store.events("s1")) == [1, 2]
    if not replicated:
        return
    from adapters.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    assert store.lease("s1") is None and store.lease("s2") is not None
    assert [x.session_id for x in store.renew_leases()] == ["s2"]
    assert [x.session_id for x in store.held_leases()] == ["s2"]
    assert store.release_leases(["s1", "s2"]) == ["s2"]
    other = backend.open(replica="b", lease_ttl=10)
    assert isinstance(other, PostgresStore)
    later = 4.0e9  # past every lease: the sweep takes whatever is claimable
    assert [x.session_id for x in other.claim_sessions(now=later)] == ["s2"]
    assert other.claim_sessions(now=later + 5) == [] and other.claim_session("s1") is None


def test_a_closed_store_says_so(backend: Backend) -> None:
    s = backend.open()
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        s.get_session("s1")


# -- messages --------------------------------------------------------------------------------------


def test_messages_are_upserted_and_listed_in_creation_order(store: Store) -> None:
    store.create_session(session("s1"))
    m1 = MessageRow(
        id="m1", prompt="one", state="queued", created_at=10.0, options=b'{"model":"x"}'
    )
    m2 = MessageRow(id="m2", prompt="two", state="queued", created_at=11.0)
    m3 = MessageRow(id="m0", prompt="same time as m2, saved later", state="queued", created_at=11)
    store.save_message("s1", m1)
    store.save_message("s1", m2)
    store.save_message("s1", m3)
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
    store.save_message("s1", m2)  # an upsert keeps its place
    assert store.messages("s1") == [done, m2, m3]
    assert store.messages("other") == []


def test_message_options_must_be_json(store: Store) -> None:
    store.create_session(session("s1"))
    bad = MessageRow(id="m1", prompt="p", state="queued", created_at=1, options=b"{nope")
    with pytest.raises(InvalidValueError, match=r"'m1'.*options is not valid JSON"):
        store.save_message("s1", bad)
    assert store.messages("s1") == []


# -- events ----------------------------------------------------------------------------------------


def test_events_resume_after_an_id_in_pages(store: Store) -> None:
    store.create_session(session("s1"))
    store.create_session(session("s2"))
    store.append_events("s1", events(1, 4))
    store.append_events("s1", events(5, 10))
    store.append_events("s2", events(1, 2))

    assert store.events("s1") == events(1, 10)  # byte for byte: the data as it was given
    assert ids(store.events("s1", after=4)) == [5, 6, 7, 8, 9, 10]
    assert ids(store.events("s1", after=10)) == []
    assert ids(store.events("s2")) == [1, 2]
    assert store.last_event_id("s1") == 10
    assert store.last_event_id("s2") == 2
    assert store.last_event_id("nobody") == 0

    seen: list[int] = []  # the SSE endpoint's loop: pages of `limit` until a short page
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


def test_event_data_comes_back_exactly_as_given(store: Store) -> None:
    store.create_session(session("s1"))
    odd = [
        b'{"b": 1,  "a": [1.50, 2e3], "b": 2}',  # spacing, duplicate keys, number spelling
        b'"\\u00e9\\u0000"',  # escapes kept as escapes
        '{"t": "\u00e9\u4e2d\U0001f600"}'.encode(),
        b" [] ",
    ]
    store.append_events("s1", [EventRow(i + 1, 1.0, "event", d) for i, d in enumerate(odd)])
    assert [e.data for e in store.events("s1")] == odd


def test_a_batch_with_a_duplicate_id_is_rejected_whole(store: Store) -> None:
    store.create_session(session("s1"))
    store.append_events("s1", events(1, 3))

    with pytest.raises(DuplicateEventError, match=r"event id 3 is already stored.*nothing"):
        store.append_events("s1", events(3, 5))  # a batch appended twice, partly
    with pytest.raises(DuplicateEventError, match="event id 5 appears twice"):
        store.append_events("s1", [*events(4, 5), *events(5, 6)])
    with pytest.raises(InvalidValueError, match="event 5 is not valid JSON"):
        store.append_events(
            "s1", [*events(4, 4), EventRow(5, 1.0, "event", b"{oops"), *events(6, 6)]
        )

    assert ids(store.events("s1")) == [1, 2, 3]
    store.append_events("s1", events(4, 5))  # the same ids are fine once in order
    assert store.last_event_id("s1") == 5


def test_ids_must_strictly_increase_even_without_a_duplicate(store: Store) -> None:
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


def test_the_log_is_append_only_for_any_writer(store: Store, backend: Backend) -> None:
    store.create_session(session("s1"))
    store.append_events("s1", events(1, 3))
    for sql in (
        "UPDATE events SET kind = 'x' WHERE id = 2",
        "DELETE FROM events WHERE id = 2",
        "INSERT INTO events VALUES ('s1', 2, 0.0, 'event', '{}')",
        "INSERT INTO events VALUES ('s1', 0, 0.0, 'event', '{}')",
    ):
        with pytest.raises(backend.raw_error):
            backend.raw(sql)
    assert store.events("s1") == events(1, 3)


# -- durability and concurrency --------------------------------------------------------------------


def test_everything_survives_close_and_reopen(backend: Backend) -> None:
    snap = msgspec.json.encode(snapshot("waiting_for_wrapper"))
    message = MessageRow(
        id="m1",
        prompt="fix the bug",
        state="accepted",
        created_at=101.0,
        options=b'{"model":"m","auto_commit":true}',
    )
    first = backend.open()
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
    first.close()

    second = backend.open()
    got = second.get_session("s1")
    assert got is not None
    assert (got.state, got.wrapper_id, got.last_seq) == ("waiting_for_wrapper", "w-9", 17)
    restored = msgspec.json.decode(got.snapshot, type=Snapshot)
    assert restored == snapshot("waiting_for_wrapper")
    assert [t.deadline for t in restored.timers] == [240.0, 1950.0]  # the timer deadlines
    assert second.messages("s1") == [message]
    assert second.events("s1", limit=1000) == events(1, 50)
    assert second.last_event_id("s1") == 50


def test_a_second_connection_reads_committed_rows_and_nothing_of_an_open_batch(
    backend: Backend,
) -> None:
    writer, reader = backend.open(), backend.open()
    writer.create_session(session("s1"))
    writer.append_events("s1", events(1, 5))
    assert ids(reader.events("s1")) == [1, 2, 3, 4, 5]
    with writer.batch():
        writer.append_events("s1", events(6, 10))
        assert reader.last_event_id("s1") == 5  # not committed yet
    assert reader.last_event_id("s1") == 10


# -- batches and savepoints: one session's failure stays that session's ----------------------------


@pytest.fixture
def reader(store: Store, backend: Backend) -> Store:
    """A second connection, opened before any batch (opening SQLite's writes: it migrates)."""
    return backend.open()


def _stored(reader: Store, sid: str) -> tuple[str, list[int], list[str]]:
    """A session as another connection sees it: only what was committed."""
    row = reader.get_session(sid)
    assert row is not None
    return row.state, ids(reader.events(sid)), [m.id for m in reader.messages(sid)]


def _write_session(store: Store, sid: str) -> None:
    """What the host writes for one dirty session: a message, the snapshot, new events."""
    store.save_message(sid, MessageRow(id=f"m-{sid}", prompt="go", state="queued", created_at=5))
    store.save_session(
        sid, state="running", snapshot=b"{}", wrapper_id="w", last_seq=7, updated_at=9.0
    )
    store.append_events(sid, events(4, 5))


def test_a_batch_commits_once_at_its_end_and_a_failed_write_is_rolled_back_alone(
    store: Store, reader: Store
) -> None:
    store.create_session(session("s1"))
    store.create_session(session("s2"))
    store.append_events("s2", events(1, 3))
    with store.batch():
        store.append_events("s1", events(1, 5))
        assert _stored(reader, "s1")[1] == []  # another connection sees nothing yet
        with pytest.raises(EventOrderError):
            store.append_events("s2", events(3, 4))  # 3 is taken: this write alone fails
        store.append_events("s2", events(4, 6))
    assert _stored(reader, "s1")[1] == [1, 2, 3, 4, 5]
    assert _stored(reader, "s2")[1] == [1, 2, 3, 4, 5, 6]


def test_an_exception_escaping_the_batch_rolls_back_all_of_it(store: Store) -> None:
    store.create_session(session("s1"))
    with pytest.raises(RuntimeError), store.batch():
        store.append_events("s1", events(1, 2))
        raise RuntimeError("host crashed mid-flush")
    assert store.events("s1") == []
    store.append_events("s1", events(1, 2))  # and the store is usable afterwards
    assert ids(store.events("s1")) == [1, 2]


BAD_WRITES: dict[str, tuple[type[StoreError], Callable[[Store], None]]] = {
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
}


@pytest.mark.parametrize("case", list(BAD_WRITES))
def test_a_session_whose_write_fails_in_a_batch_keeps_none_of_it_and_the_others_commit(
    store: Store, reader: Store, case: str
) -> None:
    error, bad_write = BAD_WRITES[case]
    for sid in "ABC":
        store.create_session(session(sid))
        store.append_events(sid, events(1, 3))
    with store.batch("flush"):
        with store.savepoint("store session A"):
            _write_session(store, "A")
        with pytest.raises(error), store.savepoint("store session B"):
            _write_session(store, "B")  # all fine so far...
            bad_write(store)  # ...until this one
        with store.savepoint("store session C"):
            _write_session(store, "C")
    assert _stored(reader, "A") == ("running", [1, 2, 3, 4, 5], ["m-A"])
    assert _stored(reader, "B") == ("starting", [1, 2, 3], [])  # nothing of that attempt
    assert _stored(reader, "C") == ("running", [1, 2, 3, 4, 5], ["m-C"])
    _write_session(store, "B")  # and the store goes on working
    assert _stored(reader, "B") == ("running", [1, 2, 3, 4, 5], ["m-B"])


def test_a_foreign_exception_in_a_savepoint_undoes_it_and_propagates_unchanged(
    store: Store, reader: Store
) -> None:
    for sid in "AB":
        store.create_session(session(sid))
    with store.batch():
        with pytest.raises(KeyError), store.savepoint("store session A"):
            _write_session(store, "A")
            raise KeyError("the host's own bug")
        with store.savepoint("store session B"), store.savepoint("nested"):
            _write_session(store, "B")
    assert _stored(reader, "A") == ("starting", [], [])
    assert _stored(reader, "B") == ("running", [4, 5], ["m-B"])


def test_a_savepoint_outside_a_batch_is_a_transaction_of_its_own(
    store: Store, reader: Store
) -> None:
    store.create_session(session("A"))
    with pytest.raises(InvalidValueError), store.savepoint("store session A"):
        _write_session(store, "A")
        store.append_events("A", events(2**64, 2**64))
    assert _stored(reader, "A") == ("starting", [], [])
    with store.savepoint("store session A"):
        _write_session(store, "A")
        assert _stored(reader, "A") == ("starting", [], [])  # not committed before the end
    assert _stored(reader, "A") == ("running", [4, 5], ["m-A"])


# -- hostile values --------------------------------------------------------------------------------

LONE = "a\ud800b"  # a lone surrogate: a valid Python str that has no UTF-8 encoding


@pytest.fixture
def filled(store: Store) -> Store:
    store.create_session(session("s1"))
    store.append_events("s1", events(1, 3))
    return store


@pytest.mark.parametrize("seq", [2**63, 2**64, -(2**63) - 1])
def test_an_event_id_beyond_64_bits_is_an_invalid_value_naming_session_and_field(
    filled: Store, seq: int
) -> None:
    with pytest.raises(InvalidValueError, match=r"append 1 event to session 's1'.*#1.* id ="):
        filled.append_events("s1", [event(id=seq)])
    assert_untouched(filled)


@pytest.mark.parametrize("seq", [2**63, 2**64, -1])
def test_a_last_seq_beyond_64_bits_or_negative_is_an_invalid_value(filled: Store, seq: int) -> None:
    with pytest.raises(InvalidValueError, match=r"save session 's1'.*last_seq"):
        save(filled, last_seq=seq)
    with pytest.raises(InvalidValueError, match=r"create session 's2'.*last_seq"):
        filled.create_session(msgspec.structs.replace(session("s2"), last_seq=seq))
    assert filled.get_session("s2") is None
    assert_untouched(filled)


def test_an_invalid_value_is_a_value_error_too(filled: Store) -> None:
    with pytest.raises(ValueError):
        filled.append_events("s1", [event(id=2**64)])


Write = Callable[[Store], object]


def create_with(field: str, value: object, store: Store, sid: str = "s2") -> None:
    store.create_session(msgspec.structs.replace(session(sid), **{field: value}))


def save_with(field: str, value: object, store: Store, sid: str = "s1") -> None:
    save(store, **({"id": sid} | {field: value}))


def message_with(field: str, value: object, store: Store, sid: str = "s1") -> None:
    store.save_message(sid, message(**{field: value}))


def event_with(field: str, value: object, store: Store, sid: str = "s1") -> None:
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
    filled: Store, what: str, field: str, write: Write
) -> None:
    with pytest.raises(InvalidValueError) as info:
        write(filled)
    text = str(info.value)
    assert text.startswith(f"could not {what}") and f"{field} has no UTF-8 form" in text
    assert "lone surrogate '\\ud800'" in text and "character 1" in text
    assert filled.get_session("s2") is None
    assert_untouched(filled)


def test_a_nul_in_text_is_stored_or_refused_naming_the_field_never_cut(
    filled: Store, backend: Backend
) -> None:
    prompt = "before\x00after"
    if backend.holds_nul:
        filled.save_message("s1", message(prompt=prompt))
        assert filled.messages("s1")[0].prompt == prompt
        return
    with pytest.raises(InvalidValueError, match=r"'m1' of session 's1': prompt has a NUL.*6"):
        filled.save_message("s1", message(prompt=prompt))
    with pytest.raises(InvalidValueError, match=r"kind has a NUL"):
        filled.append_events("s1", [event(kind="a\x00")])
    with pytest.raises(InvalidValueError, match=r"data is not valid JSON"):
        filled.append_events("s1", [event(data=b'"a\x00"')])
    assert_untouched(filled)


@pytest.mark.parametrize(
    ("field", "write"),
    [
        ("data", lambda s: s.append_events("s1", [event(data=b'{"t":"\xff"}')])),
        ("options", lambda s: s.save_message("s1", message(options=b'{"m":"\xc3"}'))),
    ],
)
def test_json_that_is_not_utf8_is_an_invalid_value_naming_the_field(
    filled: Store, field: str, write: Write
) -> None:
    with pytest.raises(InvalidValueError, match=rf"session 's1'.*{field} is not UTF-8 JSON"):
        write(filled)
    assert_untouched(filled)


HOSTILE: list[object] = [
    2**63,
    2**64,
    -(2**63) - 1,
    10**5000,  # more digits than int → str allows
    -1,
    LONE,
    "\udfff",
    "nul\x00",
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

SidWrite = Callable[[Store, str], object]


def label(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<{value.bit_length()}-bit int>"
    return f"{value!r:.20}"


def all_hostile_calls() -> Iterator[tuple[str, SidWrite]]:
    """Every field of every write (and every argument of the reads) with every hostile value;
    each call names the session it may use, which exists and has events 1..3."""

    def new(field: str, value: object, store: Store, sid: str) -> None:
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
    store: Store, in_batch: bool
) -> None:
    refused = accepted = 0
    escaped: list[str] = []
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
        after = store.last_event_id(sid) + 1  # and the store goes on working
        store.append_events(sid, events(after, after))
        assert store.last_event_id(sid) == after
    assert escaped == [], "\n".join(escaped)
    assert refused > 400


@pytest.mark.parametrize("after", [-1, 2**63, 2**64, -(2**70)])
def test_events_refuses_an_after_outside_0_to_2_63_naming_it(filled: Store, after: int) -> None:
    assert filled.events("s1", after=2**63 - 1) == []  # the bounds themselves are fine
    with pytest.raises(ValueError, match=r"^after must be an event id from 0 to 2\*\*63 - 1"):
        filled.events("s1", after=after)


@pytest.mark.parametrize("limit", [0, -1, MAX_EVENTS_PAGE + 1, 2**64])
def test_events_refuses_a_limit_outside_1_to_10000_naming_it(filled: Store, limit: int) -> None:
    assert ids(filled.events("s1", limit=MAX_EVENTS_PAGE)) == [1, 2, 3]
    assert ids(filled.events("s1", limit=1)) == [1]
    with pytest.raises(ValueError, match=r"^limit must be from 1 to 10000"):
        filled.events("s1", limit=limit)


def test_a_read_with_an_id_the_database_cannot_bind_is_a_store_error(filled: Store) -> None:
    for read in (filled.get_session, filled.messages, filled.events, filled.last_event_id):
        with pytest.raises(InvalidValueError, match="'a\\\\ud800b'"):
            read(LONE)
