"""Scenario files: a fault script and its expectations as TOML, decoded into typed structs.

A scenario is data so that a reviewer reads *what* is claimed (``at = "40s"``, ``do =
"agent.hang"``; the turn fails ``agent_restarted`` within ``["61s", "62s"]``) without reading a
test's code, and so that the fuzzer can print a failing schedule as a file anyone can re-run.

Decoding has two passes. msgspec decodes the TOML document into ``ScenarioFile`` (types, unknown
fields); ``compile_scenario`` then checks what types cannot say (durations, action names, which
fields an action takes, timer keys, plans) and produces the ``Scenario`` the runner plays, with
every duration in seconds. Either pass reports a problem as ``ScenarioError`` naming the file, the
line (found again in the TOML text, which ``tomllib`` does not keep) and the field, plus what was
expected: a scenario author should never have to guess which of twenty ``[[step]]`` tables is bad.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from adapters.agents.registry import AGENTS, DEFAULT_AGENT
from fsm.engine.durations import DurationError, parse_duration
from fsm.machines.timers import TABLES
from fsm.wire.protocol import WRAPPER_VERSION

Duration = str | int | float
FieldPath = tuple[str | int, ...]


class ScenarioError(ValueError):
    """A scenario file that cannot be run; ``str()`` is ``file:line: field: what was expected``."""

    def __init__(self, file: str, line: int | None, field: str, problem: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


# -- the file as written ----------------------------------------------------------------------


class WorldSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the fake world behaves when nothing is injected (each a fact measured on the real one
    where one exists: Kilo's cold start ~4 s, its heartbeat every 10 s, websockets' keepalive)."""

    sessions: int = 1
    agent: str = DEFAULT_AGENT
    """The agent whose event dialect the fake speaks: ``kilo`` or ``opencode``."""
    wrapper_version: str = WRAPPER_VERSION
    """What the *first* wrapper of each session announces; restarts use the pinned version."""
    agent_session: str = ""
    """``--agent-session`` of every wrapper; a ``ses…`` id names a Kilo session that already
    exists (the client brought it), anything else is the control plane's ``agent_<session>``."""
    wrapper_boot: Duration = "1s"
    flush_bound: Duration = "2s"
    agent_boot: Duration = "4s"
    agent_heartbeat: Duration = "10s"
    agent_stop: Duration = "300ms"
    http_latency: Duration = "20ms"
    token_interval: Duration = "1s"
    abort_drain: Duration = "0s"
    """How long Kilo takes to close a turn it was told to abort; a prompt that arrives meanwhile
    is taken (204) and dropped, as seen on the real server after aborts."""
    plan: list[str] = msgspec.field(default_factory=lambda: ["text 10s"])
    """What a prompt does when its step names no plan."""
    latency: Duration = "5ms"
    jitter: Duration = "0s"
    loss: float = 0.0
    """Chance that a frame is lost; on a WebSocket that breaks the connection."""
    reorder: float = 0.0
    """Chance that a broken connection's frames still reach the control plane, late."""
    keepalive: Duration = "30s"
    """How long a silent partition takes to be noticed (websockets: ping every 20 s, 20 s wait)."""
    outbox_frames: int = 1000
    outbox_bytes: int = 8 * 1024 * 1024


class StepSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    at: Duration
    do: str
    session: str = "s1"
    message: str | None = None
    text: str | None = None
    plan: list[str] | None = None
    error: str | None = None
    reply: str | None = None
    answers: list[str] | None = None
    count: int | None = None
    for_: Duration | None = msgspec.field(default=None, name="for")
    repeat: int = 1
    every: Duration | None = None
    note: str = ""


class ExpectSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: str
    session: str = "s1"
    machine: str | None = None
    at: Duration | None = None
    is_: str | list[str] | None = msgspec.field(default=None, name="is")
    message: str | None = None
    status: str | None = None
    reason: str | None = None
    error: str | None = None
    within: list[Duration] | None = None
    before: Duration | None = None
    trigger: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    action: str | None = None
    log: str | None = None
    metric: str | None = None
    between: list[Duration] | None = None
    equals: int | None = None
    at_least: int | None = None
    at_most: int | None = None
    note: str = ""


class MutantSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A deliberate change to the machines this scenario must notice (at least one expectation
    fails): a timer value, or a transition removed (``"turn: agent_lost accepted -> queued"``)."""

    why: str
    timers: dict[str, Duration] = msgspec.field(default_factory=dict)
    remove: list[str] = msgspec.field(default_factory=list)


class ScenarioFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    description: str = ""
    seed: int = 0
    until: Duration | None = None
    settle: bool = False
    """After ``until``: lift every fault, let the timers finish, check what must hold at rest."""
    timers: dict[str, Duration] = msgspec.field(default_factory=dict)
    world: WorldSpec = msgspec.field(default_factory=WorldSpec)
    step: list[StepSpec] = msgspec.field(default_factory=list)
    expect: list[ExpectSpec] = msgspec.field(default_factory=list)
    mutant: list[MutantSpec] = msgspec.field(default_factory=list)


# -- the compiled form the runner plays -------------------------------------------------------


class Segment(msgspec.Struct, frozen=True):
    """One part of what the fake agent does for a prompt (see ``PLAN_HELP``)."""

    kind: str
    seconds: float | None = None
    text: str = ""

    def label(self) -> str:
        from fsm.engine.durations import format_duration

        if self.seconds is not None:
            return f"{self.kind} {format_duration(self.seconds)}"
        return f"{self.kind} {self.text}".strip()


PLAN_HELP = (
    "'text 20s', 'reasoning 5s', 'tool 10m', 'stall 30s', 'stall' (forever), 'question', "
    "'permission', 'error <message>', 'late_error <message>'"
)
_TIMED = ("text", "reasoning", "tool", "stall")
_SEGMENT = re.compile(r"^\s*(\w+)(?:\s+(.*?))?\s*$")


SIMULATED_AGENTS = tuple(AGENTS)
"""The agents whose event dialects the fake speaks (``fsm.sim.agent``)."""


class WorldConfig(msgspec.Struct, frozen=True, kw_only=True):
    sessions: int = 1
    agent: str = DEFAULT_AGENT
    """Which agent's event dialect the fake speaks (``kilo``: turns bracketed by
    ``session.turn.open``/``close``; ``opencode``: busy until one ``session.idle``), and so which
    dialect the wrapper reads it with (the agent's ``AgentSpec.dialect``)."""
    wrapper_version: str = WRAPPER_VERSION
    agent_session: str = ""
    wrapper_boot: float = 1.0
    flush_bound: float = 2.0
    agent_boot: float = 4.0
    agent_heartbeat: float = 10.0
    agent_stop: float = 0.3
    http_latency: float = 0.02
    token_interval: float = 1.0
    abort_drain: float = 0.0
    plan: tuple[Segment, ...] = (Segment("text", 10.0),)
    latency: float = 0.005
    jitter: float = 0.0
    loss: float = 0.0
    reorder: float = 0.0
    keepalive: float = 30.0
    outbox_frames: int = 1000
    outbox_bytes: int = 8 * 1024 * 1024


class Action(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    do: str
    session: str = "s1"
    message: str | None = None
    text: str = ""
    plan: tuple[Segment, ...] | None = None
    error: str = ""
    reply: str = ""
    answers: tuple[str, ...] | None = None
    count: int = 1
    duration: float | None = None
    note: str = ""

    def describe(self) -> str:
        parts = [self.do]
        if self.message:
            parts.append(self.message)
        if self.plan is not None:
            parts.append("[" + ", ".join(s.label() for s in self.plan) + "]")
        if self.duration is not None:
            from fsm.engine.durations import format_duration

            parts.append(f"for {format_duration(self.duration)}")
        if self.error:
            parts.append(repr(self.error))
        if self.reply:
            parts.append(self.reply)
        if self.answers is not None:
            parts.append(repr(list(self.answers)))
        if self.count != 1:
            parts.append(f"x{self.count}")
        return " ".join(parts)


class Expectation(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    index: int
    line: int | None
    session: str = "s1"
    machine: str | None = None
    at: float | None = None
    states: tuple[str, ...] = ()
    message: str | None = None
    status: str | None = None
    reason: str | None = None
    error: str | None = None
    within: tuple[float, float] | None = None
    before: float | None = None
    trigger: str | None = None
    source: str | None = None
    dest: str | None = None
    action: str | None = None
    log: str | None = None
    metric: str | None = None
    between: tuple[float, float] | None = None
    equals: int | None = None
    at_least: int | None = None
    at_most: int | None = None
    note: str = ""


class Removal(msgspec.Struct, frozen=True):
    machine: str
    trigger: str
    source: str
    dest: str | None


class Mutant(msgspec.Struct, frozen=True):
    why: str
    timers: dict[str, Any]
    remove: tuple[Removal, ...]


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str
    description: str
    seed: int
    until: float
    timers: dict[str, Any]
    world: WorldConfig
    settle: bool = False
    actions: tuple[Action, ...]
    expectations: tuple[Expectation, ...]
    mutants: tuple[Mutant, ...] = ()


# -- what each action and expectation takes ---------------------------------------------------

_STEP_OPTIONAL = ("message", "text", "plan", "error", "reply", "answers", "count", "for_")

ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "prompt": (("message", "text", "plan"), "the client sends a message (message id required)"),
    "stop": ((), "the client stops the session (its wrapper is released)"),
    "abort": (("message",), "the client aborts a message (or every one)"),
    "answer": (("reply", "answers"), "the client answers the oldest pending permission/question"),
    "agent.crash": ((), "Kilo is killed (SIGKILL): its streams end, its process exits -9"),
    "agent.hang": (("for_",), "Kilo is stopped (SIGSTOP): no events, no HTTP answers"),
    "agent.resume": ((), "Kilo is continued (SIGCONT)"),
    "agent.silence": ((), "Kilo's current event streams go quiet while Kilo stays healthy"),
    "agent.drop_stream": ((), "Kilo's current event streams end (FIN) while Kilo stays healthy"),
    "agent.fail_turn": (("error",), "the running turn ends now with a final error"),
    "agent.refuse_port": (("count",), "the next COUNT Kilo starts fail (port already in use)"),
    "wrapper.crash": ((), "the wrapper process dies (SIGKILL)"),
    "wrapper.hang": (("for_",), "the wrapper process is stopped (SIGSTOP)"),
    "wrapper.resume": ((), "the wrapper process is continued (SIGCONT)"),
    "ingest.drop": (("for_",), "the ingest connection breaks; reconnects are refused for FOR"),
    "ingest.partition": (("for_",), "the ingest path goes silent for FOR (nothing is closed)"),
    "ingest.heal": ((), "end a drop or partition now"),
    "ingest.duplicate": ((), "the control plane receives its last sequenced frame again"),
}
_REQUIRED = {"prompt": ("message",), "ingest.drop": ("for_",), "ingest.partition": ("for_",)}

EXPECT_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    # kind: (required, optional, meaning)
    "state": (("machine", "at", "is_"), (), "the state of MACHINE at AT is IS (or one of IS)"),
    "outcome": (
        ("message", "status"),
        ("reason", "error", "within"),
        "MESSAGE ends STATUS (with REASON, ERROR substring), at a time WITHIN [t1, t2]",
    ),
    "no_outcome": (("message", "before"), (), "MESSAGE has no terminal outcome before BEFORE"),
    "count": (
        (),
        (
            "machine",
            "trigger",
            "from_",
            "to",
            "action",
            "log",
            "between",
            "equals",
            "at_least",
            "at_most",
        ),
        "how many transitions (machine/trigger/from/to), world actions (action) or session log "
        "entries (log) happened, optionally BETWEEN [t1, t2]",
    ),
    "metric": (("metric",), ("equals", "at_least", "at_most"), "a counter of the run at its end"),
}
_COMPARATORS = ("equals", "at_least", "at_most")

METRICS = (
    "events_dropped",
    "duplicates",
    "ignored_outcomes",
    "outbox_dropped",
    "stale_events_dropped",
)
MACHINES = ("session", "wrapper", "agent_link", "ingest_link")
MESSAGE_STATES = ("queued", "accepted", "running", "completed", "failed", "cancelled")


# -- loading ----------------------------------------------------------------------------------


def load_scenario(path: Path | str) -> Scenario:
    """Read, decode and check one scenario file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(str(path), None, "", f"cannot read: {exc.strerror or exc}") from None
    return parse_scenario(text, str(path))


def parse_scenario(text: str, file: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(match.group(1)) if match else None
        raise ScenarioError(file, line, "", f"not valid TOML: {message}") from None
    try:
        raw = msgspec.convert(data, ScenarioFile)
    except msgspec.ValidationError as exc:
        raise _from_validation(exc, text, file) from None
    return compile_scenario(raw, text, file)


def _from_validation(exc: msgspec.ValidationError, text: str, file: str) -> ScenarioError:
    message = str(exc)
    problem, sep, where = message.partition(" - at `")
    path = _parse_path(where.rstrip("`")) if sep else ()
    # msgspec reports a missing or unknown field at its parent; name the field itself.
    named = re.search(r"(?:missing required|unknown) field `(\w+)`", problem)
    if named:
        path = (*path, named.group(1))
    if problem.startswith("Object missing required field"):
        problem = "is required"
    elif problem.startswith("Object contains unknown field"):
        field = path[-1] if path else "?"
        known = _known_fields(path[:-1])
        near = difflib.get_close_matches(str(field), known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        problem = f"is not a field here{hint} (known: {', '.join(known)})"
    else:
        problem = problem.replace("Expected `", "expected ").replace("`, got `", ", got ")
        problem = problem.rstrip("`")
    return ScenarioError(file, locate(text, path), _dotted(path), problem)


def _known_fields(parent: FieldPath) -> list[str]:
    kinds: dict[str, type[msgspec.Struct]] = {
        "step": StepSpec,
        "expect": ExpectSpec,
        "mutant": MutantSpec,
        "world": WorldSpec,
    }
    struct = kinds.get(str(parent[0])) if parent else ScenarioFile
    if struct is None:
        return []
    encoded = getattr(struct, "__struct_encode_fields__", struct.__struct_fields__)
    return sorted(str(f) for f in encoded)


def _parse_path(text: str) -> FieldPath:
    """``$.step[2].at`` → ``("step", 2, "at")``."""
    out: list[str | int] = []
    for name, index in re.findall(r"\.(\w+)|\[(\d+)\]", text):
        out.append(name if name else int(index))
    return tuple(out)


def _dotted(path: FieldPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = part.rstrip("_")
            text += f".{name}" if text else name
    return text


def locate(text: str, path: FieldPath) -> int | None:
    """The line of ``path`` in the TOML text (``tomllib`` keeps no positions), or None."""
    if not path:
        return None
    lines = text.splitlines()
    head = str(path[0]).rstrip("_")
    index = path[1] if len(path) > 1 and isinstance(path[1], int) else None
    key = next((str(p).rstrip("_") for p in path[1:] if isinstance(p, str)), None)

    def key_in(start: int, stop: int, name: str) -> int | None:
        pattern = re.compile(rf'^\s*(?:"{re.escape(name)}"|{re.escape(name)})\s*=')
        for i in range(start, stop):
            if pattern.match(lines[i]):
                return i + 1
        return None

    headers = [i for i, line in enumerate(lines) if re.match(r"^\s*\[", line)]

    def block_end(start: int) -> int:
        return next((h for h in headers if h > start), len(lines))

    if index is not None:
        found = [i for i, line in enumerate(lines) if re.match(rf"^\s*\[\[\s*{head}\s*\]\]", line)]
        if index >= len(found):
            return None
        start = found[index]
        if key is None:
            return start + 1
        return key_in(start + 1, block_end(start), key) or start + 1
    table = next(
        (i for i, line in enumerate(lines) if re.match(rf"^\s*\[\s*{head}\s*\]", line)), None
    )
    if table is not None:
        if key is None:
            return table + 1
        return key_in(table + 1, block_end(table), key) or table + 1
    first_header = headers[0] if headers else len(lines)
    return key_in(0, first_header, head)


# -- compiling --------------------------------------------------------------------------------


class _Checker:
    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file

    def error(self, path: FieldPath, problem: str) -> ScenarioError:
        return ScenarioError(self.file, locate(self.text, path), _dotted(path), problem)

    def seconds(self, value: Duration, path: FieldPath) -> float:
        try:
            return parse_duration(value)
        except DurationError as exc:
            raise self.error(path, str(exc)) from None

    def window(self, value: Sequence[Duration], path: FieldPath) -> tuple[float, float]:
        if len(value) != 2:
            raise self.error(path, f"expected [from, to] (two durations), got {list(value)!r}")
        low = self.seconds(value[0], (*path, 0))
        high = self.seconds(value[1], (*path, 1))
        if high < low:
            raise self.error(path, f"the window ends before it starts: {list(value)!r}")
        return (low, high)

    def plan(self, items: Sequence[str], path: FieldPath) -> tuple[Segment, ...]:
        segments: list[Segment] = []
        for i, item in enumerate(items):
            match = _SEGMENT.match(item)
            kind = match.group(1) if match else ""
            arg = (match.group(2) or "") if match else ""
            where = (*path, i)
            if kind in _TIMED:
                if not arg:
                    if kind != "stall":
                        raise self.error(where, f"'{kind}' needs a duration, e.g. '{kind} 20s'")
                    segments.append(Segment("stall", None))
                else:
                    segments.append(Segment(kind, self.seconds(arg, where)))
            elif kind in ("question", "permission"):
                if arg:
                    raise self.error(where, f"'{kind}' takes nothing after it, got {item!r}")
                segments.append(Segment(kind))
            elif kind in ("error", "late_error"):
                segments.append(Segment(kind, text=arg or "APIError: fake internal error"))
            else:
                raise self.error(where, f"expected a plan part like {PLAN_HELP}; got {item!r}")
        return tuple(segments)


def compile_scenario(raw: ScenarioFile, text: str, file: str) -> Scenario:
    c = _Checker(text, file)
    timers = _check_timers(c, raw.timers, ("timers",))
    world = _compile_world(c, raw.world)
    sessions = {f"s{i + 1}" for i in range(world.sessions)}
    actions: list[Action] = []
    for i, step in enumerate(raw.step):
        actions.extend(_compile_step(c, step, i, sessions))
    actions.sort(key=lambda a: a.at)  # stable: steps at one instant keep their file order
    expectations = [_compile_expect(c, e, i, sessions) for i, e in enumerate(raw.expect)]
    mutants = [_compile_mutant(c, m, i) for i, m in enumerate(raw.mutant)]
    mentioned = [a.at for a in actions]
    for e in expectations:
        mentioned.extend(t for t in (e.at, e.before) if t is not None)
        for window in (e.within, e.between):
            if window:
                mentioned.append(window[1])
    if raw.until is not None:
        until = c.seconds(raw.until, ("until",))
    else:
        until = max(mentioned, default=0.0) + 60.0
    late = [t for t in mentioned if t > until]
    if late:
        raise c.error(("until",), f"is before the latest time the scenario mentions ({max(late)}s)")
    return Scenario(
        name=raw.name,
        path=file,
        description=raw.description.strip(),
        seed=raw.seed,
        until=until,
        timers=timers,
        world=world,
        settle=raw.settle,
        actions=tuple(actions),
        expectations=tuple(expectations),
        mutants=tuple(mutants),
    )


def _check_timers(c: _Checker, timers: dict[str, Duration], path: FieldPath) -> dict[str, Any]:
    known = sorted(k for table in TABLES.values() for k in table)
    for key, value in timers.items():
        if not any(key in table for table in TABLES.values()):
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise c.error((*path, key), f"is not a timer{hint} (run `fsm-agent timers`)")
        if c.seconds(value, (*path, key)) <= 0:
            raise c.error((*path, key), f"must be positive, got {value!r}")
    return dict(timers)


def _compile_world(c: _Checker, w: WorldSpec) -> WorldConfig:
    def sec(name: str) -> float:
        return c.seconds(getattr(w, name), ("world", name))

    for name in ("loss", "reorder"):
        value = getattr(w, name)
        if not 0.0 <= value <= 1.0:
            raise c.error(("world", name), f"is a probability between 0 and 1, got {value!r}")
    for name in ("sessions", "outbox_frames", "outbox_bytes"):
        if getattr(w, name) < 1:
            raise c.error(("world", name), f"must be at least 1, got {getattr(w, name)!r}")
    if c.seconds(w.token_interval, ("world", "token_interval")) <= 0:
        raise c.error(("world", "token_interval"), "must be positive")
    if w.agent not in SIMULATED_AGENTS:
        raise c.error(("world", "agent"), f"is {w.agent!r}; known: {', '.join(SIMULATED_AGENTS)}")
    return WorldConfig(
        sessions=w.sessions,
        agent=w.agent,
        wrapper_version=w.wrapper_version,
        agent_session=w.agent_session,
        wrapper_boot=sec("wrapper_boot"),
        flush_bound=sec("flush_bound"),
        agent_boot=sec("agent_boot"),
        agent_heartbeat=sec("agent_heartbeat"),
        agent_stop=sec("agent_stop"),
        http_latency=sec("http_latency"),
        token_interval=sec("token_interval"),
        abort_drain=sec("abort_drain"),
        plan=c.plan(w.plan, ("world", "plan")),
        latency=sec("latency"),
        jitter=sec("jitter"),
        loss=w.loss,
        reorder=w.reorder,
        keepalive=sec("keepalive"),
        outbox_frames=w.outbox_frames,
        outbox_bytes=w.outbox_bytes,
    )


def _compile_step(c: _Checker, s: StepSpec, i: int, sessions: set[str]) -> list[Action]:
    path: FieldPath = ("step", i)
    if s.do not in ACTIONS:
        near = difflib.get_close_matches(s.do, ACTIONS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise c.error((*path, "do"), f"unknown action {s.do!r}; {hint}known: {', '.join(ACTIONS)}")
    allowed, _doc = ACTIONS[s.do]
    for name in _STEP_OPTIONAL:
        if getattr(s, name) is not None and name not in allowed:
            takes = ", ".join(a.rstrip("_") for a in allowed) or "nothing but at/do"
            raise c.error((*path, name), f"does not apply to {s.do} (it takes: {takes})")
    for name in _REQUIRED.get(s.do, ()):
        if getattr(s, name) is None:
            raise c.error((*path, name), f"is required by {s.do}")
    if s.session not in sessions:
        raise c.error((*path, "session"), f"no such session; this world has {sorted(sessions)}")
    if s.reply is not None and s.reply not in ("once", "always", "reject"):
        raise c.error((*path, "reply"), f"expected once, always or reject, got {s.reply!r}")
    if s.count is not None and s.count < 1:
        raise c.error((*path, "count"), f"must be at least 1, got {s.count}")
    if s.repeat < 1:
        raise c.error((*path, "repeat"), f"must be at least 1, got {s.repeat}")
    if s.repeat > 1 and s.every is None:
        raise c.error((*path, "every"), "is required when repeat > 1 (the time between repeats)")
    at = c.seconds(s.at, (*path, "at"))
    every = c.seconds(s.every, (*path, "every")) if s.every is not None else 0.0
    duration = c.seconds(s.for_, (*path, "for")) if s.for_ is not None else None
    plan = c.plan(s.plan, (*path, "plan")) if s.plan is not None else None
    return [
        Action(
            at=at + k * every,
            do=s.do,
            session=s.session,
            message=s.message,
            text=s.text or "",
            plan=plan,
            error=s.error or "",
            reply=s.reply or "",
            answers=tuple(s.answers) if s.answers is not None else None,
            count=s.count or 1,
            duration=duration,
            note=s.note,
        )
        for k in range(s.repeat)
    ]


def _compile_expect(c: _Checker, e: ExpectSpec, i: int, sessions: set[str]) -> Expectation:
    path: FieldPath = ("expect", i)
    if e.kind not in EXPECT_KINDS:
        raise c.error((*path, "kind"), f"unknown kind {e.kind!r}; known: {', '.join(EXPECT_KINDS)}")
    required, optional, _doc = EXPECT_KINDS[e.kind]
    settable = set(required) | set(optional)
    for name in ExpectSpec.__struct_fields__:
        if name in ("kind", "session", "note"):
            continue
        if getattr(e, name) is not None and name not in settable:
            takes = ", ".join(n.rstrip("_") for n in (*required, *optional))
            raise c.error((*path, name), f"does not apply to kind {e.kind!r} (it takes: {takes})")
    for name in required:
        if getattr(e, name) is None:
            raise c.error((*path, name), f"is required by kind {e.kind!r}")
    if e.session not in sessions:
        raise c.error((*path, "session"), f"no such session; this world has {sorted(sessions)}")
    comparators = [n for n in _COMPARATORS if getattr(e, n) is not None]
    if e.kind in ("count", "metric") and not comparators:
        raise c.error(path, f"kind {e.kind!r} needs one of equals, at_least, at_most")
    if e.kind == "count":
        selectors = [
            bool(e.action),
            bool(e.log),
            any(x is not None for x in (e.machine, e.trigger, e.from_, e.to)),
        ]
        if sum(selectors) != 1:
            raise c.error(
                path,
                "kind 'count' counts one thing: transitions (machine/trigger/from/to), "
                "a world action (action) or session log entries (log)",
            )
    if e.metric is not None and e.metric not in METRICS:
        raise c.error(
            (*path, "metric"), f"unknown metric {e.metric!r}; known: {', '.join(METRICS)}"
        )
    if e.machine is not None and e.kind == "state":
        base = e.machine.split(":", 1)[0]
        if base not in (*MACHINES, "turn", "message") or (
            base in ("turn", "message") and ":" not in e.machine
        ):
            raise c.error(
                (*path, "machine"),
                f"expected one of {', '.join(MACHINES)}, turn:<message id> or message:<message id>",
            )
    if e.status is not None and e.status not in MESSAGE_STATES[3:]:
        raise c.error(
            (*path, "status"), f"expected completed, failed or cancelled, got {e.status!r}"
        )
    states: tuple[str, ...] = ()
    if e.is_ is not None:
        states = (e.is_,) if isinstance(e.is_, str) else tuple(e.is_)
    return Expectation(
        kind=e.kind,
        index=i,
        line=locate(c.text, path),
        session=e.session,
        machine=e.machine,
        at=c.seconds(e.at, (*path, "at")) if e.at is not None else None,
        states=states,
        message=e.message,
        status=e.status,
        reason=e.reason,
        error=e.error,
        within=c.window(e.within, (*path, "within")) if e.within is not None else None,
        before=c.seconds(e.before, (*path, "before")) if e.before is not None else None,
        trigger=e.trigger,
        source=e.from_,
        dest=e.to,
        action=e.action,
        log=e.log,
        metric=e.metric,
        between=c.window(e.between, (*path, "between")) if e.between is not None else None,
        equals=e.equals,
        at_least=e.at_least,
        at_most=e.at_most,
        note=e.note,
    )


_REMOVAL = re.compile(r"^\s*(\w+)\s*:\s*(\w+)\s+(\*|\w+)\s*->\s*(\w+|none)\s*$")


def _compile_mutant(c: _Checker, m: MutantSpec, i: int) -> Mutant:
    from fsm.machines import catalog

    path: FieldPath = ("mutant", i)
    timers = _check_timers(c, m.timers, (*path, "timers"))
    removals: list[Removal] = []
    for k, text in enumerate(m.remove):
        match = _REMOVAL.match(text)
        where = (*path, "remove", k)
        if not match:
            raise c.error(where, f"expected 'machine: trigger source -> dest', got {text!r}")
        machine, trigger, source, dest = match.groups()
        spec = catalog.BY_NAME.get(machine)
        if spec is None:
            raise c.error(where, f"no machine {machine!r}; known: {', '.join(catalog.BY_NAME)}")
        target = None if dest == "none" else dest
        found = [
            t
            for t in spec.definition.transitions
            if t.trigger == trigger
            and t.dest == target
            and (source == "*" or source in spec.definition.sources(t))
        ]
        if not found:
            raise c.error(where, f"{machine} has no transition {trigger} {source} -> {dest}")
        removals.append(Removal(machine, trigger, source, target))
    if not timers and not removals:
        raise c.error(path, "a mutant changes at least one timer or removes one transition")
    return Mutant(m.why, timers, tuple(removals))
