"""``fsm.client.ControlClient`` against a live control plane (real wrapper, real Kilo, fake model).

One control plane serves the whole module; each test makes its own sessions. The resume test
puts a proxy it can cut between the client and the control plane and drops the event stream's
connection mid-turn, once between chunks and once in the middle of one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fsm.client import ApiError, ControlClient, PromptBody, Retry, StreamGaveUp
from fsm.client.events import Event
from tests.client.proxy import cuttable_proxy
from tests.fakes.control_process import API_KEY, WRAPPER_FAST, Control, free_port, running_control
from tests.fakes.fake_llm import FakeLLM

pytestmark = [pytest.mark.kilo, pytest.mark.anyio]

FAST_RETRY = Retry(attempts=5, initial=0.05, maximum=0.2)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeLLM) -> Iterator[Control]:
    tmp = tmp_path_factory.mktemp("client")
    with running_control(tmp, fake_llm.provider_config(), WRAPPER_FAST) as running:
        yield running


def _client(port: int, key: str = API_KEY) -> ControlClient:
    return ControlClient(f"http://127.0.0.1:{port}", key, timeout=10, retry=FAST_RETRY)


async def test_create_send_stream_to_completion_and_delete(control: Control) -> None:
    async with _client(control.port) as client:
        session = await client.create_session()
        assert session.state in ("starting", "ready", "idle") and session.messages == []
        assert session.id in [s.id for s in await client.list_sessions()]
        sent = await client.send_message(session.id, PromptBody(prompt="say hello MODE:text"))
        assert sent.state == "queued"
        states: list[str] = []
        async with client.events(session.id) as stream:
            async for event in stream:
                if event.kind == "message" and event.data["id"] == sent.id:
                    states.append(event.data["state"])
                    if event.data["state"] in ("completed", "failed", "cancelled"):
                        break
        assert states == ["queued", "accepted", "running", "completed"]
        done = await client.wait_message(session.id, sent.id, timeout=30)
        assert done.state == "completed" and done.prompt == "say hello MODE:text"
        assert [m.id for m in await client.list_messages(session.id)] == [sent.id]
        # The stored log alone (follow=False) ends by itself and holds what we streamed.
        stored = [e async for e in client.events(session.id, follow=False)]
        assert [e.id for e in stored] == sorted({e.id for e in stored})
        assert any(e.kind == "outcome" and e.data["status"] == "completed" for e in stored)
        stopping = await client.delete_session(session.id)
        assert stopping.id == session.id


async def test_refusals_are_typed_errors_naming_the_field(control: Control) -> None:
    async with _client(control.port) as client:
        with pytest.raises(ApiError) as unknown:
            await client.get_session("no-such-session")
        assert (unknown.value.status, unknown.value.field) == (404, "session_id")
        session = await client.create_session()
        with pytest.raises(ApiError) as blank:
            await client.send_message(session.id, "   ")
        assert (blank.value.status, blank.value.field) == (400, "prompt")
        with pytest.raises(ApiError) as model:
            await client.send_message(session.id, PromptBody(prompt="hi", model="no-slash"))
        assert (model.value.status, model.value.field) == (400, "model")
        with pytest.raises(ApiError) as abort:
            await client.abort(session.id, "msg_nobody")
        assert (abort.value.status, abort.value.field) == (404, "message_id")
        with pytest.raises(ApiError) as stream:
            await anext(aiter(client.events("no-such-session")))
        assert (stream.value.status, stream.value.field) == (404, "session_id")
        await client.delete_session(session.id)
    async with _client(control.port, key="wrong-key") as stranger:
        with pytest.raises(ApiError) as denied:
            await stranger.list_sessions()
        assert (denied.value.status, denied.value.field) == (401, "Authorization")
        assert "wrong-key" not in repr(stranger)


async def test_a_dropped_event_stream_resumes_with_every_event_exactly_once(
    control: Control,
) -> None:
    async with cuttable_proxy(control.port) as proxy, _client(control.port) as direct:
        session = await direct.create_session()
        sent = await direct.send_message(session.id, "long answer MODE:slow")
        seen: list[Event] = []
        async with (
            _client(proxy.port) as client,
            client.events(session.id) as stream,
        ):
            async for event in stream:
                seen.append(event)
                deltas = sum(
                    e.kind == "event" and e.data["event"].get("type") == "message.part.delta"
                    for e in seen
                )
                if deltas == 3 and proxy.cuts == 0:
                    proxy.cut()  # between chunks
                if deltas == 8 and proxy.cuts == 1:
                    proxy.cut(partial=True)  # in the middle of the next chunk
                if (
                    event.kind == "message"
                    and event.data["id"] == sent.id
                    and event.data["state"] in ("completed", "failed", "cancelled")
                ):
                    break
            reconnects = stream.reconnects
        assert proxy.cuts == 2 and reconnects >= 2 and proxy.connections >= 3
        assert seen[-1].data["state"] == "completed", seen[-1]
        stored = [e async for e in direct.events(session.id, follow=False)]
        ids = [e.id for e in seen]
        assert ids == [e.id for e in stored][: len(ids)], "every event once, in order, no gap"
        assert seen == stored[: len(seen)]
        await direct.delete_session(session.id)


async def test_an_unreachable_control_plane_ends_the_stream_after_its_retry_budget() -> None:
    client = ControlClient(
        f"http://127.0.0.1:{free_port()}", API_KEY, retry=Retry(attempts=2, initial=0.01)
    )
    async with client:
        stream = client.events("any-session")
        with pytest.raises(StreamGaveUp) as gave_up:
            await anext(stream)
        assert gave_up.value.attempts == 2 and stream.reconnects == 2
