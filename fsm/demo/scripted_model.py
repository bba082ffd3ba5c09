"""A scripted OpenAI-compatible model on loopback, so the demo runs with no credentials.

Kilo talks to it through its ``@ai-sdk/openai-compatible`` provider exactly as it would to a
real endpoint: ``POST /v1/chat/completions`` with ``stream: true``, answered with SSE chunks and
``[DONE]``. The reply is a short fixed text streamed in small pieces (so the demo shows progress
events), which first quotes the user's last prompt and says it was not acted on: a demo run with
``--prompt "write hello.txt"`` that answered "Hello" and wrote nothing would look like a broken
agent, when it is a script that cannot write files. Requests for titles get a title. Nothing here
is used by production code paths.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = (
    "Hello from the scripted model. fsm-agent started a wrapper, the wrapper started Kilo, "
    "and this reply is streaming back through both state machines."
)
ECHO = (
    "You asked: {prompt!r}. I am the demo's scripted model: I do not act on prompts, so nothing "
    "was done; run the demo with --model-url and --model-key for a real model. "
)
"""What the reply starts with when the request carries a prompt: says the prompt arrived and
was not acted on."""


ENVIRONMENT_DETAILS = "<environment_details>"
"""Where Kilo's appended context (time, working directory) starts in a user message."""


def last_prompt(messages: list[Any]) -> str:
    """The prompt of the last user message (a string or OpenAI content parts), or ``""``."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        text = ""
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = " ".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, dict) and part.get("type") == "text"
            )
        # Kilo appends its own context to the user's text; the prompt is what comes before it.
        return " ".join(text.split(ENVIRONMENT_DETAILS, 1)[0].split())
    return ""


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-demo",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def build_app(reply: str = REPLY, delay: float = 0.05) -> Starlette:
    requests: list[dict[str, Any]] = []

    async def completions(request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        requests.append(body)
        model = str(body.get("model", "scripted"))
        messages = body.get("messages") or []
        system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system")
        prompt = last_prompt(messages)
        if "title" in system.lower():
            text = "fsm-agent demo"
        elif prompt:
            text = ECHO.format(prompt=prompt[:200]) + reply
        else:
            text = reply

        async def stream() -> AsyncIterator[bytes]:
            yield chunk(model, {"role": "assistant", "content": ""})
            words = text.split(" ")
            for i in range(0, len(words), 3):
                await anyio.sleep(delay)
                yield chunk(model, {"content": " ".join(words[i : i + 3]) + " "})
            yield chunk(model, {}, "stop")
            yield b"data: [DONE]\n\n"

        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-demo",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        return StreamingResponse(stream(), media_type="text/event-stream")

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
    app.state.requests = requests
    return app


def agent_provider_config(base_url: str) -> dict[str, Any]:
    """``KILO_CONFIG_CONTENT`` pointing Kilo at this model (timeouts so nothing waits forever)."""
    return {
        "model": "scripted/scripted",
        "small_model": "scripted/scripted",
        "provider": {
            "scripted": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Scripted demo model",
                "options": {
                    "baseURL": base_url,
                    "apiKey": "demo",
                    "timeout": 30000,
                    "chunkTimeout": 15000,
                },
                "models": {"scripted": {"name": "scripted"}},
            }
        },
    }
