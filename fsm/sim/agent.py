"""A fake Kilo server (``kilo serve``) on virtual time: what the wrapper's Kilo adapter talks to.

Theory of operation
-------------------
``FakeAgent`` is the Kilo *installation* of one container: it outlives processes (its sessions are
on disk, so a restarted Kilo resumes them) and starts ``AgentProcess`` instances. A process answers
the HTTP calls the wrapper makes (health, session get/create, ``prompt_async``, abort, permission
and question replies, session status) after ``http_latency``, streams events to each subscription
(``server.connected`` first, ``server.heartbeat`` every 10 s), and runs prompts one at a time —
a prompt sent while busy is queued and the running turn then closes ``superseded``, as measured in
``shared/kilo/README.md`` §7.9.

What a prompt does is its *plan* (see ``fsm.sim.scenario.PLAN_HELP``), chosen by the prompt's
text as the project's fake LLM chooses by a ``MODE:`` word: streamed text or reasoning at
``token_interval``, a tool that runs silently for a while, a stall, a question or permission that
waits for an answer, a final error (before or after the turn's close). Two error names are Kilo's
own waits rather than final errors: ``error network: <message>`` is a network wait
(``session.network.asked`` + ``offline``, then nothing until aborted: the unreachable-model case)
and ``error retry: <message>`` is one ``retry`` status Kilo recovers from (the plan goes on).

Events have the shapes measured on the real Kilo (``shared/kilo/captures``), because what counts
as progress depends on them (``fsm.machines.turn.AGENT_EVENTS``): a stream opens its part *empty*
and fills it with deltas, then repeats the full text; a question or permission is a tool part
(``pending`` → ``asked`` → ``running``); a session's first turn shows the synthetic "Initializing
snapshot…" spinner (~7 frames/s for 1.3 s, alongside the model's work).

Faults are the ones measured on the real server (README §8): SIGKILL ends every stream about
0.1 s later and fails every request in flight; SIGSTOP freezes the process — no events, no HTTP
answers — and SIGCONT catches up at once with one heartbeat; a silent stream stays open but
delivers nothing; a refused port makes a start fail with no listening line.

Every callback runs inside a ``SimProcess``: Kilo's work in Kilo's process, answers and events in
the wrapper's (a stopped wrapper reads nothing either). Event delivery keeps a FIFO per stream and
each scheduled delivery takes the *head*, so order holds even when the explorer runs pending
callbacks in any order.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from fsm.engine.clock import TimerHandle
from fsm.sim.process import Scheduler, SimProcess
from fsm.sim.scenario import Segment, WorldConfig

Note = Callable[[str, str], None]
"""``note(action, detail)``: counts and timelines what the fake did (``agent.spawn``, …)."""


class Subscription:
    """One ``GET /event`` stream: a FIFO towards the wrapper, possibly silent or ended."""

    def __init__(
        self,
        agent: AgentProcess,
        generation: int,
        reader: SimProcess,
        on_event: Callable[[dict[str, Any]], None],
        on_end: Callable[[], None],
    ) -> None:
        self.agent = agent
        self.generation = generation
        self.reader = reader
        self.on_event = on_event
        self.on_end = on_end
        self.silent = False
        self.open = True
        self.cancelled = False
        self._queue: deque[dict[str, Any] | None] = deque()

    def push(self, payload: dict[str, Any] | None, delay: float) -> None:
        """Queue an event (``None`` is the end of the stream) for delivery after ``delay``."""
        if self.cancelled or (payload is not None and (self.silent or not self.open)):
            return
        if payload is None:
            self.open = False
        self._queue.append(payload)
        self.reader.call_later(delay, self._deliver_head)

    def _deliver_head(self) -> None:
        if not self._queue or self.cancelled:
            return
        payload = self._queue.popleft()
        if payload is None:
            self.on_end()
        else:
            self.on_event(payload)

    def cancel(self) -> None:
        """The wrapper aborted the HTTP stream (``Unsubscribe``): nothing more is delivered."""
        self.cancelled = True
        self.open = False
        self._queue.clear()
        self.agent.subscriptions.pop(self.generation, None)


class TurnRun:
    """One prompt being worked on: its plan, where it is, and what it waits for."""

    def __init__(
        self,
        prompt: str,
        plan: tuple[Segment, ...],
        user_id: str,
        asst_id: str,
        messages: list[str],
    ) -> None:
        self.prompt = prompt
        self.messages = messages
        """fsm-agent's message ids this run (superseded chain included) was delivered: the
        ground truth the ``own_turn`` invariant checks outcomes against."""
        self.plan = plan
        self.index = 0
        self.user_id = user_id
        self.asst_id = asst_id
        self.handle: TimerHandle | None = None
        self.waiting: str | None = None
        """Id of the permission/question this turn waits on."""
        self.waiting_part = ""
        """The tool part of that permission/question."""
        self.parts = itertools.count(1)


class AgentProcess:
    """One running ``kilo serve``: HTTP answers, event streams and the prompt queue."""

    def __init__(self, fake_agent: FakeAgent, number: int, client: SimProcess) -> None:
        self.fake_agent = fake_agent
        self.number = number
        self.config = fake_agent.config
        self.proc = SimProcess(fake_agent.scheduler, f"kilo#{number}")
        self.client = client
        """The wrapper's process: answers and events are read there."""
        self.subscriptions: dict[int, Subscription] = {}
        self.run: TurnRun | None = None
        self.queue: deque[tuple[str, str, str]] = deque()
        """Prompts (text, kilo session, message id) waiting for the running turn to end."""
        self.draining = False
        """Told to abort, its close not emitted yet (``abort_drain``): prompts are dropped."""
        self.requests: dict[str, str] = {}
        """Pending permission/question ids → kind (stale ones survive an abort, as measured)."""
        self.last_close: tuple[str, str] = ("completed", "")
        self._event_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._inflight: dict[int, Callable[[str], None]] = {}
        self._calls = itertools.count(1)
        self.on_exit: Callable[[int | None], None] | None = None
        self.session_id = ""
        self.brackets = self.config.agent != "opencode"
        """Kilo brackets every turn (``session.turn.open``/``close``); upstream OpenCode does not:
        its session is busy until one ``session.idle``, which queued prompts share (issue 17's
        measurements; ``fsm.agents.dialect``)."""
        self.proc.call_later(self.config.agent_heartbeat, self._heartbeat)

    # -- HTTP ----------------------------------------------------------------------------------

    def _http(
        self,
        handler: Callable[[], Any],
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """A request: half the latency there, handled in Kilo's process, half back."""
        half = self.config.http_latency / 2
        call = next(self._calls)
        if on_error is not None:
            self._inflight[call] = on_error

        def handle() -> None:
            self._inflight.pop(call, None)
            result = handler()
            if on_result is not None:
                self.client.call_later(half, lambda: on_result(result))

        def arrive() -> None:
            if not self.proc.alive:
                self._inflight.pop(call, None)
                if on_error is not None:
                    self.client.call_later(half, lambda: on_error("connection refused"))
                return
            self.proc.deliver(handle)

        self.fake_agent.scheduler.call_later(half, arrive)

    def health(self, on_answer: Callable[[bool], None]) -> None:
        self._http(lambda: True, on_answer, lambda _e: on_answer(False))

    def status(self, on_answer: Callable[[tuple[bool, str, str]], None]) -> None:
        """``GET /session/status`` then the last message: (busy, close reason, error)."""
        self._http(lambda: (self.run is not None or self.draining, *self.last_close), on_answer)

    def prompt_async(
        self, session: str, text: str, on_error: Callable[[str], None], message_id: str = ""
    ) -> None:
        self._http(lambda: self._accept_prompt(session, text, message_id), None, on_error)

    def abort(self, session: str) -> None:
        self._http(lambda: self._abort(session))

    def reply(self, request_id: str, reply: str, answers: list[list[str]] | None) -> None:
        self._http(lambda: self._reply(request_id, reply, answers))

    def subscribe(
        self,
        generation: int,
        on_event: Callable[[dict[str, Any]], None],
        on_end: Callable[[], None],
    ) -> Subscription:
        sub = Subscription(self, generation, self.client, on_event, on_end)
        half = self.config.http_latency / 2

        def opened() -> None:
            if sub.cancelled:
                return
            self.subscriptions[generation] = sub
            sub.push(self._payload("server.connected", {}), half)

        def arrive() -> None:
            if not self.proc.alive:
                sub.push(None, half)  # connection refused: the stream ends at once
                return
            self.proc.deliver(opened)

        self.fake_agent.scheduler.call_later(half, arrive)
        return sub

    # -- events --------------------------------------------------------------------------------

    def _payload(self, kind: str, props: dict[str, Any]) -> dict[str, Any]:
        n = next(self._event_ids)
        return {"id": f"evt_{self.number:03d}_{n:07d}", "type": kind, "properties": props}

    def emit(self, kind: str, **props: Any) -> None:
        if self.session_id and kind not in ("server.heartbeat", "server.connected"):
            props = {"sessionID": self.session_id, **props}
        payload = self._payload(kind, props)
        for sub in list(self.subscriptions.values()):
            sub.push(payload, self.config.http_latency / 2)

    def _heartbeat(self) -> None:
        self.emit("server.heartbeat")
        self.proc.call_later(self.config.agent_heartbeat, self._heartbeat)

    # -- prompts and turns ---------------------------------------------------------------------

    def _accept_prompt(self, session: str, text: str, message_id: str = "") -> None:
        self.fake_agent.note("agent.prompt", text)
        if self.draining:
            self.fake_agent.note("agent.prompt_dropped", message_id or text)
            return
        if self.run is not None:
            self.queue.append((text, session, message_id))
            self.emit("session.queue.changed", queued=[text])
            return
        self._open(text, [message_id] if message_id else [])

    def _open(self, text: str, messages: list[str]) -> None:
        n = self.fake_agent.next_message()
        # OpenCode names the user message as the caller did (the wrapper always does) and keeps
        # the session in the message's info, which is where its dialect looks for it.
        user = messages[-1] if not self.brackets and messages else f"msg_u{n}"
        run = TurnRun(text, self.fake_agent.plan_for(text), user, f"msg_a{n}", messages)
        self.run = run
        self.emit("message.updated", info=self._info(run.user_id, "user"))
        self.emit(
            "message.part.updated",
            part={"id": f"prt_u{n}", "messageID": run.user_id, "type": "text", "text": text},
        )
        if self.brackets:
            self.emit("session.turn.open")
        self.emit("session.status", status={"type": "busy"})
        self.emit("message.updated", info=self._info(run.asst_id, "assistant"))
        if self.session_id not in self.fake_agent.snapshotted:
            self.fake_agent.snapshotted.add(self.session_id)
            self._spinner(run, SPINNER_FRAMES)
        self._next_segment(run)

    def _info(self, message_id: str, role: str) -> dict[str, Any]:
        info = {"id": message_id, "role": role}
        return info if self.brackets else {**info, "sessionID": self.session_id}

    def _spinner(self, run: TurnRun, left: int) -> None:
        """Kilo's synthetic snapshot spinner: its own part, updated ~7/s, then removed."""
        part = f"prt_s{run.asst_id}"
        if self.run is not run:
            return
        if left == 0:
            self.emit("message.part.removed", messageID=run.asst_id, partID=part)
            return
        frame = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"[left % 10]
        self.emit(
            "message.part.updated",
            part={
                "id": part,
                "messageID": run.asst_id,
                "type": "text",
                "text": f"{frame} Initializing snapshot…",
                "synthetic": True,
                "metadata": {"kilocode.lifecycle": "transient"},
            },
        )
        self.proc.call_later(1 / 7, lambda: self._spinner(run, left - 1))

    def _next_segment(self, run: TurnRun) -> None:
        if self.run is not run:
            return
        if run.index >= len(run.plan):
            self._finish(run, "completed")
            return
        seg = run.plan[run.index]
        run.index += 1
        if seg.kind in ("text", "reasoning"):
            self._stream(run, seg)
        elif seg.kind == "tool":
            part = f"prt_t{run.asst_id}_{next(run.parts)}"
            self._tool(run, part, "pending")
            self._tool(run, part, "running")
            run.handle = self.proc.call_later(
                seg.seconds or 0.0, lambda: self._tool_done(run, part)
            )
        elif seg.kind == "stall":
            if seg.seconds is not None:
                run.handle = self.proc.call_later(seg.seconds, lambda: self._next_segment(run))
        elif seg.kind in ("question", "permission"):
            prefix = "que" if seg.kind == "question" else "per"
            request = f"{prefix}_{self.number}_{next(self._request_ids)}"
            self.requests[request] = seg.kind
            run.waiting = request
            run.waiting_part = f"prt_t{run.asst_id}_{next(run.parts)}"
            tool = "question" if seg.kind == "question" else "bash"
            self._tool(run, run.waiting_part, "pending", tool)
            if seg.kind == "permission":  # measured order: running, then asked
                self._tool(run, run.waiting_part, "running", tool)
            self.emit(f"{seg.kind}.asked", id=request)
            if seg.kind == "question":  # measured order: asked, then running
                self._tool(run, run.waiting_part, "running", tool)
        elif seg.kind == "error" and seg.text.startswith("network: "):
            message = seg.text.removeprefix("network: ")
            request = f"que_{self.number}_{next(self._request_ids)}"
            self.emit("session.network.asked", id=request, message=message, restored=False)
            self.emit(
                "session.status",
                status={"type": "offline", "requestID": request, "message": message},
            )
        elif seg.kind == "error" and seg.text.startswith("retry: "):
            message = seg.text.removeprefix("retry: ")
            self.emit("session.status", status={"type": "retry", "attempt": 1, "message": message})
            self.emit("session.status", status={"type": "busy"})
            self._next_segment(run)
        elif seg.kind == "error":
            self._fail(run, seg.text, late=False)
        elif seg.kind == "late_error":
            self._fail(run, seg.text, late=True)

    def _stream(self, run: TurnRun, seg: Segment) -> None:
        """Measured shape: step-start, the part opened empty, one delta per token chunk, then
        the full text again in a last update."""
        part = f"prt_{run.asst_id}_{next(run.parts)}"
        tokens = max(1, int((seg.seconds or 0.0) / self.config.token_interval))
        self.emit(
            "message.part.updated",
            part={"id": f"prt_ss{part}", "messageID": run.asst_id, "type": "step-start"},
        )
        self.emit(
            "message.part.updated",
            part={"id": part, "messageID": run.asst_id, "type": seg.kind, "text": ""},
        )

        def token(left: int) -> None:
            if self.run is not run:
                return
            self.emit(
                "message.part.delta", messageID=run.asst_id, partID=part, field="text", delta=" w"
            )
            if left > 1:
                run.handle = self.proc.call_later(
                    self.config.token_interval, lambda: token(left - 1)
                )
            else:
                self.emit(
                    "message.part.updated",
                    part={
                        "id": part,
                        "messageID": run.asst_id,
                        "type": seg.kind,
                        "text": " w" * tokens,
                    },
                )
                self._next_segment(run)

        run.handle = self.proc.call_later(self.config.token_interval, lambda: token(tokens))

    def _tool(self, run: TurnRun, part: str, status: str, tool: str = "bash") -> None:
        self.emit(
            "message.part.updated",
            part={
                "id": part,
                "messageID": run.asst_id,
                "type": "tool",
                "tool": tool,
                "state": {"status": status},
            },
        )

    def _tool_done(self, run: TurnRun, part: str) -> None:
        if self.run is run:
            self._tool(run, part, "completed")
            self._next_segment(run)

    def _fail(self, run: TurnRun, message: str, *, late: bool) -> None:
        name, _, text = message.partition(": ")
        error = {"name": name if text else "APIError", "data": {"message": text or message}}
        if not late:
            self.emit("session.error", error=error)
        self._finish(run, "error", message)
        if late:
            self.proc.call_later(0.2, lambda: self.emit("session.error", error=error))

    def _finish(self, run: TurnRun, reason: str, error: str = "") -> None:
        if run.handle is not None:
            run.handle.cancel()
        if reason == "completed":
            self.emit(
                "message.part.updated",
                part={"id": f"prt_f{run.asst_id}", "messageID": run.asst_id, "type": "step-finish"},
            )
        follows = bool(self.queue) and reason == "completed"
        if self.brackets or not follows:  # OpenCode: one busy run, one idle, for the queue
            self.emit("session.status", status={"type": "idle"})
            self.emit("session.idle")
        self.run = None
        self.last_close = (reason, error)
        if follows:
            text, _session, message_id = self.queue.popleft()
            if self.brackets:
                self.emit("session.turn.close", reason="superseded")
            self._open(text, [*run.messages, *([message_id] if message_id else [])])
            return
        # A final error drops what was queued behind the run: those messages end with it.
        self._closed(run, reason, self._drop_queue())
        if self.brackets:
            self.emit("session.turn.close", reason=reason)

    def _drop_queue(self) -> list[str]:
        """Empty the queue of prompts behind the run; the message ids it held."""
        ids = [m for _t, _s, m in self.queue if m]
        self.queue.clear()
        return ids

    def _closed(self, run: TurnRun, reason: str, queued: list[str]) -> None:
        """Note which messages a run's final close ended (the run's, and follow-ups queued
        behind it, which Kilo drops with it): ``agent.turn_closed`` ``<reason> <ids…>``."""
        ids = [*run.messages, *queued]
        self.fake_agent.note("agent.turn_closed", " ".join([reason, *ids]))

    def _abort(self, _session: str) -> None:
        self.fake_agent.note("agent.abort", "")
        run = self.run
        if run is None or self.draining:
            self.queue.clear()
            return  # abort on an idle session: 200 true, no events
        queued = self._drop_queue()
        if run.handle is not None:
            run.handle.cancel()
        run.handle = None
        self.run = None
        if self.config.abort_drain > 0:
            self.draining = True
            self.proc.call_later(self.config.abort_drain, lambda: self._interrupted(run, queued))
        else:
            self._interrupted(run, queued)

    def _interrupted(self, run: TurnRun, queued: list[str]) -> None:
        self.draining = False
        self.emit(
            "session.error", error={"name": "MessageAbortedError", "data": {"message": "Aborted"}}
        )
        self.emit("session.status", status={"type": "idle"})
        self.last_close = ("interrupted", "")
        self._closed(run, "interrupted", queued)
        if self.brackets:
            self.emit("session.turn.close", reason="interrupted")
            self.emit("session.drain.interrupted")
        else:
            self.emit("session.idle")

    def _reply(self, request_id: str, reply: str, answers: list[list[str]] | None) -> None:
        kind = self.requests.pop(request_id, None)
        run = self.run
        if kind is None or run is None or run.waiting != request_id:
            return  # a stale request: 200 true and nothing happens (README §7.8)
        run.waiting = None
        tool = "bash"
        if kind == "permission":
            self.emit("permission.replied", requestID=request_id, reply=reply)
            rejected = reply == "reject"
        else:
            tool = "question"
            rejected = answers is None
            if rejected:
                self.emit("question.rejected", requestID=request_id)
            else:
                self.emit("question.replied", requestID=request_id, answers=answers)
        self._tool(
            run, run.waiting_part, "error" if rejected and tool == "bash" else "completed", tool
        )
        if rejected:
            self._finish(run, "completed")  # a rejection stops the loop, no further LLM call
        else:
            self._next_segment(run)

    def fail_turn(self, message: str) -> None:
        if self.run is not None:
            self._fail(self.run, message, late=False)

    # -- the process ---------------------------------------------------------------------------

    def silence(self) -> None:
        for sub in self.subscriptions.values():
            sub.silent = True

    def drop_streams(self) -> None:
        for sub in list(self.subscriptions.values()):
            sub.push(None, self.config.http_latency / 2)
            self.subscriptions.pop(sub.generation, None)

    def kill(self, code: int = -9) -> None:
        """SIGKILL (or an exit): streams end ~0.1 s later, requests in flight fail."""
        if not self.proc.alive:
            return
        self.proc.kill(code)
        for sub in list(self.subscriptions.values()):
            sub.push(None, 0.1)
        self.subscriptions.clear()
        for on_error in list(self._inflight.values()):
            self.client.call_later(0.01, lambda f=on_error: f("connection reset"))  # type: ignore[misc]
        self._inflight.clear()
        if self.on_exit is not None:
            exit_cb = self.on_exit
            self.client.call_later(0.0, lambda: exit_cb(code))

    def terminate(self, grace: float, on_exit: Callable[[int | None], None]) -> None:
        """SIGTERM, SIGKILL after ``grace``: a stopped (SIGSTOP) Kilo never handles SIGTERM."""
        self.on_exit = None  # the exit we asked for is reported through on_exit only
        if not self.proc.alive:
            self.client.call_later(0.0, lambda: on_exit(self.proc.exit_code))
            return
        done = False

        def exited(code: int) -> None:
            nonlocal done
            if done:
                return
            done = True
            self.kill(code)
            self.client.call_later(0.0, lambda: on_exit(code))

        def graceful() -> None:
            self.emit("server.instance.disposed")
            self.proc.call_later(self.config.agent_stop, lambda: exited(0))

        self.proc.deliver(graceful)
        self.fake_agent.scheduler.call_later(grace, lambda: exited(-9))


SPINNER_FRAMES = 9
"""About 1.3 s of "Initializing snapshot…" at ~7 frames/s, as measured on a first turn."""


class FakeAgent:
    """Kilo as installed in one container: its sessions on disk, its processes over time."""

    def __init__(self, scheduler: Scheduler, config: WorldConfig, note: Note) -> None:
        self.scheduler = scheduler
        self.config = config
        self.note = note
        self.sessions: set[str] = set()
        self.recorded: dict[str, str] = {}
        """The wrapper's record in its state dir (``fsm.serve.host.SESSIONS_FILE``): which Kilo
        session each agent-session name is. It lives beside Kilo's data and outlives wrappers."""
        self.snapshotted: set[str] = set()
        """Sessions whose first turn showed the snapshot spinner (it is on disk: once each)."""
        self.plans: dict[str, tuple[Segment, ...]] = {}
        self.refuse_starts = 0
        self.process: AgentProcess | None = None
        self._processes = itertools.count(1)
        self._sessions = itertools.count(1)
        self._messages = itertools.count(1)
        self.prefix = ""

    def next_message(self) -> int:
        return next(self._messages)

    def plan_for(self, text: str) -> tuple[Segment, ...]:
        return self.plans.get(text, self.config.plan)

    def start(
        self,
        client: SimProcess,
        on_ready: Callable[[AgentProcess], None],
        on_failed: Callable[[], None],
    ) -> AgentProcess:
        """Spawn ``kilo serve``; ``on_ready`` once healthy, ``on_failed`` if it never listens."""
        number = next(self._processes)
        process = AgentProcess(self, number, client)
        self.process = process
        refused = self.refuse_starts > 0
        if refused:
            self.refuse_starts -= 1
            self.note("agent.refused", f"kilo#{number}: port already in use")

            def fail() -> None:
                process.proc.kill(1)
                on_failed()

            process.proc.call_later(0.5, fail)
        else:
            self.note("agent.spawn", f"kilo#{number}")
            process.proc.call_later(
                self.config.agent_boot, lambda: client.deliver(lambda: on_ready(process))
            )
        return process

    def ensure_session(self, wanted: str | None) -> str:
        """Resume ``wanted`` if Kilo still has it (idle cleanup keeps it), else create one."""
        if wanted and wanted in self.sessions:
            self.note("agent.session_resumed", wanted)
            return wanted
        created = f"ses_{self.prefix}{next(self._sessions):03d}"
        self.sessions.add(created)
        self.note("agent.session_created", created)
        return created

    def delete_session(self, session: str) -> None:
        self.sessions.discard(session)
        self.note("agent.session_deleted", session)
