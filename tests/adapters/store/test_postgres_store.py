"""What only the PostgreSQL store does: versioned migrations (a newer binary upgrades, an older
one refuses), leases for replicas (claims with SKIP LOCKED from two connections, expiry, renewal,
release, fencing: a replica that lost a lease cannot write), and a server restart between two
calls (StoreUnavailableError, then a reconnect, nothing accepted lost). Wall-clock time is passed
in (``now=``, a store ``clock``) or frozen with freezegun, never slept through."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from freezegun import freeze_time

from adapters.store.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStore
from adapters.store.rows import (
    BatchAbortedError,
    EventOrderError,
    LeaseLostError,
    SchemaTooNewError,
    StoreError,
    StoreUnavailableError,
)
from tests.adapters.store.helpers import events, ids, session
from tests.postgres_support import Cluster


@pytest.fixture
def opened(postgres_dsn: str) -> Iterator[list[PostgresStore]]:
    stores: list[PostgresStore] = []
    yield stores
    for s in stores:
        s.close()


def open_store(opened: list[PostgresStore], dsn: str, **options: object) -> PostgresStore:
    store = PostgresStore(dsn, **options)  # type: ignore[arg-type]
    opened.append(store)
    return store


def impatient(dsn: str) -> str:
    """The DSN for a replica whose lock waits fail after 2 s: a claim that waits for another's
    locked row instead of skipping it fails the test instead of hanging it."""
    return f"{dsn} options='-c lock_timeout=2000'"


def raw(dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as db:
        cur = db.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# -- migrations ------------------------------------------------------------------------------------


def test_a_database_of_schema_1_is_upgraded_on_open_and_its_sessions_become_claimable(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    # A database as an fsm-agent of schema version 1 (no leases yet) left it.
    with psycopg.connect(postgres_dsn, autocommit=True) as db, db.transaction():
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        for sid in ("old1", "old2"):
            row = session(sid)
            db.execute(
                "INSERT INTO sessions (id, token_hash, agent_session, user_id, workdir, state, "
                "created_at, updated_at) VALUES (%s, %s, 'a', 'u', '/w', 'running', 1, 1)",
                (sid, row.token_hash),
            )
        db.execute("INSERT INTO events VALUES ('old1', 1, 1.0, 'event', '{}')")
        db.execute(  # deleted before the upgrade: version 2 gave it a lease, version 3 drops it
            "INSERT INTO sessions (id, token_hash, agent_session, user_id, workdir, state, "
            "created_at, updated_at, deleted) VALUES ('gone', %s, 'a', 'u', '/w', 'stopped', "
            "1, 1, true)",
            (session("gone").token_hash,),
        )

    store = open_store(opened, postgres_dsn, replica="r1")
    assert store.schema_version() == SCHEMA_VERSION == 3
    assert raw(postgres_dsn, "SELECT version FROM schema_version") == [(3,)]
    assert ids(store.events("old1")) == [1]
    assert store.lease("gone") is None and store.lease("old1") is not None
    claimed = store.claim_sessions(now=1000.0)
    assert [(c.session_id, c.owner, c.epoch) for c in claimed] == [
        ("old1", "r1", 1),
        ("old2", "r1", 1),
    ]
    store.close()
    # Reopening migrates nothing again: the claims made at version 3 are still there.
    again = open_store(opened, postgres_dsn, replica="r1")
    assert again.schema_version() == 3
    assert again.owns("old1", now=1001.0)


def test_a_database_of_a_newer_schema_is_refused_with_what_to_do(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    open_store(opened, postgres_dsn).close()
    raw(postgres_dsn, "UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(
        SchemaTooNewError,
        match=rf"version {SCHEMA_VERSION + 1}, newer than the {SCHEMA_VERSION} .* upgrade",
    ):
        PostgresStore(postgres_dsn)
    assert raw(postgres_dsn, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]


def test_replicas_starting_together_migrate_once(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    errors: list[BaseException] = []
    lock = threading.Lock()

    def start() -> None:
        try:
            store = PostgresStore(postgres_dsn)
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            opened.append(store)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(opened) == 4
    assert raw(postgres_dsn, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


def test_an_unreachable_server_is_unavailable_and_the_password_is_never_shown(
    postgres_cluster: Cluster,
) -> None:
    dsn = postgres_cluster.dsn("nosuchdb")
    with pytest.raises(StoreUnavailableError, match=r"postgresql://postgres@127\.0\.0\.1") as e:
        PostgresStore(dsn, connect_timeout=1)
    assert postgres_cluster.password not in str(e.value)


# -- leases ----------------------------------------------------------------------------------------


def unowned_sessions(dsn: str, opened: list[PostgresStore], n: int) -> list[str]:
    """Sessions created by a control plane that was not a replica: nobody holds them."""
    single = open_store(opened, dsn)
    sids = [f"s{i:02}" for i in range(n)]
    for sid in sids:
        single.create_session(session(sid))
    return sids


def test_two_replicas_claiming_at_once_skip_each_others_rows_and_never_share_one(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    sids = unowned_sessions(postgres_dsn, opened, 10)
    a = open_store(opened, postgres_dsn, replica="a", lease_ttl=10)
    # B would wait for A's locked rows without SKIP LOCKED; lock_timeout makes that an error.
    b = open_store(opened, impatient(postgres_dsn), replica="b")
    with a.batch("claim"):
        mine = a.claim_sessions(limit=4, now=1000.0)  # locked until A commits
        started = time.monotonic()
        theirs = b.claim_sessions(limit=100, now=1000.0)
        waited = time.monotonic() - started
    assert waited < 1.0
    assert [c.session_id for c in mine] == sids[:4]  # the oldest expiry (all 0) then by id
    assert [c.session_id for c in theirs] == sids[4:]
    assert b.claim_sessions(now=1000.0) == [] and a.claim_sessions(now=1000.0) == []
    owners = raw(postgres_dsn, "SELECT owner, count(*) FROM leases GROUP BY owner ORDER BY owner")
    assert owners == [("a", 4), ("b", 6)]


def test_a_lease_expires_at_its_time_and_only_then_another_replica_claims_it(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    unowned_sessions(postgres_dsn, opened, 1)
    a = open_store(opened, postgres_dsn, replica="a", lease_ttl=10)
    b = open_store(opened, postgres_dsn, replica="b", lease_ttl=10)
    [first] = a.claim_sessions(now=1000.0)
    assert (first.owner, first.expires_at, first.epoch) == ("a", 1010.0, 1)
    assert a.owns("s00", now=1009.9) and not b.owns("s00", now=1009.9)
    assert b.claim_sessions(now=1009.9) == []
    [renewed] = a.renew_leases(now=1009.0)  # renewed before expiry: 10 s from now
    assert renewed.expires_at == 1019.0 and renewed.epoch == 1
    assert b.claim_sessions(now=1018.9) == []
    assert not a.owns("s00", now=1019.0)  # expiry is exclusive
    assert a.renew_leases(["s00"], now=1019.0) == []  # too late: lost, even though unclaimed
    [taken] = b.claim_sessions(now=1019.0)
    assert (taken.owner, taken.expires_at, taken.epoch) == ("b", 1029.0, 2)
    assert a.renew_leases(now=1020.0) == [] and not a.owns("s00", now=1020.0)
    assert b.lease("s00") == taken and b.lease("ghost") is None


def test_a_released_lease_is_claimable_at_once_and_deleted_sessions_never_are(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    a = open_store(opened, postgres_dsn, replica="a", lease_ttl=10, clock=lambda: 1000.0)
    b = open_store(opened, postgres_dsn, replica="b", lease_ttl=10, clock=lambda: 1001.0)
    a.create_session(session("s1"))  # a replica creating a session holds its lease
    a.create_session(session("s2"))
    a.delete_session("s2")
    assert a.owns("s1") and b.claim_sessions() == []
    assert a.lease("s2") is None  # the delete dropped it
    assert a.release_leases(["s1", "s2", "ghost"]) == ["s1"]
    assert [c.session_id for c in b.claim_sessions()] == ["s1"]  # not the deleted s2
    assert a.release_leases(["s1"]) == []  # not a's to release any more


def test_a_replica_that_lost_its_lease_cannot_write_and_the_new_owner_can(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    now = {"t": 1000.0}
    a = open_store(opened, postgres_dsn, replica="a", lease_ttl=10, clock=lambda: now["t"])
    b = open_store(opened, postgres_dsn, replica="b", lease_ttl=10, clock=lambda: now["t"])
    a.create_session(session("s1"))
    a.append_events("s1", events(1, 2))
    now["t"] = 1010.0  # a's lease ran out (a was stopped, say): nobody claimed it yet
    with pytest.raises(LeaseLostError, match=r"lease of replica 'a' expired 0\.000 s ago"):
        a.append_events("s1", events(3, 3))
    [claim] = b.claim_sessions()
    assert claim.epoch == 2
    writes = {
        "append_events": lambda s: s.append_events("s1", events(3, 3)),
        "save_session": lambda s: s.save_session(
            "s1", state="x", snapshot=b"", wrapper_id=None, last_seq=1, updated_at=1.0
        ),
        "set_token_hash": lambda s: s.set_token_hash("s1", "0" * 64),
        "delete_session": lambda s: s.delete_session("s1"),
    }
    for name, write in writes.items():
        with pytest.raises(LeaseLostError, match=r"held by replica 'b', not by replica 'a'"):
            write(a)
        assert name and b.get_session("s1") == session("s1")  # nothing of it stored
    assert ids(b.events("s1")) == [1, 2]
    b.append_events("s1", events(3, 3))
    assert ids(a.events("s1")) == [1, 2, 3]  # reads are never fenced: any replica may tail


def test_a_write_in_flight_holds_off_the_claim_until_it_commits(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    now = {"t": 1000.0}
    a = open_store(opened, postgres_dsn, replica="a", lease_ttl=10, clock=lambda: now["t"])
    b = open_store(
        opened, impatient(postgres_dsn), replica="b", lease_ttl=10, clock=lambda: now["t"]
    )
    a.create_session(session("s1"))
    with a.batch("flush"):
        now["t"] = 1009.0
        a.append_events("s1", events(1, 1))  # checked its lease and holds the row FOR SHARE
        now["t"] = 1011.0  # the lease expires while a's transaction is still open...
        assert b.claim_sessions() == []  # ...but the row is locked: skipped, not taken
    assert [c.owner for c in b.claim_sessions()] == ["b"]  # once a committed
    assert ids(b.events("s1")) == [1]
    with pytest.raises(LeaseLostError):
        a.append_events("s1", events(2, 2))


def test_lease_expiry_follows_the_wall_clock_frozen_by_freezegun(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    with freeze_time("2030-01-01 00:00:00") as frozen:
        a = open_store(opened, postgres_dsn, replica="a", lease_ttl=15, clock=time.time)
        b = open_store(opened, postgres_dsn, replica="b", lease_ttl=15, clock=time.time)
        a.create_session(session("s1"))
        frozen.tick(14.9)
        assert a.owns("s1") and b.claim_sessions() == []
        a.renew_leases()
        frozen.tick(14.9)
        assert a.owns("s1")
        frozen.tick(0.2)
        assert not a.owns("s1")
        assert [c.session_id for c in b.claim_sessions()] == ["s1"]


def test_leases_need_a_replica_id_and_the_database_clock_works_without_a_passed_one(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    single = open_store(opened, postgres_dsn)
    single.create_session(session("s1"))
    single.append_events("s1", events(1, 1))  # not fenced without a replica id
    with pytest.raises(StoreError, match="without a replica id"):
        single.claim_sessions()
    a = open_store(opened, postgres_dsn, replica="a", lease_ttl=30)  # the database's clock
    [claim] = a.claim_sessions()
    assert abs(claim.expires_at - (time.time() + 30)) < 5
    assert a.owns("s1")
    a.append_events("s1", events(2, 2))


# -- the server restarted between two calls --------------------------------------------------------


def test_a_restarted_server_is_unavailable_once_then_the_store_reconnects_losing_nothing(
    postgres_cluster: Cluster, postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    store = open_store(opened, postgres_dsn)
    store.create_session(session("s1"))
    store.append_events("s1", events(1, 5))  # accepted: must survive

    postgres_cluster.restart()
    # The connection died with the old server; the store learns it on its next call.
    with pytest.raises(StoreUnavailableError, match=r"could not append 2 events.*postgresql://"):
        store.append_events("s1", events(6, 7))
    store.append_events("s1", events(6, 7))  # the same write, retried: reconnects
    assert ids(store.events("s1")) == [1, 2, 3, 4, 5, 6, 7]

    postgres_cluster.stop()
    try:
        with pytest.raises(StoreUnavailableError):
            store.last_event_id("s1")
        with pytest.raises(StoreUnavailableError, match="cannot connect"):
            store.append_events("s1", events(8, 8))  # down: each call says so, none hangs
        with pytest.raises(StoreUnavailableError), store.batch("flush"):
            store.append_events("s1", events(8, 8))
    finally:
        postgres_cluster.start()
    store.append_events("s1", events(8, 8))
    assert ids(store.events("s1")) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_the_connection_lost_mid_batch_voids_the_batch_and_nothing_of_it_is_stored(
    postgres_cluster: Cluster, postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    store = open_store(opened, postgres_dsn)
    for sid in ("A", "B"):
        store.create_session(session(sid))
    with pytest.raises(BatchAbortedError, match="nothing of the batch"), store.batch("flush"):
        with store.savepoint("session A"):
            store.append_events("A", events(1, 2))
        _terminate(postgres_cluster, postgres_dsn)
        with pytest.raises(BatchAbortedError), store.savepoint("session B"):
            store.append_events("B", events(1, 2))
        with pytest.raises(BatchAbortedError, match="void"):
            store.append_events("B", events(1, 2))  # no reconnect inside the batch
    assert store.events("A") == [] and store.events("B") == []  # reconnected after it
    store.append_events("A", events(1, 2))
    assert ids(store.events("A")) == [1, 2]


def _terminate(cluster: Cluster, dsn: str) -> None:
    """Cut every connection to the test's database, as a failover or a network cut would."""
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    raw(
        cluster.dsn(),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
        (name,),
    )


# -- a session write: the caller's savepoint, one fence --------------------------------------------


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first word(s) of every statement any connection of this process sends."""
    sent: list[str] = []
    execute = psycopg.Connection.execute

    def counting(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        text = query.as_string(self) if isinstance(query, psycopg.sql.Composable) else str(query)
        sent.append(" ".join(text.split()[:3]))
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", counting)
    return sent


def _save(store: PostgresStore, sid: str, seq: int = 1) -> None:
    store.save_session(
        sid, state="running", snapshot=b"{}", wrapper_id="w", last_seq=seq, updated_at=2.0
    )


def test_a_session_write_runs_bare_in_the_callers_savepoint_and_checks_the_lease_once(
    postgres_dsn: str, opened: list[PostgresStore], statements: list[str]
) -> None:
    """The host's flush (fsm.control.host.write_sessions): per session a savepoint holding
    append_events + save_session. Its writes take no savepoints of their own (the block's
    undoes them) and the lease is checked once, by append_events' first statement: 5 statements
    where there were 11."""
    store = open_store(opened, postgres_dsn, replica="a", lease_ttl=60)
    store.create_session(session("A"))
    with store.batch("flush"):
        statements.clear()
        with store.savepoint("session"):
            store.append_events("A", events(1, 2))
            _save(store, "A")
        sent = list(statements)
    assert sent == [
        'SAVEPOINT "fsm_sp1"',
        "WITH fence AS",  # the fence and append_events' session row: one statement
        "INSERT INTO events",
        "UPDATE sessions SET",  # save_session: no fence of its own, the block holds the row
        'RELEASE SAVEPOINT "fsm_sp1"',
    ], sent
    assert ids(store.events("A")) == [1, 2] and store.get_session("A").state == "running"  # type: ignore[union-attr]


def test_a_failed_write_in_a_savepoint_undoes_the_block_and_the_other_sessions_commit(
    postgres_dsn: str, opened: list[PostgresStore], statements: list[str]
) -> None:
    """Without a savepoint of its own, a write that fails after another of its block wrote
    rolls back to the block's savepoint: nothing of the block stays, the batch goes on."""
    store = open_store(opened, postgres_dsn, replica="a", lease_ttl=60)
    for sid in ("A", "B"):
        store.create_session(session(sid))
    with store.batch("flush"):
        with pytest.raises(EventOrderError), store.savepoint("session A"):
            store.append_events("A", events(1, 2))  # written, inside the block only
            _save(store, "A")
            store.append_events("A", events(2, 2))  # refused: id 2 is stored
        with store.savepoint("session B"):
            store.append_events("B", events(1, 1))
    assert sum(s.startswith("SAVEPOINT") for s in statements) == 2  # the blocks' only
    assert any(s.startswith("ROLLBACK TO") for s in statements)
    assert store.events("A") == [] and store.get_session("A") == session("A")
    assert ids(store.events("B")) == [1]


def test_an_error_caught_inside_the_savepoint_still_voids_the_block(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    """A caller that swallows a write's error inside the block cannot commit half of it: the
    block was rolled back when the write failed, later writes in it and its end raise."""
    store = open_store(opened, postgres_dsn, replica="a", lease_ttl=60)
    for sid in ("A", "B"):
        store.create_session(session(sid))
    with store.batch("flush"):
        block = pytest.raises(StoreError, match="rolled back and nothing of it is stored")
        with block, store.savepoint("session A"):
            store.append_events("A", events(1, 2))
            with pytest.raises(EventOrderError):
                store.append_events("A", events(1, 1))
            with pytest.raises(StoreError, match="takes no more writes"):
                _save(store, "A")
            with pytest.raises(StoreError, match="takes no more writes"), store.savepoint("in"):
                _save(store, "A")  # not reached: nor does a savepoint open inside it
        store.append_events("B", events(1, 1))
    assert store.events("A") == [] and store.get_session("A") == session("A")
    assert ids(store.events("B")) == [1]


def test_a_session_write_holds_the_lease_row_from_its_first_fence_to_the_commit(
    postgres_dsn: str, opened: list[PostgresStore]
) -> None:
    """Why one check per session write keeps the fence: from the first check on, the lease
    row is locked, so even a lease that expires inside the block cannot be claimed before the
    block commits; a write that may move a lease (here a release) makes the block check again,
    and the next write is refused; once committed, the other replica takes the session."""
    now = {"t": 1000.0}
    a = open_store(opened, postgres_dsn, replica="a", lease_ttl=10, clock=lambda: now["t"])
    b = open_store(
        opened, impatient(postgres_dsn), replica="b", lease_ttl=10, clock=lambda: now["t"]
    )
    a.create_session(session("s1"))
    with a.batch("flush"):
        with a.savepoint("session"):
            now["t"] = 1009.0
            a.append_events("s1", events(1, 1))  # the check, and the row FOR SHARE
            now["t"] = 1011.0  # expired inside the block...
            assert b.claim_sessions() == []  # ...but nobody can take it before the commit
            _save(a, "s1")
        with pytest.raises(LeaseLostError), a.savepoint("session"):
            a.release_leases(["s1"])
            _save(a, "s1", 2)  # the release made the block check again: refused
    assert ids(b.events("s1")) == [1] and b.get_session("s1").last_seq == 1  # type: ignore[union-attr]
    assert [c.owner for c in b.claim_sessions()] == ["b"]
    with pytest.raises(LeaseLostError), a.batch("flush"), a.savepoint("session"):
        a.append_events("s1", events(2, 2))
