"""Failure containment (issue 12, point 2): whatever one session's store write raises stays with
that session. The control host runs in-process on a real SQLite file with its real API server;
two wrappers (websockets clients) talk to it, and the store's writes for one of the sessions are
made to fail with each class of error a write can raise — every ``StoreError`` subclass, and the
plain Python errors a driver raises on bad values (the ``OverflowError`` that once stopped the
control plane was not a ``StoreError``).

While the failure lasts: the other session is acknowledged and stored as usual, the failing
session's frames are not acknowledged (so its wrapper still holds them), the process serves on.
Once the failure stops, the failing session's frames are stored exactly once.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from adapters.store import sqlite as store_module
from fsm.control.api import build_app
from fsm.control.host import ControlHost, ControlSettings
from fsm.hosting.logs import JsonLog
from fsm.machines.timers import CONTROL_TIMERS

ERRORS: list[Callable[[], BaseException]] = [
    lambda: store_module.StoreError("generic"),
    lambda: store_module.InvalidValueError("out of range"),
    lambda: store_module.StoreUnavailableError("disk full"),
    lambda: store_module.BatchAbortedError("rolled back"),
    lambda: store_module.SessionNotFoundError("gone"),
    lambda: store_module.EventOrderError("order"),
    lambda: store_module.DuplicateEventError("dup"),
    lambda: OverflowError("Python int too large to convert to SQLite INTEGER"),
    lambda: UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    lambda: ValueError("bad value"),
    lambda: RuntimeError("anything else"),
]


async def _send_hello(ws: ClientConnection, sid: str) -> None:
    await ws.send(
        json.dumps(
            {
                "type": "hello",
                "wrapper_id": f"wrp_{sid}",
                "version": "0.1.0",
                "protocol": 1,
                "agent_session": f"agent_{sid}",
                "user_id": "user",
                "session_id": sid,
            }
        )
    )


async def _event(ws: ClientConnection, seq: int) -> None:
    frame = {"type": "event", "seq": seq, "generation": 1, "event": {"type": "x", "n": seq}}
    await ws.send(json.dumps(frame))


async def _answers(ws: ClientConnection, until: int, timeout: float) -> tuple[bool, int]:
    """Whether a welcome came and the highest ack seen within ``timeout`` (stops at ``until``)."""
    welcomed, best = False, 0
    with anyio.move_on_after(timeout):
        while best < until:
            frame = json.loads(await ws.recv())
            welcomed = welcomed or frame["type"] == "welcome"
            if frame["type"] == "ack":
                best = max(best, int(frame["seq"]))
    return welcomed, best


@pytest.mark.parametrize("make_error", ERRORS, ids=lambda f: type(f()).__name__)
def test_one_sessions_failing_writes_leave_every_other_session_alone(
    tmp_path: Path, make_error: Callable[[], BaseException]
) -> None:
    async def scenario() -> None:
        settings = ControlSettings(
            db=tmp_path / "state" / "control.db",
            api_key="k",
            base_dir=tmp_path / "workspaces",
            runtime="external",
        )
        (tmp_path / "state").mkdir()
        host = ControlHost(settings, CONTROL_TIMERS.defaults(), JsonLog(io.StringIO()))
        async with anyio.create_task_group() as tg:
            tg.start_soon(host.run, build_app)
            await host.ready.wait()
            (bad, bad_token), (good, good_token) = (
                (e.row.id, t) for e, t in (host.create_session(), host.create_session())
            )
            store = host.store
            assert store is not None
            real_append = store.append_events
            failing = True

            def append(session_id: str, rows: Any) -> None:
                if failing and session_id == bad:
                    raise make_error()
                real_append(session_id, rows)

            store.append_events = append  # type: ignore[method-assign]
            base = f"ws://127.0.0.1:{host.port}/ingest"
            async with (
                connect(
                    f"{base}/{bad}", additional_headers={"Authorization": f"Bearer {bad_token}"}
                ) as bad_ws,
                connect(
                    f"{base}/{good}", additional_headers={"Authorization": f"Bearer {good_token}"}
                ) as good_ws,
            ):
                await _send_hello(bad_ws, bad)
                await _send_hello(good_ws, good)
                for seq in range(1, 6):
                    await _event(bad_ws, seq)
                    await _event(good_ws, seq)
                assert await _answers(good_ws, 5, timeout=5) == (True, 5)
                # Held, welcome included: nothing of that session is stored yet.
                assert await _answers(bad_ws, 5, timeout=0.5) == (False, 0)
                assert host.metrics.store_failures >= 1
                failing = False
                assert await _answers(bad_ws, 5, timeout=10) == (True, 5)
            stored = [
                json.loads(r.data)["event"]["n"]
                for r in store.events(bad, 0, 100)
                if r.kind == "event"
            ]
            assert stored == [1, 2, 3, 4, 5]
            host.request_stop()

    anyio.run(scenario)
