"""Rows the store tests write, shared by the contract suite and the SQLite-only tests."""

from __future__ import annotations

from typing import Any

import msgspec

from adapters.store.base import Store
from adapters.store.rows import EventRow, MessageRow, SessionRow, hash_token
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


def message(**fields: Any) -> MessageRow:
    return msgspec.structs.replace(
        MessageRow(id="m1", prompt="fix it", state="queued", created_at=1.0), **fields
    )


def event(**fields: Any) -> EventRow:
    return msgspec.structs.replace(EventRow(4, 4.0, "event", b'{"n":4}'), **fields)


def save(store: Store, **fields: Any) -> None:
    values: dict[str, Any] = {
        "state": "running",
        "snapshot": b"{}",
        "wrapper_id": "w-1",
        "last_seq": 1,
        "updated_at": 2.0,
    }
    store.save_session(fields.pop("id", "s1"), **(values | fields))


def assert_untouched(store: Store) -> None:
    """Nothing of the refused write is stored and the store goes on working."""
    got = store.get_session("s1")
    assert got is not None and got.state == "starting" and got.last_seq == 0
    assert ids(store.events("s1")) == [1, 2, 3]
    assert store.messages("s1") == []
    store.append_events("s1", events(4, 4))
    save(store, last_seq=2**63 - 1)
    assert store.last_event_id("s1") == 4
