"""Capture real OpenCode event streams into ``tests/fixtures/opencode/*.event.jsonl`` (issue 17).

Not a test (pytest does not collect ``capture_*``): run it by hand when the pinned OpenCode moves,
``.venv/bin/python -m tests.agents.capture_opencode``. Each capture starts the real OpenCode
(``scripts/setup-opencode.sh``) against the fake model, reads ``GET /event`` on a plain socket and
writes one line per SSE event, ``{"data": <the event>, "t": <unix time>}``, after a first
``{"meta": ...}`` line naming the session and the user message ids the capture sent (what the
wrapper's dialect correlates on). The format is Kilo's fixtures' (``tests/fixtures/kilo``) minus
the chunk-size lines. ``/session/status`` is polled right after each prompt too and its answers
kept as ``{"status_poll": ...}`` lines: OpenCode's idle blip after a first prompt is an HTTP fact,
not an event, and the dialect tests replay it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from adapters.agents.opencode import OPENCODE
from adapters.kilo.client import AgentClient, ascending_id
from adapters.kilo.process import AgentServer, start_agent
from tests.fakes.fake_llm import FakeLLM, running_fake_llm

OUT = Path(__file__).parents[1] / "fixtures" / "opencode"
MODEL = "fake/fake-model"


class Capture:
    """Every event of one OpenCode's stream, with its arrival time, in order."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.changed = anyio.Event()

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.lines.append({"data": event, "t": round(time.time(), 3)})
        self.changed.set()
        self.changed = anyio.Event()

    async def until(self, match: Callable[[dict[str, Any]], bool], start: int = 0) -> int:
        """The index of the first event from ``start`` matching ``match`` (waits up to 30 s)."""
        with anyio.fail_after(30):
            while True:
                for i in range(start, len(self.events)):
                    if match(self.events[i]):
                        return i
                await self.changed.wait()


def _of(session: str, kind: str) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        props = event.get("properties") or {}
        return event.get("type") == kind and props.get("sessionID") == session

    return match


async def _pump(events: AsyncIterator[dict[str, Any]], capture: Capture) -> None:
    async for event in events:
        capture.add(event)


async def _poll_status(client: AgentClient, capture: Capture, times: int = 5) -> None:
    """``/session/status`` right after a prompt, a few times (the idle blip)."""
    for _ in range(times):
        status = await client.session_status()
        capture.lines.append(
            {
                "status_poll": {k: msgspec.to_builtins(v) for k, v in status.items()},
                "t": time.time(),
            }
        )
        await anyio.sleep(0.02)


async def _scenario(name: str, client: AgentClient, capture: Capture) -> dict[str, Any]:
    session = (await client.create_session(title=name)).id
    seed = f"capture-{name}"
    ids: list[str] = []

    def next_id() -> str:
        ids.append(ascending_id("msg", int(time.time() * 1000), f"{seed}-{len(ids)}"))
        return ids[-1]

    if name == "completed":
        await client.prompt_async(session, "say hello MODE:text", model=MODEL, message_id=next_id())
        await _poll_status(client, capture)
        await capture.until(_of(session, "session.idle"))
    elif name == "aborted":
        await client.prompt_async(
            session, "take your time MODE:slow", model=MODEL, message_id=next_id()
        )
        await _poll_status(client, capture)
        await capture.until(_of(session, "message.part.delta"))
        await client.abort(session)
        first = await capture.until(_of(session, "session.idle"))
        await anyio.sleep(1.0)  # OpenCode sends a second idle after an abort: keep it
        del first
    elif name == "queued":
        await client.prompt_async(
            session, "long answer MODE:slow", model=MODEL, message_id=next_id()
        )
        await _poll_status(client, capture)
        await capture.until(_of(session, "message.part.delta"))
        await client.prompt_async(session, "and then MODE:text", model=MODEL, message_id=next_id())
        await capture.until(_of(session, "session.idle"))
        await anyio.sleep(1.0)  # nothing more comes: one idle for the two prompts
    else:
        raise ValueError(name)
    return {"agent": "opencode", "version": OPENCODE.version, "session": session, "users": ids}


async def capture(name: str, fake: FakeLLM, root: Path) -> Path:
    server: AgentServer = await start_agent(
        workdir=root,
        state_dir=root / f".state-{name}",
        config=fake.provider_config(),
        agent_bin=None,
        startup_timeout=60,
        spec=OPENCODE,
    )
    client = AgentClient(server.url, server.password, spec=OPENCODE)
    try:
        recorded = Capture()
        async with client.subscribe_events() as events, anyio.create_task_group() as tg:
            tg.start_soon(_pump, events, recorded)
            await recorded.until(lambda e: e.get("type") == "server.connected")
            meta = await _scenario(name, client, recorded)
            tg.cancel_scope.cancel()
    finally:
        await client.aclose()
        await server.stop(5.0)
    path = OUT / f"{name}.event.jsonl"
    lines = [{"meta": meta}, *recorded.lines]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def main(names: list[str]) -> None:
    with running_fake_llm() as fake, tempfile.TemporaryDirectory() as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            print(await capture(name, fake, work))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:] or ["completed", "aborted", "queued"])
