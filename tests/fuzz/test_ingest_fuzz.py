"""Fuzzing the ingest socket of a live control plane (issue 12, point 5).

One real ``fsm-agent control --runtime external`` process serves two sessions for the whole
module. The *victim* is driven by a well-behaved fake wrapper (a thread: hello, heartbeats, an
event per fuzz example whose ack it waits for). The *attacked* session's token is the fuzzer's:
every example opens a new socket on it, sends what hypothesis drew (see ``frames.py``) and checks
the answer against ``frames.classify``, the contract written independently of the server:

* a frame the contract refuses closes that socket with 1008 (1009 when too large; 1007 also for
  invalid UTF-8) and a reason, and nothing after it is acked; a frame it takes is acked;
* never 1006 (dropped without a close frame) or 1011 (server error), never a dead process;
* nothing from a refused frame is kept: the next hello's ``welcome.acked`` is the seq the model
  says the session holds;
* after every example the process answers ``/healthz``, the victim's socket is open, its new
  event is acked (which also proves a flush ran after the example: a crash while storing what the
  example sent is caught by the example that sent it) and its session is unchanged.

When the process dies the example fails with its log tail, and the next example starts a new one
on the same database (so hypothesis can replay and shrink the killer).

``FSM_AGENT_FUZZ_EXAMPLES`` sets the examples of each fuzz test (default 150, the three fuzz
tests then take ~30 s). The figures (frames tried, verdicts, closes by code) are printed at the
end of the module's run, and each test asserts it exercised what it claims to.
"""

from __future__ import annotations

import http.client
import inspect
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, cast

import pytest
from hypothesis import HealthCheck, given, settings
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from fsm.settings.limits import defaults as limit_defaults
from fsm.wire.protocol import PROTOCOL_VERSION, WRAPPER_VERSION
from tests.fakes.control_process import API_KEY, Control, free_port
from tests.fuzz.frames import (
    ACCEPT,
    BAD_DATA,
    EITHER,
    INT63,
    POLICY,
    REJECT,
    FillTo,
    FuzzFrame,
    Raw,
    Ref,
    RenderContext,
    Scenario,
    Verdict,
    classify,
    describe,
    good_hello,
    hello_body,
    nest,
    probe_frame,
    scenarios_after_hello,
    scenarios_before_hello,
    scenarios_mixed,
)

EXAMPLES = int(os.environ.get("FSM_AGENT_FUZZ_EXAMPLES", "150"))
LIMITS = limit_defaults()
FRAME_BYTES = LIMITS.frame_bytes
FRAME_DEPTH = LIMITS.frame_depth
TIMERS = {
    # Nothing in the run may end a session on its own: no stale, idle or connect deadline.
    "stale_heartbeat": "30m",
    "idle_stop": "2h",
    "wrapper_idle": "3h",  # the wrapper's orphan backstop stays above the control's idle stop
    "first_connect": "2h",
}
VICTIM_HEARTBEAT = 0.5
ANSWER_TIMEOUT = 5.0
"""Seconds a socket has to ack the probe or to close after the frames of one example."""
FULL_CHECK_EVERY = 10
"""Examples between two checks of the victim's stored events (the other checks run every one)."""

STATS: Counter[str] = Counter()
"""Figures of this run: examples, frames by label and verdict, closes by code, restarts."""

pytestmark = pytest.mark.timeout(max(300, int(EXAMPLES * 3 * 0.5)))


# -- the control plane ----------------------------------------------------------------------------


def write_config(path: Path, limits: dict[str, int] | None = None) -> Path:
    lines = ["[timers]", *(f"{k} = {json.dumps(v)}" for k, v in TIMERS.items())]
    if limits:
        lines += ["", "[limits]", *(f"{k} = {v}" for k, v in limits.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


_DIRECT = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
"""websockets 17 wants ``connect`` as a context manager unless told ``legacy=True``."""


def ws_connect(url: str, token: str) -> ClientConnection:
    options: dict[str, Any] = {
        **_DIRECT,
        "additional_headers": {"Authorization": f"Bearer {token}"},
        "open_timeout": 5,
        "close_timeout": 2,
        "max_size": None,
        "ping_interval": None,
    }
    return cast(ClientConnection, connect(url, **options))


def close_of(exc: ConnectionClosed) -> tuple[int, str]:
    """The server's close code and reason; 1006 when it sent no close frame."""
    if exc.rcvd is None:
        return 1006, ""
    return exc.rcvd.code, exc.rcvd.reason


class Victim:
    """A well-behaved wrapper on its own thread: hello, heartbeats, acked events on request."""

    def __init__(self, url: str, token: str, hello: dict[str, Any]) -> None:
        self.url = url
        self.token = token
        self.hello = hello
        self.acked = 0
        self.next_seq = 1
        self.closed: tuple[int, str] | None = None
        self.unexpected: list[Any] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._ws: ClientConnection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Connect and say hello; returns the welcome's ``acked``."""
        ws = ws_connect(self.url, self.token)
        ws.send(json.dumps(self.hello))
        answer = json.loads(ws.recv(timeout=10))
        assert answer.get("type") == "welcome", f"victim got {answer} for its hello"
        self.acked = int(answer["acked"])
        self.next_seq = self.acked + 1
        self._ws = ws
        self._thread = threading.Thread(target=self._loop, name="fuzz-victim", daemon=True)
        self._thread.start()
        return self.acked

    def _loop(self) -> None:
        assert self._ws is not None
        last_beat = time.monotonic()
        try:
            while not self._stopping.is_set():
                if time.monotonic() - last_beat >= VICTIM_HEARTBEAT:
                    beat = {
                        "type": "heartbeat",
                        "state": "idle",
                        "active": False,
                        "degraded": False,
                    }
                    self._ws.send(json.dumps(beat))
                    last_beat = time.monotonic()
                try:
                    raw = self._ws.recv(timeout=VICTIM_HEARTBEAT)
                except TimeoutError:
                    continue
                frame = json.loads(raw)
                with self._cond:
                    if frame.get("type") == "ack":
                        self.acked = max(self.acked, int(frame["seq"]))
                    else:
                        self.unexpected.append(frame)
                    self._cond.notify_all()
        except ConnectionClosed as exc:
            with self._cond:
                self.closed = close_of(exc)
                self._cond.notify_all()
        except BaseException as exc:  # a bug here must show, not hang the run
            with self._cond:
                self.error = exc
                self._cond.notify_all()

    def problem(self) -> str | None:
        if self.error is not None:
            return f"the victim's thread failed: {self.error!r}"
        if self.closed is not None and not self._stopping.is_set():
            return f"the victim's socket was closed: {self.closed}"
        if self.unexpected:
            return f"the victim was sent frames it never asked for: {self.unexpected[:3]}"
        return None

    def roundtrip(self, timeout: float = ANSWER_TIMEOUT) -> None:
        """Send one event and wait for its ack (the control plane flushed since it got it)."""
        assert self._ws is not None
        seq = self.next_seq
        self.next_seq += 1
        event = {"type": "event", "seq": seq, "generation": 0, "event": {"type": "victim"}}
        try:
            self._ws.send(json.dumps(event))
        except ConnectionClosed as exc:
            raise AssertionError(f"the victim's socket is closed: {close_of(exc)}") from None
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < seq and self.problem() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the victim's event {seq} was not acked in {timeout} s")
                self._cond.wait(left)
        problem = self.problem()
        assert problem is None, problem
        STATS["victim acks"] += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._ws is not None:
            self._ws.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class Observation:
    welcome: int | None = None
    """``acked`` of the first welcome."""
    welcomes: int = 0
    """Welcomes after the first."""
    acks: list[int] = field(default_factory=list)
    close: tuple[int, str] | None = None
    probe_acked: bool = False
    timed_out: bool = False
    other: list[Any] = field(default_factory=list)

    def __str__(self) -> str:
        if self.probe_acked:
            end = "stayed open and acked the probe"
        elif self.close is not None:
            end = f"closed {self.close[0]} {self.close[1]!r}"
        elif self.timed_out:
            end = f"neither closed nor acked the probe within {ANSWER_TIMEOUT} s"
        else:
            end = "stayed open and acked past a frame it had to close on"
        extra = f", also got {self.other[:3]}" if self.other else ""
        return f"welcome={self.welcome} acks={self.acks[-5:]} -> {end}{extra}"


States = frozenset[tuple[str, int]]
"""What the attacked session may hold: (wrapper id, last seq) pairs; ``None`` when unknown."""


@dataclass
class Step:
    frame: FuzzFrame
    message: str | bytes
    verdict: Verdict
    before: States | None


def apply(states: States | None, verdict: Verdict) -> States | None:
    if states is None or verdict.uncertain:
        return None
    if verdict.type == "hello" and verdict.wrapper_id is not None:
        new = verdict.wrapper_id
        return frozenset((new, seq if wid == new else 0) for wid, seq in states)
    if verdict.seq is not None:
        return frozenset((wid, max(seq, verdict.seq)) for wid, seq in states)
    return states


def size(message: str | bytes) -> int:
    return len(message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message)


class Plane:
    """The control plane under fuzz, its victim, and a model of the attacked session."""

    def __init__(self, tmp: Path, limits: dict[str, int] | None = None) -> None:
        self.tmp = tmp
        self.config = write_config(tmp / "fsm-agent.toml", limits)
        self.control = Control(tmp, self.config, free_port(), ["--runtime", "external"])
        self.frame_bytes = (limits or {}).get("frame_bytes", FRAME_BYTES)
        self.frame_depth = (limits or {}).get("frame_depth", FRAME_DEPTH)
        self.victim: Victim | None = None
        self.model: States | None = None
        self.wrapper_generation = 1
        self.examples = 0
        self.deaths: list[str] = []
        self.journal = tmp / "examples.log"
        """Every example, its verdicts and what was observed, for a failure's post-mortem."""
        self.previous: tuple[str, Any] | None = None
        """The example before this one, and the model after it (a model error shows there)."""

    # -- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        self.control.start()
        self.victim_view = self._create("victim")
        self.attacked_view = self._create("attacked")
        self._start_victim()
        self.victim_baseline = self._victim_state()

    def _create(self, who: str) -> dict[str, Any]:
        response = self.control.http.post("/sessions", json={"user_id": f"u-{who}"})
        assert response.status_code == 201, response.text
        view: dict[str, Any] = response.json()
        assert "wrapper" in view, f"no wrapper credentials in {view} (--runtime external?)"
        return view

    def ids(self, view: dict[str, Any]) -> dict[str, str]:
        return {
            "sid": view["id"],
            "agent_session": view["agent_session"],
            "user_id": view["user_id"],
            "version": WRAPPER_VERSION,
        }

    def _start_victim(self) -> None:
        view = self.victim_view
        hello = {
            "type": "hello",
            "wrapper_id": "victim-wrapper",
            "version": WRAPPER_VERSION,
            "protocol": PROTOCOL_VERSION,
            "agent_session": view["agent_session"],
            "user_id": view["user_id"],
            "session_id": view["id"],
        }
        held = self.victim.acked if self.victim is not None else 0
        self.victim = Victim(view["wrapper"]["ingest_url"], view["wrapper"]["token"], hello)
        acked = self.victim.start()
        assert acked >= held, f"the victim's acked events were lost: welcome {acked} < {held}"

    def stop(self) -> None:
        if self.victim is not None:
            self.victim.stop()
        process = self.control.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.control.http.close()

    def alive(self) -> bool:
        return self.control.process is not None and self.control.process.poll() is None

    def ensure_up(self) -> None:
        """A previous example killed the process (and failed for it): start a new one on the
        same database, reconnect the victim, forget what the attacked session holds."""
        if self.alive() and self.answers():
            return
        if self.alive() and not self.dying():
            raise AssertionError(f"the control plane is up but does not answer:\n{self.tail()}")
        assert self.control.process is not None
        STATS["control plane restarts"] += 1
        if self.victim is not None:
            self.victim.stop()
        self.control.start()
        self._start_victim()
        self.model = None

    def answers(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def dying(self, within: float = 5.0) -> bool:
        """Whether the process exits within ``within`` seconds (a crash takes a moment)."""
        assert self.control.process is not None
        try:
            self.control.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            return False
        return True

    def tail(self, n: int = 25) -> str:
        lines = self.control.log_path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(line[:400] for line in lines)

    # -- the attacked session -------------------------------------------------------------------

    @property
    def wid(self) -> str:
        return f"fuzz-wrapper-{self.wrapper_generation}"

    def attacked_ids(self) -> dict[str, str]:
        ids = self.ids(self.attacked_view)
        ids["wid"] = self.wid
        ids["other_sid"] = self.victim_view["id"]
        return ids

    def _sync(self) -> None:
        """Learn what the attacked session holds from a hello of our current wrapper id."""
        view = self.attacked_view
        try:
            with ws_connect(view["wrapper"]["ingest_url"], view["wrapper"]["token"]) as ws:
                ctx = RenderContext(self.attacked_ids(), 1)
                ws.send(good_hello().render(ctx))
                answer = json.loads(ws.recv(timeout=ANSWER_TIMEOUT))
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise AssertionError(f"a plain hello on the attacked session failed: {exc!r}") from exc
        assert answer.get("type") == "welcome", f"a plain hello was answered {answer}"
        self.model = frozenset({(self.wid, int(answer["acked"]))})

    def classify(self, message: str | bytes, frame: FuzzFrame, helloed: bool) -> Verdict:
        return classify(
            message,
            as_text=frame.as_text,
            helloed=helloed,
            ids=self.attacked_ids(),
            frame_bytes=self.frame_bytes,
            frame_depth=self.frame_depth,
        )

    def run(self, scenario: Scenario) -> None:
        """One example: a new socket on the attacked session, ``scenario`` sent, answer checked."""
        self.ensure_up()
        self.examples += 1
        STATS["examples"] += 1
        if self.model is not None and max(seq for _, seq in self.model) >= 2**62:
            self.wrapper_generation += 1  # a new wrapper id starts the seq from 0 again
            self.model = frozenset((w, 0 if w != self.wid else s) for w, s in self.model)
        if self.model is None:
            self._sync()
        assert self.model is not None
        ctx = RenderContext(self.attacked_ids(), 1 + max(seq for _, seq in self.model))
        steps: list[Step] = []
        helloed = False
        states: States | None = self.model
        for frame in scenario:
            message = frame.render(ctx)
            verdict = self.classify(message, frame, helloed)
            steps.append(Step(frame, message, verdict, states))
            STATS[f"frame {frame.label.split(':')[0]}"] += 1
            STATS[f"verdict {verdict.kind}"] += 1
            if verdict.kind == REJECT:
                break
            states = apply(states, verdict)
            helloed = helloed or verdict.type == "hello"
        refused = steps[-1].verdict.kind == REJECT
        probe = probe_frame()
        probe_message = probe.render(ctx)
        if not refused:
            verdict = self.classify(probe_message, probe, helloed)
            assert verdict.kind == ACCEPT, f"the probe itself would be refused: {verdict}"
            steps.append(Step(probe, probe_message, verdict, states))
            states = apply(states, verdict)
        observed = self._exchange(steps, probe_message, refused, states)
        verdicts = "\n".join(f"  {i}: {s.verdict}" for i, s in enumerate(steps))
        record = f"{describe(scenario)}\n{verdicts}\n  observed: {observed}"
        try:
            self._judge(scenario, steps, observed, refused, states)
        except AssertionError:
            self.model = None  # learn it again: a failed example leaves it unknown
            raise
        finally:
            self.previous = (record, self.model)
            with self.journal.open("a") as journal:
                journal.write(f"--- example {self.examples}, model after: {self.model}\n")
                journal.write(record + "\n")
        try:
            self.after_example()
        except AssertionError as exc:
            self.model = None
            headline = "after the example"
            if not self.alive() or self.dying(2.0):
                code = self.control.process.returncode if self.control.process else None
                headline = f"THE CONTROL PLANE DIED (exit {code}) after the example"
                self.deaths.append(f"example {self.examples}: {steps[-1].verdict}"[:160])
            raise AssertionError(
                f"{headline}: {exc}\nscenario:\n{record}\ncontrol log tail:\n{self.tail()}"
            ) from None

    def _exchange(
        self, steps: list[Step], probe: str | bytes, refused: bool, states: States | None
    ) -> Observation:
        view = self.attacked_view
        seen = Observation()
        try:
            ws = ws_connect(view["wrapper"]["ingest_url"], view["wrapper"]["token"])
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise AssertionError(f"cannot connect to the attacked session: {exc!r}") from None
        probe_seq = int(json.loads(probe)["seq"])

        before = steps[-1].before
        top = max((held for _, held in before), default=-1) if before is not None else None

        def acks_probe(seq: int) -> bool:
            """Acked the probe; or, after a frame it had to close on, acked beyond it."""
            if refused:
                return top is not None and seq > top
            if states is None:  # what the session holds is not known: at least the probe
                return seq >= probe_seq
            return seq in {held for _, held in states}

        try:
            try:
                for step in steps:
                    if step.frame.as_text and isinstance(step.message, bytes):
                        ws.send(step.message, text=True)
                    else:
                        ws.send(step.message)
                if refused:
                    ws.send(probe)  # a tripwire: a socket that should be closing must not ack it
            except ConnectionClosed:
                pass  # the answer is read below
            deadline = time.monotonic() + ANSWER_TIMEOUT + sum(size(s.message) for s in steps) / 1e7
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen.timed_out = True
                    break
                try:
                    raw = ws.recv(timeout=left)
                except TimeoutError:
                    seen.timed_out = True
                    break
                frame = json.loads(raw)
                if frame.get("type") == "welcome":
                    if seen.welcome is None:
                        seen.welcome = int(frame["acked"])
                    else:
                        seen.welcomes += 1  # a second hello on the socket
                elif frame.get("type") == "ack":
                    seen.acks.append(int(frame["seq"]))
                    if acks_probe(seen.acks[-1]):
                        seen.probe_acked = not refused
                        break
                else:
                    seen.other.append(frame)
        except ConnectionClosed as exc:
            seen.close = close_of(exc)
        finally:
            ws.close()
        return seen

    def _judge(
        self,
        scenario: Scenario,
        steps: list[Step],
        seen: Observation,
        refused: bool,
        states: States | None,
    ) -> None:
        def fail(why: str) -> NoReturn:
            lines = [why, "scenario:", describe(scenario), "steps and verdicts:"]
            for i, step in enumerate(steps):
                lines.append(f"  {i}: {size(step.message)} bytes, {step.verdict}")
            lines.append(f"observed: {seen}")
            lines.append(f"every example so far: {self.journal}")
            if self.previous:
                lines.append(f"the example before (model after it: {self.previous[1]}):")
                lines.append(self.previous[0])
            dropped = seen.timed_out or (seen.close is not None and seen.close[0] == 1006)
            if not self.alive() or (dropped and self.dying(2.0)):
                code = self.control.process.returncode if self.control.process else None
                lines.insert(0, f"THE CONTROL PLANE DIED (exit {code}) during this example")
                lines.append("control log tail:\n" + self.tail())
                self.deaths.append(f"example {self.examples}: {steps[-1].verdict}"[:160])
            raise AssertionError("\n".join(lines))

        if seen.close is not None:
            code, reason = seen.close
            STATS[f"close {code}"] += 1
        elif seen.probe_acked:
            STATS["stayed open"] += 1
        if not self.alive():
            fail("the control plane process is gone")
        # The hello's welcome tells what the session holds: nothing refused earlier was kept.
        first = steps[0]
        if first.verdict.type == "hello" and first.before is not None and seen.welcome is not None:
            holds = apply(first.before, first.verdict)
            if holds is not None and seen.welcome not in {seq for _, seq in holds}:
                fail(
                    f"welcome.acked={seen.welcome}, but the session can only hold "
                    f"{sorted(seq for _, seq in holds)}: a refused or unacked frame was kept"
                )
        if seen.other:
            fail(f"the attacked socket was sent unexpected frames: {seen.other[:3]}")
        if seen.probe_acked:
            self.model = states
            return
        if seen.close is None:
            if refused:
                prefix = steps[-1].before
                top = max(seq for _, seq in prefix) if prefix else -1
                if any(a > top for a in seen.acks):
                    fail("the socket acked a frame at or after one it had to close on")
                fail("the socket neither closed nor answered after a frame it had to close on")
            fail("the socket neither acked the probe nor closed")
        code, reason = seen.close
        if code == 1006:
            fail("the connection was dropped without a close frame (1006)")
        if code == 1011:
            fail(f"the server failed while handling the frame (1011 {reason!r})")
        points = [
            i
            for i, s in enumerate(steps)
            if s.verdict.kind in (REJECT, EITHER) and code in s.verdict.codes
        ]
        if not points:
            allowed = {c for s in steps for c in s.verdict.codes if s.verdict.kind != ACCEPT}
            what = f"one of {sorted(allowed)}" if allowed else "the socket to stay open"
            fail(f"closed with {code} {reason!r}, the contract wants {what}")
        if not reason.strip() and code != BAD_DATA:
            # 1007 comes from the WebSocket layer (uvicorn), which gives no reason; every close
            # the control plane itself decides on must say why.
            fail(f"closed with {code} and an empty reason")
        # The frame it closed on was not applied. The frames before it may not have been either
        # (the WebSocket layer drops a whole read that ends in an oversized frame): none of them
        # was acked, so the wrapper would send them again. Any prefix is a state it may hold.
        candidates = [s.before for s in steps[: max(points) + 1]]
        if any(c is None for c in candidates):
            self.model = None
            return
        held = frozenset().union(*(c for c in candidates if c is not None))
        if seen.acks and not any(s.verdict.type == "hello" for s in steps[1:]):
            # What was acked is kept (no later hello of another wrapper id reset the seq).
            floor = max(seen.acks)
            held = frozenset(h for h in held if h[1] >= floor) or held
        self.model = held

    # -- the victim and the process -------------------------------------------------------------

    def get(self, path: str) -> tuple[int, Any]:
        """GET on a fresh connection (``http.client``: ~2 ms, where a kept-alive httpx request
        waits ~40 ms on the server's Nagle delay, which would triple the run)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.control.port, timeout=10)
        try:
            headers = {"Authorization": f"Bearer {API_KEY}", "Connection": "close"}
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body.decode(errors="replace")

    def _victim_state(self) -> dict[str, Any]:
        status, view = self.get(f"/sessions/{self.victim_view['id']}")
        assert status == 200, f"GET /sessions/<victim>: {status} {view}"
        return {k: view[k] for k in ("state", "connected", "wrapper_id")}

    def after_example(self) -> None:
        """The process, the victim's socket, acks and session: as before the example."""
        assert self.victim is not None
        problem = self.victim.problem()
        assert problem is None, problem
        self.victim.roundtrip()  # also a barrier: a flush ran since the example's last frame
        assert self.alive(), f"the control plane died:\n{self.tail()}"
        status, body = self.get("/healthz")
        assert status == 200, f"/healthz: {status} {body}"
        state = self._victim_state()
        assert state == self.victim_baseline, f"victim session changed: {state}"
        status, body = self.get(f"/sessions/{self.attacked_view['id']}")
        assert status == 200, f"GET /sessions/<attacked>: {status} {body}"
        if self.examples % FULL_CHECK_EVERY == 0:
            self.check_victim_events()

    def check_victim_events(self) -> None:
        assert self.victim is not None
        stored = [e for e in self.control.events(self.victim_view["id"]) if e.kind == "event"]
        assert len(stored) == self.victim.acked, (
            f"the victim's log holds {len(stored)} events, {self.victim.acked} were acked"
        )


@pytest.fixture(scope="module")
def plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Plane]:
    plane = Plane(tmp_path_factory.mktemp("ingest-fuzz"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()
        report(request.config, summary_line(plane))


def report(config: pytest.Config, line: str) -> None:
    """One line on the terminal, past pytest's capture (no ``-s`` needed)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line(line)


def summary_line(plane: Plane) -> str:
    frames = ", ".join(f"{k[6:]} {v}" for k, v in sorted(STATS.items()) if k.startswith("frame "))
    verdicts = ", ".join(
        f"{k[8:]} {v}" for k, v in sorted(STATS.items()) if k.startswith("verdict")
    )
    closes = ", ".join(
        f"{k[6:]}: {v}"
        for k, v in sorted(STATS.items())
        if k.startswith("close ") and "reason" not in k
    )
    return (
        f"ingest fuzz: {STATS['examples']} examples; frames: {frames}; verdicts: {verdicts}; "
        f"stayed open {STATS['stayed open']}, closes {closes or 'none'}; victim acks "
        f"{STATS['victim acks']}; control plane restarts {STATS['control plane restarts']}"
        + (f" (killed by: {'; '.join(plane.deaths)})" if plane.deaths else "")
    )


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- fuzz tests -----------------------------------------------------------------------------------


def test_any_frame_after_a_good_hello(plane: Plane) -> None:
    before = STATS.copy()

    @fuzz_settings(EXAMPLES)
    @given(scenarios_after_hello(plane.frame_bytes))
    def fuzz(scenario: Scenario) -> None:
        plane.run(scenario)

    fuzz()
    ran = STATS - before
    assert ran["verdict accept"] and ran["verdict reject"], f"not exercised both ways: {ran}"


def test_any_first_frame_without_a_hello(plane: Plane) -> None:
    before = STATS.copy()

    @fuzz_settings(max(10, EXAMPLES // 3))
    @given(scenarios_before_hello(plane.frame_bytes))
    def fuzz(scenario: Scenario) -> None:
        plane.run(scenario)

    fuzz()
    ran = STATS - before
    assert ran["verdict reject"], f"no frame refused: {ran}"


def test_sequences_of_frames_and_hellos(plane: Plane) -> None:
    before = STATS.copy()

    @fuzz_settings(EXAMPLES)
    @given(scenarios_mixed(plane.frame_bytes))
    def fuzz(scenario: Scenario) -> None:
        plane.run(scenario)

    fuzz()
    ran = STATS - before
    assert ran["stayed open"] and ran["verdict reject"], f"not exercised both ways: {ran}"


# -- known cases, one by one ----------------------------------------------------------------------


def event(seq: Any = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "event",
        "seq": Ref("next") if seq is None else seq,
        "generation": 0,
        "event": {"type": "known"},
    }
    body.update(fields)
    return body


def hello_with(**fields: Any) -> dict[str, Any]:
    return {**hello_body(), **fields}


def heartbeat() -> dict[str, Any]:
    return {"type": "heartbeat", "state": "idle", "active": False, "degraded": False}


HELLO = good_hello()
KNOWN: dict[str, Scenario] = {
    "seq 2^64 (killed the process)": [HELLO, FuzzFrame("known", body=event(2**64))],
    "seq 2^63": [HELLO, FuzzFrame("known", body=event(INT63))],
    "seq -1": [HELLO, FuzzFrame("known", body=event(-1))],
    "seq 0 is a duplicate, acked": [HELLO, FuzzFrame("known", body=event(0))],
    "seq 2^63-1 is taken": [HELLO, FuzzFrame("known", body=event(INT63 - 1))],
    "generation 2^64": [HELLO, FuzzFrame("known", body=event(generation=2**64))],
    "events_dropped count 2^64": [
        HELLO,
        FuzzFrame(
            "known", body={"type": "events_dropped", "seq": 1, "count": 2**64, "last_seq": 2}
        ),
    ],
    "binary frame (was 1006)": [HELLO, FuzzFrame("known", body=heartbeat(), binary=True)],
    "100,000 nested arrays (was 1006)": [HELLO, FuzzFrame("known", raw=nest(100_000).text)],
    "depth at the limit is taken": [
        HELLO,
        FuzzFrame("known", body=event(event={"d": nest(FRAME_DEPTH - 2)})),
    ],
    "depth one past the limit": [
        HELLO,
        FuzzFrame("known", body=event(event={"d": nest(FRAME_DEPTH - 1)})),
    ],
    "heartbeat before hello (was taken)": [FuzzFrame("known", body=heartbeat())],
    "event before hello (was taken)": [FuzzFrame("known", body=event())],
    "a second hello naming the victim's session": [
        HELLO,
        FuzzFrame("known", body=hello_with(session_id=Ref("other_sid"))),
    ],
    "hello with the victim's session id": [
        FuzzFrame("known", body=hello_with(session_id=Ref("other_sid")))
    ],
    "invalid UTF-8": [
        HELLO,
        FuzzFrame("known", body={**heartbeat(), "state": "ZZGARBAGEZZ"}, garbage=b"\xff"),
    ],
    "not JSON": [HELLO, FuzzFrame("known", raw="{not json")],
    "lone surrogate in an event": [
        HELLO,
        FuzzFrame("known", body=event(event={"s": Raw('"\\ud800"')})),
    ],
    "exactly frame_bytes is taken": [
        HELLO,
        FuzzFrame("known", body=event(event={"p": FillTo(FRAME_BYTES)})),
    ],
    "frame_bytes + 1": [
        HELLO,
        FuzzFrame("known", body=event(event={"p": FillTo(FRAME_BYTES + 1)})),
    ],
}


@pytest.mark.parametrize("name", list(KNOWN))
def test_known_case(plane: Plane, name: str) -> None:
    plane.run(KNOWN[name])


# -- replacement and configuration ----------------------------------------------------------------


def test_a_newer_connection_replaces_the_older(plane: Plane) -> None:
    plane.ensure_up()
    view = plane.attacked_view
    ctx = RenderContext(plane.attacked_ids(), 1)
    old = ws_connect(view["wrapper"]["ingest_url"], view["wrapper"]["token"])
    new = ws_connect(view["wrapper"]["ingest_url"], view["wrapper"]["token"])
    try:
        old.send(good_hello().render(ctx))
        assert json.loads(old.recv(timeout=ANSWER_TIMEOUT))["type"] == "welcome"
        new.send(good_hello().render(ctx))
        welcome = json.loads(new.recv(timeout=ANSWER_TIMEOUT))
        assert welcome["type"] == "welcome"
        try:
            answer = old.recv(timeout=ANSWER_TIMEOUT)
        except TimeoutError:
            raise AssertionError("the older socket is still open after a newer hello") from None
        except ConnectionClosed as exc:
            code, reason = close_of(exc)
            assert code == POLICY or 4000 <= code < 5000, (code, reason)
            assert "replaced by a newer connection" in reason, reason
        else:
            raise AssertionError(f"the older socket got {answer!r} instead of a close")
        seq = int(welcome["acked"]) + 1
        probe = {"type": "event", "seq": seq, "generation": 0, "event": {"type": "probe"}}
        new.send(json.dumps(probe))
        acks = []
        while seq not in acks:
            frame = json.loads(new.recv(timeout=ANSWER_TIMEOUT))
            assert frame["type"] == "ack", frame
            acks.append(frame["seq"])
    finally:
        old.close()
        new.close()
        plane.model = None
    plane.after_example()


def test_frame_bytes_is_read_from_the_config(tmp_path: Path) -> None:
    small = 4096
    custom = Plane(tmp_path, {"frame_bytes": small})
    try:
        custom.start()
    except AssertionError as exc:
        raise AssertionError(
            f"no control plane with [limits] frame_bytes = {small}: {exc}"
        ) from None
    try:
        # The oracle knows the custom bound: the exact size is taken, one byte more is 1009.
        custom.run([HELLO, FuzzFrame("known", body=event(event={"p": FillTo(small)}))])
        custom.run([HELLO, FuzzFrame("known", body=event(event={"p": FillTo(small + 1)}))])
    finally:
        custom.stop()
