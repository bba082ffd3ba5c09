"""A fake OpenAI-compatible model server owned by the tests, in the modes Kilo was measured with.

The behaviour is chosen by a ``MODE:<word>`` in the last user message (so one server serves every
test, each prompt picking its own fate):

text      a short streamed reply
slow      40 tokens, ``SLOW_DELAY`` apart (time for a test to do something mid-turn)
crawl     the same 40 tokens, ``CRAWL_DELAY`` apart (many agents' turns overlapping on 2 cores)
tool      a ``bash`` tool call (``echo hi-from-tool``); after the tool result, "Tool finished."
run       a ``bash`` tool call of the command written ``RUN[...]`` in the prompt (what an agent
          told to look around would run); its output reaches the model in the next request
question  a ``question`` tool call; after the answer, "Thanks."
hang      headers, then nothing (until the client goes away)
500       HTTP 500
400       HTTP 400 (an error no agent retries)
midfail   a few tokens, then the connection drops

Title and summary requests (Kilo's small-model calls) always get a quick text answer so they never
take a mode meant for the main turn. The server runs in a thread with its own event loop so it is
independent of whichever loop a test uses, and it records every request.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fsm.demo.scripted_model import chunk

SLOW_DELAY = 0.25
CRAWL_DELAY = 6.0
MODE = re.compile(r"MODE:(\w+)")
RUN = re.compile(r"RUN\[(.+?)\]", re.DOTALL)


@dataclass
class FakeLLM:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)

    def provider_config(self, permission: dict[str, str] | None = None) -> dict[str, Any]:
        """Kilo configuration using this server, with timeouts so nothing waits forever."""
        config: dict[str, Any] = {
            "model": "fake/fake-model",
            "small_model": "fake/fake-model",
            "provider": {
                "fake": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "Fake LLM",
                    "options": {
                        "baseURL": self.url,
                        "apiKey": "test",
                        "timeout": 60000,
                        "chunkTimeout": 30000,
                    },
                    "models": {"fake-model": {"name": "fake-model"}},
                }
            },
        }
        if permission is not None:
            config["permission"] = permission
        return config


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _mode(body: dict[str, Any]) -> str:
    messages: list[dict[str, Any]] = body.get("messages") or []
    system = " ".join(_text_of(m) for m in messages if m.get("role") == "system").lower()
    if not body.get("tools") and ("title" in system or "summar" in system):
        return "title"
    if messages and messages[-1].get("role") == "tool":
        return "after_tool"
    users = [m for m in messages if m.get("role") == "user"]
    found = MODE.findall(_text_of(users[-1])) if users else []
    return found[-1] if found else "text"


def _tool_call(model: str, name: str, arguments: dict[str, Any], call_id: str) -> list[bytes]:
    call = {
        "index": 0,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    return [
        chunk(model, {"role": "assistant", "content": None, "tool_calls": [call]}),
        chunk(model, {}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]


def build_app(fake: FakeLLM) -> Starlette:
    calls = 0

    async def completions(request: Request) -> Response:
        nonlocal calls
        body: dict[str, Any] = await request.json()
        mode = _mode(body)
        fake.requests.append(body)
        fake.modes.append(mode)
        model = str(body.get("model", "fake-model"))
        calls += 1
        if mode == "500":
            return JSONResponse({"error": {"message": "fake internal error"}}, status_code=500)
        if mode == "400":
            return JSONResponse({"error": {"message": "fake bad request"}}, status_code=400)

        async def words(text: str, delay: float = 0.01) -> AsyncIterator[bytes]:
            yield chunk(model, {"role": "assistant", "content": ""})
            for word in text.split(" "):
                await anyio.sleep(delay)
                yield chunk(model, {"content": word + " "})
            yield chunk(model, {}, "stop")
            yield b"data: [DONE]\n\n"

        async def stream() -> AsyncIterator[bytes]:
            if mode == "title":
                async for piece in words("Fake title", 0):
                    yield piece
            elif mode == "after_tool":
                last = _text_of(body["messages"][-1])
                text = "Thanks." if "answered" in last or "dismissed" in last else "Tool finished."
                async for piece in words(text):
                    yield piece
            elif mode == "tool":
                command = {"command": "echo hi-from-tool", "description": "Echo a greeting"}
                for piece in _tool_call(model, "bash", command, f"call_fake_{calls}"):
                    yield piece
            elif mode == "run":
                users = [m for m in body["messages"] if m.get("role") == "user"]
                found = RUN.search(_text_of(users[-1]))
                command = {"command": found[1] if found else "true", "description": "Run it"}
                for piece in _tool_call(model, "bash", command, f"call_fake_{calls}"):
                    yield piece
            elif mode == "question":
                question = {
                    "questions": [
                        {
                            "question": "Which colour?",
                            "header": "Colour",
                            "options": [
                                {"label": "red", "description": "warm"},
                                {"label": "blue", "description": "cool"},
                            ],
                        }
                    ]
                }
                for piece in _tool_call(model, "question", question, f"call_fake_{calls}"):
                    yield piece
            elif mode in ("slow", "crawl"):
                text = " ".join(f"w{i}" for i in range(40))
                async for piece in words(text, SLOW_DELAY if mode == "slow" else CRAWL_DELAY):
                    yield piece
            elif mode == "hang":
                yield chunk(model, {"role": "assistant", "content": ""})
                await anyio.sleep_forever()
            elif mode == "midfail":
                yield chunk(model, {"role": "assistant", "content": ""})
                yield chunk(model, {"content": "partial answer"})
                raise ConnectionResetError("fake mid-stream failure")
            else:
                async for piece in words("Hello from fake LLM."):
                    yield piece

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )


@contextmanager
def running_fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    fake.url = f"http://127.0.0.1:{port}/v1"
    server = uvicorn.Server(
        uvicorn.Config(build_app(fake), log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake LLM did not start")
        time.sleep(0.02)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=5)
