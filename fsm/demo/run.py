"""``fsm-agent demo``: a control plane, a wrapper, a real Kilo and a model, one prompt, end to end.

It drives the product through its public surfaces only — the control plane's REST API and its
Server-Sent Events stream — and prints what a user of the API sees: every state transition of the
session, wrapper, agent link and turn machines, Kilo's events, the message's states, then a summary
with the reply and, for a failed turn, the agent's own error text (the message's ``error``: what
Kilo said, e.g. "Cannot connect to API"), so a wrong model URL reads as such, not as a hang.

Without ``--model-url``/``--model-key`` Kilo is served a scripted model (``scripted_model.py``)
that cannot act on a prompt: the demo says so up front, and the reply quotes the prompt and says
it was not acted on. Start-up steps print progress lines on a terminal (``progress.py``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import uvicorn

from adapters.agents.registry import DEFAULT_AGENT, agent_spec
from fsm.client import ControlClient, CreateSessionBody
from fsm.control.api import build_app as build_control_app
from fsm.control.host import ControlHost, ControlSettings
from fsm.demo.progress import Progress
from fsm.demo.scripted_model import agent_provider_config, build_app
from fsm.hosting.logs import JsonLog
from fsm.settings.config import timer_values
from fsm.settings.runtime import RuntimeSettings

COLORS = {
    "transition": "\033[36m",
    "lifecycle": "\033[35m",
    "event": "\033[2m",
    "message": "\033[32m",
    "outcome": "\033[1;32m",
    "events_dropped": "\033[33m",
    "ignored": "\033[33m",
}
RESET = "\033[0m"
SHOWN_EVENTS = frozenset(
    {
        "server.connected",
        "session.turn.open",
        "session.turn.close",
        "session.error",
        "session.idle",
        "message.part.delta",
        "permission.asked",
        "question.asked",
        "session.network.asked",
    }
)
"""Kilo event types worth a line in the timeline; the rest (plugin lists, diffs, status
snapshots, heartbeats) are only counted, so the prompt's story stays readable."""


SCRIPTED_NOTE = (
    "no model credentials given (--model-url/--model-key or FSM_AGENT_MODEL_URL/"
    "FSM_AGENT_MODEL_KEY): serving the agent a built-in scripted model on {base}. It streams a "
    "fixed reply that quotes your prompt and does not act on it (no files are written, no tools "
    "run); for a real OpenAI-compatible model: fsm-agent demo --model-url https://api.example/v1 "
    "--model-key KEY --model-name MODEL (see examples/kilo-openai.json)"
)
REPLY_SHOWN = 400
"""Characters of the reply the summary shows."""
WAIT_NOTE_EVERY = 15.0
"""Seconds between "still waiting" progress lines while a turn runs."""


class Printer:
    def __init__(
        self, color: bool, progress: Progress | None = None, agent: str = DEFAULT_AGENT
    ) -> None:
        self.agent = agent_spec(agent)
        self.color = color
        self.start = time.monotonic()
        self.counts: dict[str, int] = {}
        self.progress = progress or Progress(enabled=False)
        self.reply: list[str] = []
        """The assistant's streamed text (``message.part.delta``), for the summary."""

    def line(self, kind: str, text: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        stamp = f"{time.monotonic() - self.start:7.2f}s"
        if self.color:
            print(f"{stamp} {COLORS.get(kind, '')}{text}{RESET}", flush=True)
        else:
            print(f"{stamp} {text}", flush=True)

    def entry(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "transition":
            if data.get("trigger") == "wrapper_connected":
                self.progress.step(
                    f"wrapper connected; {self.agent.title} is starting (about 5 s)…"
                )
            self.line(
                kind,
                f"session     {data['from'] or '(new)':>12} -> {data['to']:<12} "
                f"on {data['trigger']}",
            )
        elif kind == "lifecycle":
            machine = str(data.get("machine", ""))
            if machine == "wrapper" and data.get("state") == "running":
                self.progress.step(f"{self.agent.title} ready; the prompt goes to the model…")
            self.line(
                kind,
                f"{machine:<11} {data.get('source') or '(new)':>12} -> "
                f"{data.get('state'):<12} on {data.get('trigger', '')}",
            )
        elif kind == "event":
            event = data.get("event", {})
            kind_ = event.get("type", "?")
            if kind_ not in SHOWN_EVENTS:
                self.counts["event"] = self.counts.get("event", 0) + 1
                return
            props = event.get("properties", {})
            if kind_ == "message.part.delta" and props.get("field", "text") == "text":
                self.reply.append(str(props.get("delta", "")))
            detail = props.get("delta") or props.get("reason") or ""
            self.line(
                kind,
                f"agent event {kind_} {str(detail)[:60]!r}" if detail else f"agent event {kind_}",
            )
        elif kind == "message":
            self.line(kind, f"message     {data['id']} is {_state_with_reason(data)}")
        elif kind == "outcome":
            self.line(
                kind,
                f"outcome     {data.get('message_id')}: {data.get('status')} "
                f"{data.get('error') or ''}",
            )
        else:
            self.line(kind, f"{kind:<11} {json.dumps(data)[:100]}")


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _workspace(root: Path) -> Path:
    # Inside the control plane's workspace root (a session's workdir must be), and apart from
    # its state directory (the database is no workspace's business).
    ws = root / "workspaces" / "demo"
    ws.mkdir(parents=True)
    (ws / "README.md").write_text("# demo workspace\n")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@localhost",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@localhost",
    }
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "demo workspace"]):
        subprocess.run(["git", *args], cwd=ws, check=True, env=env)
    return ws


async def run_demo(
    *,
    prompt: str,
    model_url: str | None,
    model_key: str | None,
    model_name: str,
    agent_bin: str | None,
    keep: bool,
    color: bool,
    timeout: float,
    runtime: str = "local",
    image: str | None = None,
    agent: str = DEFAULT_AGENT,
) -> int:
    """``agent`` names the agent server the wrapper runs (``[agent] name`` in the config file
    the control plane hands its wrappers). ``runtime="docker"`` runs the wrapper in a container
    of ``image`` (else the project's wrapper image, built if missing) on the host's network, so
    it reaches the loopback model and control plane as a local wrapper would."""
    root = Path(tempfile.mkdtemp(prefix="fsm-agent-demo-"))
    out = Printer(color, Progress(), agent)
    print(f"fsm-agent demo in {root}", flush=True)
    try:
        containers = None
        if runtime == "docker":
            from fsm.control.main import docker_settings

            out.progress.step(
                "checking dockerd and the wrapper image (a first build takes minutes)…"
            )
            try:
                containers = docker_settings(RuntimeSettings(network="host"), image)
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(f"wrappers run in containers of {containers.image}", flush=True)
        return await _demo(
            root,
            out,
            prompt,
            model_url,
            model_key,
            model_name,
            agent_bin,
            timeout,
            containers,
            agent,
        )
    finally:
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


async def _demo(
    root: Path,
    out: Printer,
    prompt: str,
    model_url: str | None,
    model_key: str | None,
    model_name: str,
    agent_bin: str | None,
    timeout: float,
    containers: RuntimeSettings | None = None,
    agent: str = DEFAULT_AGENT,
) -> int:
    workspace = _workspace(root)
    async with anyio.create_task_group() as tg:
        if model_url and model_key:
            agent_config: dict[str, Any] = {
                "model": f"demo/{model_name}",
                "small_model": f"demo/{model_name}",
                "provider": {
                    "demo": {
                        "npm": "@ai-sdk/openai-compatible",
                        "name": "demo provider",
                        "options": {
                            "baseURL": model_url,
                            "apiKey": model_key,
                            "chunkTimeout": 60000,
                        },
                        "models": {model_name: {"name": model_name}},
                    }
                },
            }
            print(f"using the model {model_name} at {model_url}", flush=True)
        else:
            sock = _free_socket()
            model_server = uvicorn.Server(
                uvicorn.Config(build_app(), log_level="warning", lifespan="off", access_log=False)
            )
            tg.start_soon(lambda: model_server.serve(sockets=[sock]))
            base = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
            agent_config = agent_provider_config(base)
            print(SCRIPTED_NOTE.format(base=base), flush=True)
        (root / "agent.json").write_text(json.dumps(agent_config))
        config = root / "fsm-agent.toml"
        config.write_text(f'[agent]\nname = "{agent}"\nconfig_file = "agent.json"\n')
        api_key = secrets.token_urlsafe(16)
        (root / "control").mkdir(mode=0o700)
        host = ControlHost(
            ControlSettings(
                db=root / "control" / "control.db",
                api_key=api_key,
                base_dir=root / "workspaces",
                config=config,
                # alias for fsm/sim and fsm/control until they are renamed (issue 17)
                agent_bin=agent_bin,
                runtime="docker" if containers is not None else "local",
                runtime_settings=containers or RuntimeSettings(),
                # The container runtime's files (Kilo's state, token files) beside the database.
                state_dir=root / "control" if containers is not None else None,
            ),
            timer_values(config)["control"],
            JsonLog(open(root / "control.log", "a")),  # noqa: SIM115 - lives as long as the demo
        )
        out.progress.step("starting the control plane…")
        tg.start_soon(host.run, build_control_app)
        await host.ready.wait()
        out.progress.step(f"control plane ready on 127.0.0.1:{host.port}; starting a wrapper…")
        code = await _drive(host, api_key, workspace, prompt, out, timeout)
        host.request_stop()
        if not (model_url and model_key):
            model_server.should_exit = True
    return code


async def _drive(
    host: ControlHost, api_key: str, workspace: Path, prompt: str, out: Printer, timeout: float
) -> int:
    base = f"http://127.0.0.1:{host.port}"
    # The demo is the typed client's first user (fsm.client, docs/client.md): what it does here
    # is what a program driving the control plane does.
    async with ControlClient(base, api_key) as client:
        created = await client.create_session(CreateSessionBody(workdir=str(workspace)))
        sid = created.id
        out.line("message", f"created session {sid} (control plane on {base})")
        final: dict[str, Any] = {}
        done = anyio.Event()
        message_id = ""

        async def follow() -> None:
            async with client.events(sid) as events:
                async for event in events:
                    data = {**event.data, "at": event.at}
                    out.entry(event.kind, data)
                    if (
                        event.kind == "message"
                        and data.get("id") == message_id
                        and data.get("state") in ("completed", "failed", "cancelled")
                    ):
                        final.update(data)
                        done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            message_id = (await client.send_message(sid, prompt)).id
            with anyio.move_on_after(timeout):
                while not done.is_set():
                    with anyio.move_on_after(WAIT_NOTE_EVERY):
                        await done.wait()
                    if not done.is_set():
                        waited = time.monotonic() - out.start
                        out.progress.step(
                            f"still waiting for the turn ({waited:.0f}s; --timeout {timeout:g}s)…"
                        )
            if not final:
                # No outcome in time: what the control plane knows of the message is the best
                # account there is (its state, and any error the agent gave so far).
                message = await client.get_message(sid, message_id)
                final.update(msgspec.to_builtins(message), timed_out=True)
            await client.delete_session(sid)
            with anyio.move_on_after(15):
                while sid in host.sessions:
                    await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
    state = final.get("state", "no outcome")
    error = str(final.get("error") or "")
    print("\nsummary", flush=True)
    shown = _state_with_reason(final) if final else state
    if final.get("timed_out"):
        shown += f", no outcome within --timeout {timeout:g}s"
    print(f"  message   {message_id}: {shown}")
    if error:
        print(f"  error     {error}")
    reply = " ".join("".join(out.reply).split())
    if reply:
        cut = reply if len(reply) <= REPLY_SHOWN else reply[: REPLY_SHOWN - 1] + "…"
        print(f"  reply     {cut}")
    print(
        f"  timeline  {sum(out.counts.values())} entries: "
        + ", ".join(f"{k} {v}" for k, v in sorted(out.counts.items()))
    )
    print(f"  wall time {time.monotonic() - out.start:.1f}s")
    if state != "completed":
        said = f" (the agent said: {error})" if error else ""
        print(
            f"the prompt did not complete{said}; see control.log and the wrapper's log "
            "(workspaces/logs, or control/logs with --runtime docker) in the demo folder (rerun "
            "with --keep)",
            file=sys.stderr,
        )
        return 1
    return 0


def _state_with_reason(message: dict[str, Any]) -> str:
    """``failed (no_progress)``; a reason that only repeats the state (completed) is left out."""
    state, reason = str(message.get("state", "")), message.get("reason")
    return f"{state} ({reason})" if reason and reason != state else state
