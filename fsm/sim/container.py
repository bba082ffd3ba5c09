"""One simulated ``fsm-agent serve`` process: ``WrapperCore`` with fake adapters for a body.

Theory of operation
-------------------
This is ``fsm.serve.host.WrapperHost`` with its I/O replaced, action for action: the core asks
(spawn Kilo, subscribe, probe, prompt, open a socket, exit …) and this class does it through the
fakes, reporting results back through the same core methods the real host calls, with the same
quirks — a Kilo that could not start *exited* with no code, a stop reports the exit it asked for,
a stream cancelled by ``Unsubscribe`` reports nothing, a closing socket first waits (bounded) for
the outbox to drain when the wrapper is stopping, ``ExitProcess`` on a live wrapper becomes a stop.
Keeping the two in step is what makes a simulated failure a statement about production.

The core's clock is this process's ``SimProcess``: SIGSTOP (``wrapper.hang``) freezes its timers
and its reads, SIGKILL (``wrapper.crash``) ends them, as for the real process. Kilo is a separate
process group: a killed wrapper leaves its Kilo running until the next wrapper starts and kills
the leftover (the pidfile check of ``adapters/pidfile.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from adapters.agents.registry import agent_spec
from fsm.engine.effects import (
    AbortAgentTurn,
    CloseSocket,
    Effect,
    ExitProcess,
    OpenSocket,
    ProbeHealth,
    Reconcile,
    SpawnAgent,
    StopAgent,
    Subscribe,
    Unsubscribe,
)
from fsm.engine.machine import Record
from fsm.machines.timers import TimerValues
from fsm.serve.core import AgentCall, Identity, PromptAgent, WrapperCore
from fsm.sim.agent import AgentProcess, FakeAgent, Subscription
from fsm.sim.channel import Connection, IngestChannel, WrapperEnd
from fsm.sim.process import Scheduler, SimProcess
from fsm.sim.scenario import WorldConfig
from fsm.wire.outbox import Outbox
from fsm.wire.protocol import WRAPPER_VERSION
from fsm.wire.transmit import Transmit

Note = Callable[[str, str], None]


class SimWrapper:
    def __init__(
        self,
        *,
        scheduler: Scheduler,
        config: WorldConfig,
        values: TimerValues,
        session_id: str,
        number: int,
        version: str | None,
        agent_session: str,
        fake_agent: FakeAgent,
        channel: IngestChannel,
        seed: str,
        note: Note,
        on_record: Callable[[SimWrapper, Record], None],
    ) -> None:
        self.config = config
        self.values = values
        self.number = number
        self.tag = f"w{number}"
        self.proc = SimProcess(scheduler, f"{session_id}/{self.tag}")
        self.fake_agent = fake_agent
        self.channel = channel
        self.note = note
        self.agent_session = agent_session
        self.on_exit: Callable[[int | None], None] | None = None
        self.core = WrapperCore(
            self.proc,
            values,
            Identity(
                wrapper_id=f"wrp_{session_id}_{number}",
                agent_session=agent_session,
                user_id="user",
                session_id=session_id,
                version=version or WRAPPER_VERSION,
            ),
            self._on_action,
            rng=random.Random(f"{seed}/{session_id}/{self.tag}"),
            outbox=Outbox(config.outbox_frames, config.outbox_bytes),
            on_record=lambda record: on_record(self, record),
            agent=config.agent,
            dialect=agent_spec(config.agent).dialect,
        )
        self.spawning: AgentProcess | None = None
        self.agent: AgentProcess | None = None
        self.agent_session_id: str | None = None
        self.subscriptions: dict[int, Subscription] = {}
        self.conn: Connection | None = None
        self.exit_code: int | None = None
        self._flushing = False

    # -- the process, as the runtime sees it ------------------------------------------------

    def boot(self) -> None:
        def start() -> None:
            leftover = self.fake_agent.process
            if leftover is not None and leftover.proc.alive:
                self.note("agent.leftover_killed", f"kilo#{leftover.number}")
                leftover.on_exit = None
                leftover.kill(-9)
            self.core.start()

        self.proc.call_later(self.config.wrapper_boot, start)

    def terminate(self, grace: float) -> None:
        """SIGTERM (handled like ``serve``'s signal task), SIGKILL after ``grace``."""

        def on_sigterm() -> None:
            if self.exit_code is None:
                self.exit_code = 0
            self.core.stop()
            if self.core.wrapper.terminal:
                self._final_flush()

        self.proc.deliver(on_sigterm)
        self.proc.scheduler.call_later(grace, lambda: self.kill(-9))

    def kill(self, code: int | None = -9) -> None:
        if not self.proc.alive:
            return
        self.proc.kill(code)
        if self.spawning is not None:
            self.spawning.kill(-9)  # a Kilo still starting dies with its parent's start call
        for sub in list(self.subscriptions.values()):
            sub.cancel()
        if self.conn is not None:
            self.channel.close(self.conn)  # the kernel closes the socket of a dead process
        self.note("wrapper.exit", f"{self.tag} code {code}")
        if self.on_exit is not None:
            self.on_exit(code)

    def pause(self) -> None:
        self.proc.pause()

    def resume(self) -> None:
        self.proc.resume()

    # -- actions --------------------------------------------------------------------------------

    def _on_action(self, effect: Effect) -> None:
        if isinstance(effect, Transmit):
            if self.conn is not None:
                self.conn.send_up(effect.frames)
        elif isinstance(effect, SpawnAgent):
            self._spawn()
        elif isinstance(effect, StopAgent):
            self._stop_agent(effect.keep_session)
        elif isinstance(effect, Subscribe):
            self._subscribe(effect.generation)
        elif isinstance(effect, Unsubscribe):
            sub = self.subscriptions.pop(effect.generation, None)
            if sub is not None:
                sub.cancel()
        elif isinstance(effect, ProbeHealth):
            self._probe(effect.generation)
        elif isinstance(effect, Reconcile):
            self._reconcile(effect.generation)
        elif isinstance(effect, PromptAgent):
            self._prompt(effect)
        elif isinstance(effect, AbortAgentTurn):
            if self.agent is not None and self.agent_session_id is not None:
                self.agent.abort(self.agent_session_id)
        elif isinstance(effect, AgentCall):
            self._agent_call(effect)
        elif isinstance(effect, OpenSocket):
            self._open_socket()
        elif isinstance(effect, CloseSocket):
            self._close_socket()
        elif isinstance(effect, ExitProcess):
            self._exit(effect)
        else:
            self.note("wrapper.unhandled", type(effect).__name__)

    def _later(self, fn: Callable[[], None]) -> None:
        """Results come back from another task: never inside the effect that asked."""
        self.proc.call_later(0.0, fn)

    def _spawn(self) -> None:
        def ready(process: AgentProcess) -> None:
            if self.spawning is not process:
                return
            self.spawning = None
            self.agent = process
            process.on_exit = lambda code: self._agent_exited(process, code)
            # As the real host's _ensure_session: this process's session, else the one recorded
            # for the agent-session name, else the name itself when it is a Kilo id.
            name = self.agent_session
            wanted = self.agent_session_id or self.fake_agent.recorded.get(name) or name
            session = self.fake_agent.ensure_session(wanted if wanted.startswith("ses") else None)
            self.fake_agent.recorded[name] = session
            self.agent_session_id = session
            process.session_id = session
            self.core.agent_ready(session)

        def failed() -> None:
            if self.spawning is process:
                self.spawning = None
                self.core.agent_exited(None)

        process = self.fake_agent.start(self.proc, ready, failed)
        self.spawning = process

    def _agent_exited(self, process: AgentProcess, code: int | None) -> None:
        if self.agent is process:  # an exit nobody asked for
            self.agent = None
            self.core.agent_exited(code)

    def _stop_agent(self, keep_session: bool) -> None:
        if self.spawning is not None:
            spawning, self.spawning = self.spawning, None
            spawning.kill(-15)
        process, self.agent = self.agent, None
        if not keep_session and self.agent_session_id is not None:
            self.fake_agent.delete_session(self.agent_session_id)
            self.agent_session_id = None
        if process is None:
            self._later(lambda: self.core.agent_exited(None))
            return
        process.terminate(self.values["agent_stop_grace"], self.core.agent_exited)

    def _subscribe(self, generation: int) -> None:
        process = self.agent
        if process is None:
            self._later(lambda: self.core.stream_ended(generation))
            return

        def event(payload: dict[str, Any]) -> None:
            self.core.agent_event(generation, payload)

        def ended() -> None:
            if self.subscriptions.pop(generation, None) is not None:
                self.core.stream_ended(generation)

        self.subscriptions[generation] = process.subscribe(generation, event, ended)

    def _probe(self, generation: int) -> None:
        process = self.agent
        if process is None:
            return  # no client: the machine's own probe timer decides
        answered = False

        def answer(healthy: bool) -> None:
            nonlocal answered
            if not answered:
                answered = True
                self.core.probe_result(generation, healthy)

        process.health(answer)
        # The real client gives up after the probe timeout and reports "not healthy".
        self.proc.call_later(self.values["health_probe_timeout"], lambda: answer(False))

    def _reconcile(self, generation: int) -> None:
        process = self.agent
        if process is None or self.agent_session_id is None:
            return

        def answer(result: tuple[bool, str, str]) -> None:
            busy, reason, error = result
            self.core.reconciled(generation, busy, reason, error)

        process.status(answer)

    def _prompt(self, action: PromptAgent) -> None:
        process, session = self.agent, self.agent_session_id
        command = action.command
        if process is None or session is None:
            return  # the agent is gone; the machines already handle that turn
        if action.resubmission:
            self.note("agent.resubmit", command.message_id)

        def failed(error: str) -> None:
            self.core.prompt_failed(command.message_id, error)

        process.prompt_async(session, command.prompt, failed, command.message_id)

    def _agent_call(self, call: AgentCall) -> None:
        process = self.agent
        if process is None:
            return
        request = str(call.args["request_id"])
        if call.method == "reply_permission":
            process.reply(request, str(call.args["reply"]), None)
        elif call.method == "reply_question":
            process.reply(request, "answer", call.args["answers"])
        else:
            process.reply(request, "reject", None)

    def _open_socket(self) -> None:
        end = WrapperEnd(
            on_open=self.core.socket_open,
            on_failed=self.core.socket_failed,
            on_closed=self.core.socket_closed,
            on_frame=self.core.control_frame,
        )
        self.conn = self.channel.connect(self.proc, end)

    def _close_socket(self) -> None:
        conn = self.conn
        if conn is None:
            return
        if self.core.wrapper.state in ("stopping", "stopped"):
            # Stopping: give the control plane a bounded chance to acknowledge what is left.
            self._when_flushed(lambda: self.channel.close(conn))
        else:
            self.channel.close(conn)

    def _when_flushed(self, then: Callable[[], None]) -> None:
        deadline = self.proc.now() + self.config.flush_bound

        def poll() -> None:
            if not len(self.core.outbox) or self.proc.now() >= deadline:
                then()
            else:
                self.proc.call_later(0.05, poll)

        poll()

    def _exit(self, effect: ExitProcess) -> None:
        if self.exit_code is None:
            self.exit_code = effect.code
        if self.core.wrapper.terminal:
            self._final_flush()
        else:
            self.core.stop()

    def _final_flush(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        self._when_flushed(lambda: self.kill(self.exit_code if self.exit_code is not None else 0))
