"""WrapperCore and SessionCore wired back to back on the virtual clock: the composed behaviour.

A tiny scripted stand-in plays Kilo (the simulator in fsm/sim has the full fake); the frames
really go through the protocol's encoder and decoders, so the two cores talk as in production.
"""

from __future__ import annotations

from typing import Any

from fsm.control.core import LogEntry, SessionCore
from fsm.engine.clock import VirtualClock
from fsm.engine.effects import Effect, SpawnAgent, StartWrapper, StopAgent
from fsm.machines.timers import CONTROL_TIMERS, WRAPPER_TIMERS
from fsm.serve.core import Identity, PromptAgent, WrapperCore
from fsm.wire.protocol import (
    PROTOCOL_VERSION,
    WRAPPER_VERSION,
    AbortCommand,
    EventFrame,
    Hello,
    LifecycleFrame,
    OutcomeFrame,
    PromptCommand,
    decode_from_control,
    decode_from_wrapper,
    encode,
)
from fsm.wire.transmit import Transmit

KS = "ses_kilo"


class Pair:
    """One session and its wrapper, connected by a lossless in-memory link."""

    def __init__(self, wrapper_version: str | None = None) -> None:
        self.clock = VirtualClock()
        self.log: list[LogEntry] = []
        self.actions: list[Effect] = []
        self.link_up = True
        self.prompts: list[PromptAgent] = []
        self.session = SessionCore(
            self.clock,
            CONTROL_TIMERS.defaults(),
            "s1",
            self._session_action,
            on_log=self.log.append,
        )
        ident = Identity(
            "w1", "agent", "u", "s1", **({"version": wrapper_version} if wrapper_version else {})
        )
        self.wrapper = WrapperCore(
            self.clock, WRAPPER_TIMERS.defaults(), ident, self._wrapper_action
        )

    def _session_action(self, effect: Effect) -> None:
        if isinstance(effect, Transmit):
            if self.link_up:
                for frame in effect.frames:
                    self.wrapper.control_frame(decode_from_control(encode(frame)))
        elif not isinstance(effect, StartWrapper):
            self.actions.append(effect)

    def _wrapper_action(self, effect: Effect) -> None:
        self.actions.append(effect)
        if isinstance(effect, Transmit):
            if self.link_up:
                for frame in effect.frames:
                    self.session.frame(decode_from_wrapper(encode(frame)))
        elif isinstance(effect, PromptAgent):
            self.prompts.append(effect)
        elif isinstance(effect, StopAgent):
            self.wrapper.agent_exited(0)

    def boot(self) -> None:
        self.session.start()
        self.wrapper.start()
        self.wrapper.socket_open()
        self.clock.advance(4)
        self.wrapper.agent_ready(KS)
        self.kilo("server.connected")

    def kilo(self, kind: str, **props: Any) -> None:
        self.wrapper.agent_event(
            self.wrapper.generation, {"type": kind, "properties": {"sessionID": KS, **props}}
        )

    def text(self) -> None:
        self.kilo("message.part.delta", messageID="msg_a", delta="hi")

    def close_turn(self, reason: str = "completed") -> None:
        self.kilo("session.turn.close", reason=reason)


def test_a_prompt_completes_on_both_sides_with_one_outcome() -> None:
    p = Pair()
    p.boot()
    m = p.session.send_message("hello")
    assert p.prompts and p.prompts[0].command.prompt == "hello"
    p.kilo("session.turn.open")
    p.text()
    p.close_turn()
    p.clock.advance_by(2)
    assert m.state == "completed"
    outcomes = [e for e in p.log if e.kind == "outcome"]
    assert len(outcomes) == 1
    assert p.session.state == "idle" and p.wrapper.wrapper.state == "idle"
    ids = [e.id for e in p.log]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_kilo_killed_after_progress_fails_agent_restarted_and_restarts_kilo() -> None:
    p = Pair()
    p.boot()
    m = p.session.send_message("work")
    p.kilo("session.turn.open")
    p.text()
    p.wrapper.agent_exited(-9)
    assert m.state == "failed" and m.reason == "agent_restarted"
    assert p.wrapper.wrapper.state == "restarting"
    p.clock.advance_by(1.5)  # the first backoff is 1 s
    assert p.wrapper.wrapper.state == "starting"
    assert sum(isinstance(a, SpawnAgent) for a in p.actions) == 2


def test_hang_before_first_token_resubmits_once_then_fails() -> None:
    p = Pair()
    p.boot()
    m = p.session.send_message("work")
    p.kilo("session.turn.open")
    # Kilo hangs: no events at all. Silence 15 s, probe 5 s unanswered -> agent hung.
    p.clock.advance_by(19.9)
    assert p.wrapper.wrapper.state == "stale"  # silent 15 s, the probe is out
    p.clock.advance_by(0.2)
    assert p.wrapper.wrapper.state == "restarting"  # the probe got no answer in 5 s
    assert m.state == "running"  # no progress yet: kept for a resubmission
    p.clock.advance_by(1)
    assert p.wrapper.wrapper.state == "starting"
    p.wrapper.agent_ready(KS)
    p.kilo("server.connected")
    assert [a.resubmission for a in p.prompts] == [False, True]
    p.clock.advance_by(21)  # hangs again in the same turn
    assert m.state == "failed" and m.reason == "agent_restarted"


def test_ingest_drop_resends_unacked_frames_and_delivers_each_once() -> None:
    p = Pair()
    p.boot()
    m = p.session.send_message("work")
    p.link_up = False
    p.kilo("session.turn.open")
    p.text()
    p.close_turn()
    p.clock.advance_by(2)
    assert m.state == "accepted"  # the outcome is buffered in the wrapper's outbox
    p.link_up = True
    p.wrapper.socket_closed()
    p.clock.advance_by(3)  # backoff (1 s + jitter), reconnect
    p.wrapper.socket_open()
    assert m.state == "completed"
    assert len([e for e in p.log if e.kind == "outcome"]) == 1
    assert len(p.wrapper.outbox) == 0


def test_version_mismatch_gets_shutdown_and_a_restart() -> None:
    p = Pair(wrapper_version="0.0.1")
    p.session.start()
    p.wrapper.start()
    p.wrapper.socket_open()
    assert p.wrapper.ingest.state == "closed"
    assert p.session.state == "restarting"
    assert any(getattr(a, "code", None) == 0 for a in p.actions)  # ExitProcess(0)


def test_duplicate_and_late_outcomes_are_ignored() -> None:
    p = Pair()
    p.boot()
    m = p.session.send_message("work")
    p.kilo("session.turn.open")
    p.close_turn()
    p.clock.advance_by(2)
    assert m.state == "completed"
    before = len(p.log)
    dup = OutcomeFrame(seq=p.session.last_seq, message_id=m.id, status="failed")
    p.session.frame(dup)
    assert p.session.duplicates == 1 and len(p.log) == before
    late = OutcomeFrame(seq=p.session.last_seq + 1, message_id=m.id, status="failed")
    p.session.frame(late)
    assert m.state == "completed" and p.session.ignored_outcomes == [m.id]


def test_new_wrapper_id_fails_accepted_messages_and_restored_session_keeps_deadlines() -> None:
    p = Pair()
    p.boot()
    m = p.session.send_message("work")
    p.session.hello(Hello("w2", "0.1.0", PROTOCOL_VERSION, "agent", "u", "s1"))
    assert m.state == "failed" and m.reason == "agent_restarted"
    snap = p.session.snapshot()
    stale_deadline = snap.timers[0].deadline
    clock = VirtualClock(start=p.clock.now() + 1000)  # the host was down past every deadline
    restored = SessionCore(clock, CONTROL_TIMERS.defaults(), "s1", lambda e: None)
    restored.restore(snap, list(p.session.messages.values()), "w2", p.session.last_seq)
    assert restored.machine.deadlines()[snap.timers[0].name] == stale_deadline
    clock.advance_by(0)  # overdue timers fire at once
    assert restored.state == "stale"


def _session(actions: list[Effect]) -> SessionCore:
    core = SessionCore(VirtualClock(), CONTROL_TIMERS.defaults(), "s1", actions.append)
    core.start()
    return core


def _hello(wrapper_id: str) -> Hello:
    return Hello(wrapper_id, WRAPPER_VERSION, PROTOCOL_VERSION, "agent", "u", "s1")


def test_a_prompt_is_never_held_and_a_replaced_wrapper_gets_none_of_its_predecessors_commands() -> (
    None
):
    """Issue 13, point 1, at the core both hosts call: what follows a welcome is derived from the
    messages (a prompt per queued message), and commands held for a wrapper go to that wrapper
    only. The old hosts held the PromptCommand itself and sent it to whichever wrapper came next."""
    actions: list[Effect] = []
    core = _session(actions)
    core.hello(_hello("w1"))
    assert core.commands_after_welcome() == []
    message = core.send_message("hi", "m1")
    sent = [f for a in actions if isinstance(a, Transmit) for f in a.frames]
    assert any(isinstance(f, PromptCommand) and f.message_id == "m1" for f in sent)
    assert message.state == "queued"  # transmitted is not accepted
    # The link dropped: the host could not send these. The prompt is not kept; the abort is.
    core.hold(PromptCommand("m1", "hi"))
    core.hold(AbortCommand("m1"))
    # The same wrapper comes back: its abort, then the prompt derived from the queued message.
    core.hello(_hello("w1"))
    again = core.commands_after_welcome()
    assert again == [AbortCommand("m1"), core._prompt(message)]
    # A replacement gets the prompt (the message is still queued, not failed), not the abort.
    core.hold(AbortCommand("m1"))
    core.hello(_hello("w2"))
    assert message.state == "queued"
    assert core.commands_after_welcome() == [core._prompt(message)]


def test_a_message_is_accepted_when_the_wrapper_says_kilo_has_it_and_only_then_fails() -> None:
    actions: list[Effect] = []
    core = _session(actions)
    core.hello(_hello("w1"))
    message = core.send_message("hi", "m1")
    core.frame(LifecycleFrame(1, "turn:m1", "queued", "", "start", 0.0))
    assert (message.state, core.state) == ("queued", "waiting")  # Kilo still cold-starting
    core.frame(LifecycleFrame(2, "turn:m1", "accepted", "queued", "dispatch", 0.0))
    assert (message.state, core.state) == ("accepted", "running")
    core.hello(_hello("w2"))  # a new wrapper: the accepted message is lost with the old one
    assert (message.state, message.reason) == ("failed", "agent_restarted")
    assert core.commands_after_welcome() == []  # an ended message is never sent again


def test_a_message_lost_with_an_oom_killed_wrapper_says_so_in_its_error() -> None:
    """What the runtime knows of an exit (a container's OOM kill, a daemon's refusal) reaches the
    user as the failed message's error; before, such a message said only ``agent_restarted``."""
    actions: list[Effect] = []
    core = _session(actions)
    core.hello(_hello("w1"))
    message = core.send_message("hi", "m1")
    core.frame(LifecycleFrame(1, "turn:m1", "accepted", "queued", "dispatch", 0.0))
    core.wrapper_exited(137, "oom_killed")
    assert (message.state, message.reason) == ("failed", "agent_restarted")
    assert message.error == (
        "the wrapper's container was killed at its memory limit (OOM) (exit code 137)"
    )
    other = _session([])
    other.hello(_hello("w1"))
    killed = other.send_message("hi", "m1")
    other.frame(LifecycleFrame(1, "turn:m1", "accepted", "queued", "dispatch", 0.0))
    other.wrapper_exited(-9)
    assert (killed.reason, killed.error) == ("agent_restarted", "the wrapper ended with signal 9")


def test_exit_details_are_cut_to_one_kibibyte() -> None:
    from fsm.control.core import exit_detail

    assert exit_detail(None, None) == ""
    assert exit_detail(None, "start_failed", "no such image: x") == (
        "the wrapper could not be started: no such image: x"
    )
    assert len(exit_detail(None, "start_failed", "é" * 2000).encode()) <= 1024


def test_every_log_entry_is_stamped_on_one_clock_and_the_wrappers_own_is_kept_apart() -> None:
    """Issue 13, point 7: lifecycle lines carried the wrapper's monotonic ``at`` (its uptime)
    over the control plane's wall-clock one, so one stream mixed two timebases."""
    from fsm.control.sse import sse_line

    log: list[LogEntry] = []
    clock = VirtualClock(start=1_800_000_000.0)
    core = SessionCore(clock, CONTROL_TIMERS.defaults(), "s1", lambda e: None, on_log=log.append)
    core.start()
    core.hello(_hello("w1"))
    core.frame(LifecycleFrame(1, "turn:m1", "queued", trigger="start", at=12.5))
    entry = [e for e in log if e.kind == "lifecycle"][-1]
    assert (entry.at, entry.data["wrapper_at"]) == (1_800_000_000.0, 12.5)
    assert "at" not in entry.data
    line = sse_line(entry).decode()
    assert '"at":1800000000.0' in line and '"wrapper_at":12.5' in line


def test_a_runtime_notice_is_logged_and_explains_a_message_lost_soon_after() -> None:
    """An OOM kill inside a living container (a tool, or Kilo) is the runtime's notice: the
    session's log shows it, and a message that Kilo's restart costs right after carries it as
    its error instead of an empty one; an old notice explains nothing."""
    log: list[LogEntry] = []
    clock = VirtualClock()
    core = SessionCore(clock, CONTROL_TIMERS.defaults(), "s1", lambda e: None, on_log=log.append)
    core.start()
    core.hello(_hello("w1"))
    lost = core.send_message("hi", "m1")
    core.frame(LifecycleFrame(1, "turn:m1", "accepted", trigger="dispatch"))
    core.runtime_notice("oom", "a process was killed at its memory limit")
    assert [e.data for e in log if e.kind == "runtime"] == [
        {"notice": "oom", "detail": "a process was killed at its memory limit"}
    ]
    core.frame(OutcomeFrame(2, "m1", "failed", "agent_restarted"))
    assert (lost.reason, lost.error) == (
        "agent_restarted",
        "a process was killed at its memory limit",
    )
    later = core.send_message("again", "m2")
    core.frame(LifecycleFrame(3, "turn:m2", "accepted", trigger="dispatch"))
    clock.advance_by(CONTROL_TIMERS.defaults()["runtime_notice_window"] + 1)
    core.frame(OutcomeFrame(4, "m2", "failed", "agent_restarted"))
    assert later.error == ""


def test_a_prompt_kilo_never_starts_restarts_kilo_so_the_next_one_runs() -> None:
    """Seen in the wrapper API fuzzer: after a burst of prompts and aborts Kilo took every later
    prompt and ran none. The first such prompt fails no_progress, and the wrapper restarts Kilo
    instead of handing the next one to the same wedged Kilo."""
    p = Pair()
    p.boot()
    p.session.send_message("work")
    assert p.wrapper.wrapper.state == "running"
    window = WRAPPER_TIMERS.defaults()["turn_no_progress"]
    waited = 0.0
    while waited <= window:  # Kilo heartbeats all along: alive, just not running the prompt
        p.kilo("server.heartbeat")
        p.clock.advance_by(5.0)
        waited += 5.0
    assert p.wrapper.wrapper.state in ("restarting", "starting")
    assert [m.reason for m in p.session.messages.values()] == ["no_progress"]


def test_the_agents_heartbeat_keeps_the_link_alive_and_never_leaves_the_wrapper() -> None:
    """Kilo's ``server.heartbeat`` (every 10 s) was forwarded as an event frame: a stored row, an
    ack and a sequence number per session every 10 s, replayed to every client resuming a
    stream. It proves only the wrapper's link to its agent alive, so it stays in the wrapper."""
    p = Pair()
    p.boot()
    sent_before = [a for a in p.actions if isinstance(a, Transmit)]
    logged_before = len(p.log)
    silence = WRAPPER_TIMERS.defaults()["stream_silence"]
    for _ in range(int(4 * silence // 10) + 1):
        p.clock.advance_by(10.0)
        p.kilo("server.heartbeat")
    assert p.wrapper.link is not None and p.wrapper.link.state == "streaming"
    frames = [
        frame
        for effect in p.actions
        if isinstance(effect, Transmit) and effect not in sent_before
        for frame in effect.frames
    ]
    assert not [f for f in frames if isinstance(f, EventFrame)], frames
    assert not [e for e in p.log[logged_before:] if e.kind == "event"]
