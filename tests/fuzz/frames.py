"""Ingest frames for fuzzing the control plane: hypothesis strategies and an independent oracle.

A strategy draws a ``FuzzFrame``: a description of one WebSocket message (a JSON body with
placeholders, a raw text, or bytes), small enough for hypothesis to store and shrink even when the
message it renders to is megabytes long (``Pad``/``FillTo`` stand for long strings, ``Raw`` for
JSON text Python would not write, such as ``1e400``, a lone ``\\ud800`` escape or 100,000 nested
brackets). ``render`` turns it into the message at run time, when the session ids and the next
sequence number are known.

``classify`` is the contract, written without the control plane's code: given the exact message,
whether a hello was accepted on this socket and the session's ids, it says whether the socket must
take the frame (``ACCEPT``), must close (``REJECT``, with the allowed close codes) or may do
either (``EITHER``: a value in a gray zone the contract leaves to the implementation, e.g. a
64-char-plus id or an extra field). It parses with Python's ``json``, not msgspec, and counts
nesting itself, so it cannot share a bug with the decoder under test.

The contract (issue 12):

* a binary frame, invalid UTF-8 (1007 is also allowed, reason or not: it is RFC 6455's own code,
  and uvicorn's WebSocket layer sends it before the application sees the text), text that is
  not JSON, JSON
  nested deeper than ``frame_depth`` (the frame's own object is depth 1), a frame that is not an
  object of a known wrapper type, a missing or wrongly typed field, an integer outside
  0 <= x < 2^63 where a seq/generation/count is expected, a string far too long
  (>= ``LONG_STRING`` chars in a declared string field), a hello with another session's id
  (the first one or any later one on the socket), any frame but hello before hello: close with
  1008 and a reason;
* a message larger than ``frame_bytes`` (UTF-8 bytes): close with 1009;
* everything else that a well-behaved wrapper could send is accepted, including any JSON inside
  an event's payload (long strings included) as long as the frame fits both limits.

Left to the implementation (``EITHER``): strings between ``SHORT_STRING`` and ``LONG_STRING``
chars, empty ids, lone surrogates, extra fields, a key given twice, integral floats for integers,
non-terminal outcome statuses, implausible ``at`` stamps, integers beyond 64 bits or floats beyond
double range inside an event payload, an ``events_dropped`` whose count does not cover its range,
a second hello for the right session. Never left open: 1006, 1011, a dead process.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from fsm.wire.protocol import PROTOCOL_VERSION, WRAPPER_VERSION

INT63 = 2**63

SHORT_STRING = 64
"""Declared string fields up to this many characters must be accepted (ids are ~20)."""
LONG_STRING = 128 * 1024
"""Declared string fields from this many characters on must be refused; between the two the
bound is the implementation's (both outcomes pass)."""

POLICY = 1008
TOO_BIG = 1009
BAD_DATA = 1007
SHUTDOWN = 1000

ACCEPT, EITHER, REJECT = "accept", "either", "reject"
_RANK = {ACCEPT: 0, EITHER: 1, REJECT: 2}

WRAPPER_TYPES = ("hello", "heartbeat", "event", "outcome", "lifecycle", "events_dropped")


# -- placeholders ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A value known only at run time: ``sid``, ``other_sid``, ``wid``, ``agent_session``,
    ``user_id``, ``version``, ``next`` (the next unused seq) or ``span`` (the last issued seq
    plus ``k``: the ``last_seq`` of an ``events_dropped`` frame)."""

    name: str
    k: int = 0

    def __repr__(self) -> str:
        return f"<{self.name}{'+' + str(self.k) if self.k else ''}>"


@dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim."""

    text: str

    def __repr__(self) -> str:
        t = self.text
        return f"Raw({t[:40]!r}{'...' if len(t) > 40 else ''} len={len(t)})"


@dataclass(frozen=True)
class Pad:
    """A string of ``n`` times ``char``."""

    n: int
    char: str = "x"

    def __repr__(self) -> str:
        return f"Pad({self.n}x{self.char!r})"


@dataclass(frozen=True)
class FillTo:
    """A string of ``x`` that makes the whole message exactly ``total`` UTF-8 bytes."""

    total: int


@dataclass(frozen=True)
class Dup:
    """A key rendered as ``name`` again: an object with one key twice."""

    name: str

    def __repr__(self) -> str:
        return f"Dup({self.name!r})"


def nest(depth: int, kind: str = "array") -> Raw:
    """``depth`` nested containers (``[[...]]`` or ``{"a":{"a":...1}}``)."""
    if kind == "array":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# -- one message ----------------------------------------------------------------------------------


class RenderContext:
    def __init__(self, ids: dict[str, str], next_seq: int) -> None:
        self.ids = ids
        self.next_seq = next_seq

    def value(self, ref: Ref) -> Any:
        if ref.name == "next":
            seq = self.next_seq
            self.next_seq += 1
            return seq
        if ref.name == "span":
            last = self.next_seq - 1 + ref.k
            self.next_seq = last + 1
            return last
        return self.ids[ref.name]


_FILL = object()


def _render_into(obj: Any, ctx: RenderContext, ascii_: bool, out: list[Any]) -> None:
    if isinstance(obj, Ref):
        out.append(json.dumps(ctx.value(obj), ensure_ascii=ascii_))
    elif isinstance(obj, Raw):
        out.append(obj.text)
    elif isinstance(obj, Pad):
        out.append(json.dumps(obj.char * obj.n, ensure_ascii=ascii_))
    elif isinstance(obj, FillTo):
        out.append(_FILL)
    elif isinstance(obj, dict):
        out.append("{")
        for i, (key, value) in enumerate(obj.items()):
            if i:
                out.append(",")
            name = key.name if isinstance(key, Dup) else key
            out.append(json.dumps(name, ensure_ascii=ascii_) + ":")
            _render_into(value, ctx, ascii_, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _render_into(value, ctx, ascii_, out)
        out.append("]")
    else:
        out.append(json.dumps(obj, ensure_ascii=ascii_))


@dataclass(frozen=True)
class FuzzFrame:
    """One message to send: ``body`` (JSON with placeholders) or ``raw`` (text or bytes);
    ``binary`` sends it as a binary message; ``garbage`` replaces the marker ``GARBAGE_MARK`` in
    the rendered bytes (a text message with invalid UTF-8); ``cut`` keeps only that many leading
    characters; ``suffix``/``prefix`` are appended/prepended text."""

    label: str
    body: Any = None
    raw: str | bytes | None = None
    binary: bool = False
    ascii: bool = True
    garbage: bytes | None = None
    cut: int | None = None
    prefix: str = ""
    suffix: str = ""

    def render(self, ctx: RenderContext) -> str | bytes:
        """``str``: a text message; ``bytes``: a binary one, or a text one if ``garbage``."""
        if self.raw is not None:
            text_or_bytes: str | bytes = self.raw
        else:
            out: list[Any] = []
            _render_into(self.body, ctx, self.ascii, out)
            if _FILL in out:
                target = next(o for o in _flat(self.body) if isinstance(o, FillTo)).total
                rest = sum(len(s.encode()) for s in out if s is not _FILL)
                rest += len((self.prefix + self.suffix).encode())
                out = [f'"{"x" * max(0, target - rest - 2)}"' if s is _FILL else s for s in out]
            text_or_bytes = "".join(out)
        if isinstance(text_or_bytes, str):
            if self.cut is not None:
                text_or_bytes = text_or_bytes[: self.cut]
            text_or_bytes = self.prefix + text_or_bytes + self.suffix
        if self.garbage is not None:
            data = text_or_bytes.encode() if isinstance(text_or_bytes, str) else text_or_bytes
            return data.replace(GARBAGE_MARK.encode(), self.garbage)
        if self.binary and isinstance(text_or_bytes, str):
            return text_or_bytes.encode()
        return text_or_bytes

    @property
    def as_text(self) -> bool:
        """Sent as a text message (bytes only when they carry deliberate garbage)."""
        return not self.binary

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints falsifying examples with this

    def __repr__(self) -> str:
        parts = [self.label]
        if self.body is not None:
            body = repr(self.body)
            parts.append(body[:300] + ("..." if len(body) > 300 else ""))
        if self.raw is not None:
            raw = repr(self.raw)
            parts.append(f"raw={raw[:120]}{'...' if len(raw) > 120 else ''} len={len(self.raw)}")
        for name in ("binary", "garbage", "cut", "prefix", "suffix"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        if not self.ascii:
            parts.append("utf8")
        return "FuzzFrame(" + ", ".join(parts) + ")"


GARBAGE_MARK = "ZZGARBAGEZZ"


def _flat(obj: Any) -> Iterable[Any]:
    yield obj
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _flat(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _flat(value)


# -- the oracle -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    kind: str
    codes: frozenset[int] = frozenset()
    why: str = ""
    type: str | None = None
    """The frame's wrapper type when it parsed as one (for the session model)."""
    seq: int | None = None
    wrapper_id: str | None = None
    uncertain: bool = False
    """Accepted, its effect on the session is not known (a key given twice: which value won?)."""

    def __str__(self) -> str:
        codes = "/".join(str(c) for c in sorted(self.codes))
        return f"{self.kind}{' ' + codes if codes else ''}{': ' + self.why if self.why else ''}"


class _HugeInt:
    """An integer literal too long for Python's int() limit: out of every bound there is."""

    def __init__(self, text: str) -> None:
        self.negative = text.startswith("-")


@dataclass
class _Parse:
    flags: list[str] = field(default_factory=list)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def json_depth(text: str) -> int:
    """Deepest nesting of containers (``{}`` is 1), strings skipped; works on broken JSON too."""
    depth = best = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            best = max(best, depth)
        else:
            depth -= 1
    return best


def _loads(text: str, parse: _Parse) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            parse.flags.append("duplicate keys")
        return dict(items)

    def parse_float(s: str) -> float:
        value = float(s)
        if math.isinf(value):
            parse.flags.append(f"float {s} out of range")
        return value

    def parse_int(s: str) -> int | _HugeInt:
        if len(s) > 40:
            parse.flags.append("integer literal of more than 40 digits")
            return _HugeInt(s)
        return int(s)

    def parse_constant(s: str) -> Any:
        raise ValueError(f"{s} is not JSON")

    return json.loads(
        text,
        object_pairs_hook=pairs,
        parse_float=parse_float,
        parse_int=parse_int,
        parse_constant=parse_constant,
    )


def _walk_flags(value: Any, parse: _Parse) -> None:
    """Values inside an event payload that a decoder may fairly refuse."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            parse.flags.append("lone surrogate")
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            parse.flags.append(f"integer {value} beyond 64 bits")
    elif isinstance(value, _HugeInt):
        pass  # flagged while parsing
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk_flags(key, parse)
            _walk_flags(item, parse)
    elif isinstance(value, list):
        for item in value:
            _walk_flags(item, parse)


# field kinds: uint63, protocol, version, sid, name, short, status, bool, stamp, object
SCHEMA: dict[str, dict[str, tuple[str, bool]]] = {
    "hello": {
        "wrapper_id": ("name", True),
        "version": ("version", True),
        "protocol": ("protocol", True),
        "agent_session": ("agent_session", True),
        "user_id": ("user_id", True),
        "session_id": ("sid", True),
    },
    "heartbeat": {"state": ("short", True), "active": ("bool", True), "degraded": ("bool", True)},
    "event": {"seq": ("uint63", True), "generation": ("uint63", True), "event": ("object", True)},
    "outcome": {
        "seq": ("uint63", True),
        "message_id": ("name", True),
        "status": ("status", True),
        "reason": ("short", False),
        "error": ("short", False),
    },
    "lifecycle": {
        "seq": ("uint63", True),
        "machine": ("short", True),
        "state": ("short", True),
        "reason": ("short", False),
        "source": ("short", False),
        "trigger": ("short", False),
        "at": ("stamp", False),
    },
    "events_dropped": {
        "seq": ("uint63", True),
        "count": ("uint63", True),
        "last_seq": ("uint63", True),
    },
}

Finding = tuple[str, frozenset[int], str]


def _reject(why: str, codes: Iterable[int] = (POLICY,)) -> Finding:
    return (REJECT, frozenset(codes), why)


def _either(why: str, codes: Iterable[int] = (POLICY,)) -> Finding:
    return (EITHER, frozenset(codes), why)


def _check_string(name: str, value: Any, *, min_length: int = 0) -> Finding | None:
    if not isinstance(value, str):
        return _reject(f"{name} is {type(value).__name__}, not a string")
    if len(value) >= LONG_STRING:
        return _reject(f"{name} is {len(value)} chars long")
    if _SURROGATE.search(value):
        return _either(f"{name} holds a lone surrogate")
    if len(value) < min_length:
        return _either(f"{name} is empty")
    if len(value) > SHORT_STRING:
        return _either(f"{name} is {len(value)} chars long")
    return None


def _check_int(name: str, value: Any) -> Finding | None:
    if isinstance(value, _HugeInt):
        return _reject(f"{name} is a huge integer")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _reject(f"{name} is {type(value).__name__}, not an integer")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return _reject(f"{name} is the float {value}")
        if not 0 <= int(value) < INT63:
            return _reject(f"{name} = {value} is outside 0..2^63")
        return _either(f"{name} is the integral float {value}", (POLICY, SHUTDOWN))
    if not 0 <= value < INT63:
        return _reject(f"{name} = {value} is outside 0..2^63")
    return None


def _check_field(name: str, kind: str, value: Any, ids: dict[str, str]) -> Finding | None:
    if kind == "uint63":
        return _check_int(name, value)
    if kind == "protocol":
        problem = _check_int(name, value)
        if problem is None and value != PROTOCOL_VERSION:
            return _either(f"protocol {value} is not ours", (POLICY, SHUTDOWN))
        return problem
    if kind == "version":
        problem = _check_string(name, value, min_length=1)
        if problem is not None and problem[0] == REJECT:
            return problem
        if value != WRAPPER_VERSION:
            return _either(f"version {value!r:.40} is not the pinned one", (POLICY, SHUTDOWN))
        return None
    if kind == "sid":
        if not isinstance(value, str):
            return _reject(f"session_id is {type(value).__name__}")
        if value != ids["sid"]:
            return _reject(f"session_id {value[:40]!r} is not the URL's")
        return None
    if kind in ("agent_session", "user_id"):
        problem = _check_string(name, value, min_length=1)
        if problem is None and value != ids[kind]:
            return _either(f"{name} {value!r:.40} is not the session's")
        return problem
    if kind == "name":
        return _check_string(name, value, min_length=1)
    if kind == "short":
        return _check_string(name, value)
    if kind == "status":
        problem = _check_string(name, value)
        if problem is None and value not in ("completed", "failed", "cancelled"):
            return _either(f"status {value!r:.40} is not terminal")
        return problem
    if kind == "bool":
        return None if isinstance(value, bool) else _reject(f"{name} is not a boolean")
    if kind == "stamp":
        if isinstance(value, _HugeInt):
            return _either(f"{name} is a huge integer")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _reject(f"{name} is {type(value).__name__}, not a number")
        if not (math.isfinite(value) and 0 <= value <= 1e10):
            return _either(f"{name} = {value} is not a plausible time")
        return None
    if kind == "object":
        if not isinstance(value, dict):
            return _reject(f"{name} is {type(value).__name__}, not an object")
        parse = _Parse()
        _walk_flags(value, parse)
        if parse.flags:
            return _either(f"{name} holds: {', '.join(sorted(set(parse.flags)))}")
        return None
    raise AssertionError(f"unknown field kind {kind}")


def classify(
    message: str | bytes,
    *,
    as_text: bool,
    helloed: bool,
    ids: dict[str, str],
    frame_bytes: int,
    frame_depth: int,
) -> Verdict:
    """What the control plane must do with ``message`` on a socket (see the module doc)."""
    data = message.encode("utf-8", "surrogatepass") if isinstance(message, str) else message
    if not as_text:
        codes = {POLICY, TOO_BIG} if len(data) > frame_bytes else {POLICY}
        return Verdict(REJECT, frozenset(codes), "binary frame")
    if len(data) > frame_bytes:
        codes = {TOO_BIG} if helloed else {TOO_BIG, POLICY}
        return Verdict(REJECT, frozenset(codes), f"{len(data)} bytes > frame_bytes {frame_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Verdict(REJECT, frozenset({BAD_DATA, POLICY}), f"invalid UTF-8: {exc.reason}")
    depth = json_depth(text)
    if depth > frame_depth:
        return Verdict(REJECT, frozenset({POLICY}), f"nesting depth {depth} > {frame_depth}")
    parse = _Parse()
    try:
        obj = _loads(text, parse)
    except (ValueError, RecursionError) as exc:
        return Verdict(REJECT, frozenset({POLICY}), f"not JSON: {str(exc)[:80]}")
    if not isinstance(obj, dict):
        return Verdict(REJECT, frozenset({POLICY}), f"JSON {type(obj).__name__}, not an object")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in WRAPPER_TYPES:
        return Verdict(REJECT, frozenset({POLICY}), f"type {kind!r:.40} is no wrapper frame")
    if not helloed and kind != "hello":
        return Verdict(REJECT, frozenset({POLICY}), f"{kind} before hello")
    findings: list[Finding] = []
    if helloed and kind == "hello":
        findings.append(_either("a second hello on one socket"))
    if parse.flags:
        findings.append(_either(", ".join(sorted(set(parse.flags)))))
    schema = SCHEMA[kind]
    for name, (field_kind, required) in schema.items():
        if name not in obj:
            if required:
                findings.append(_reject(f"{kind} without {name}"))
            continue
        problem = _check_field(name, field_kind, obj[name], ids)
        if problem is not None:
            findings.append(problem)
    extra = sorted(set(obj) - set(schema) - {"type"})
    if extra:
        findings.append(_either(f"extra fields {extra[:3]}"))
    span = [obj.get("seq"), obj.get("last_seq"), obj.get("count")]
    if kind == "events_dropped" and all(type(e) is int for e in span):
        first, last, count = (e for e in span if isinstance(e, int))
        if last < first or count != last - first + 1:
            findings.append(_either(f"count {count} does not cover seq {first}..{last}"))
    seq = obj.get("seq")
    if isinstance(seq, float) and math.isfinite(seq) and seq == int(seq):
        seq = int(seq)
    wid = obj.get("wrapper_id")
    info: dict[str, Any] = {
        "type": kind,
        "seq": seq
        if isinstance(seq, int) and not isinstance(seq, bool) and "seq" in schema
        else None,
        "wrapper_id": wid if kind == "hello" and isinstance(wid, str) else None,
        "uncertain": "duplicate keys" in parse.flags,
    }
    if not findings:
        return Verdict(ACCEPT, frozenset(), "", **info)
    worst = max(_RANK[f[0]] for f in findings)
    if info["uncertain"]:
        worst = _RANK[EITHER]  # a decoder may keep the first value or the last, or refuse
    chosen = [f for f in findings if _RANK[f[0]] >= worst]
    allowed: frozenset[int] = frozenset().union(*(f[1] for f in chosen))
    why = "; ".join(f[2] for f in chosen)
    kind_ = REJECT if worst == _RANK[REJECT] else EITHER
    return Verdict(kind_, allowed, why, **info)


# -- strategies -----------------------------------------------------------------------------------

EVENT_TYPES = (
    "message.part.updated",
    "message.updated",
    "session.status",
    "session.idle",
    "server.heartbeat",
    "server.connected",
    "permission.asked",
)
short_text = st.text(max_size=SHORT_STRING)
names = st.one_of(
    st.sampled_from(["w1", "wrapper_0123456789ab", "é", "😀", "a b", "\u0000", "x" * 64]),
    st.text(min_size=1, max_size=SHORT_STRING),
)
json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=32),
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def event_payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=4))
    if draw(st.booleans()):
        payload["type"] = draw(st.sampled_from(EVENT_TYPES) | short_text)
    return payload


seq_values = st.one_of(
    st.just(Ref("next")), st.just(Ref("next")), st.just(Ref("next")), st.sampled_from([0, 1])
)


def good_hello() -> FuzzFrame:
    return FuzzFrame("hello", body=hello_body())


def hello_body() -> dict[Any, Any]:
    return {
        "type": "hello",
        "wrapper_id": Ref("wid"),
        "version": Ref("version"),
        "protocol": PROTOCOL_VERSION,
        "agent_session": Ref("agent_session"),
        "user_id": Ref("user_id"),
        "session_id": Ref("sid"),
    }


def probe_frame() -> FuzzFrame:
    return FuzzFrame(
        "probe",
        body={"type": "event", "seq": Ref("next"), "generation": 0, "event": {"type": "probe"}},
    )


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[Any, Any]:
    """The body of one frame a well-behaved wrapper could send after its hello."""
    kind = draw(st.sampled_from(WRAPPER_TYPES[1:]))
    body: dict[Any, Any] = {"type": kind}
    if kind == "heartbeat":
        body["state"] = draw(st.sampled_from(["ready", "running", "idle"]) | short_text)
        body["active"] = draw(st.booleans())
        body["degraded"] = draw(st.booleans())
        return body
    body["seq"] = draw(seq_values)
    if kind == "event":
        body["generation"] = draw(st.integers(0, 3) | st.sampled_from([0, INT63 - 1]))
        body["event"] = draw(event_payloads())
    elif kind == "outcome":
        body["message_id"] = draw(names)
        body["status"] = draw(st.sampled_from(["completed", "failed", "cancelled"]))
        for optional in ("reason", "error"):
            if draw(st.booleans()):
                body[optional] = draw(short_text)
    elif kind == "lifecycle":
        body["machine"] = draw(st.sampled_from(["wrapper", "agent_link", "turn"]) | short_text)
        body["state"] = draw(short_text)
        for optional in ("reason", "source", "trigger"):
            if draw(st.booleans()):
                body[optional] = draw(short_text)
        if draw(st.booleans()):
            body["at"] = draw(st.floats(0, 1e10) | st.integers(0, 10**10))
    else:  # events_dropped
        body["seq"] = Ref("next")
        k = draw(st.integers(0, 1000))
        body["last_seq"] = Ref("span", k)
        body["count"] = k + 1
    return body


@st.composite
def shuffled(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """The same object with its keys in another order ("type" need not come first)."""
    keys = draw(st.permutations(list(body)))
    return {k: body[k] for k in keys}


@st.composite
def valid_frames(draw: st.DrawFn) -> FuzzFrame:
    body = draw(valid_bodies())
    if draw(st.booleans()):
        body = draw(shuffled(body))
    return FuzzFrame(f"valid:{body['type']}", body=body, ascii=draw(st.booleans()))


INT_BOUNDS: list[Any] = [
    0,
    1,
    2**31,
    2**53 + 1,
    INT63 - 1,
    INT63,
    2**64 - 1,
    2**64,
    2**64 + 1,
    -1,
    -(2**63),
    -(2**63) - 1,
    10**30,
    -(10**30),
    Raw("-0"),
    Raw("1" + "0" * 400),
    Raw("-" + "9" * 5000),
]
INT_WRONG: list[Any] = [
    True,
    False,
    None,
    "1",
    1.0,
    1.5,
    -0.0,
    1e19,
    Raw("1E2"),
    Raw("1e400"),
    Raw("-1e400"),
    [],
    {},
    [1],
]
STRING_SIZES = [
    0,
    1,
    SHORT_STRING,
    SHORT_STRING + 1,
    256,
    257,
    4096,
    64 * 1024,
    64 * 1024 + 1,
    LONG_STRING - 1,
    LONG_STRING,
    200_000,
]
STRING_ODD: list[Any] = [
    Raw('"\\ud800"'),
    Raw('"a\\udfffb"'),
    Raw('"\\ud83d"'),
    Raw('"\\ud83d\\ude00"'),
    Raw('"\\u0000"'),
    "😀" * 3,
    "\u202e\u0301\ufeff",
    None,
    1,
    True,
    1.5,
    [],
    {},
    ["x"],
]
BOOL_WRONG: list[Any] = [0, 1, "true", None, [], Raw('"false"')]
STAMP_VALUES: list[Any] = [
    -1.0,
    -0.0,
    0,
    1e10,
    1e12,
    1e12 + 1,
    1e300,
    5e-324,
    Raw("1e400"),
    Raw("-1e400"),
    2**64,
    "1.0",
    True,
    None,
]
DEPTHS = [1, 2, 32, 62, 63, 64, 65, 66, 100, 1000, 100_000]
"""Total nesting depths of a frame tried (the frame object counts 1, its event payload 2)."""

FIELD_KINDS = {
    name: kind for fields in SCHEMA.values() for name, (kind, _required) in fields.items()
}


PROTOCOL_WRONG: list[Any] = [
    INT63,
    2**64,
    -1,
    -(2**63) - 1,
    10**30,
    Raw("1" + "0" * 400),
    True,
    None,
    "1",
    1.5,
    Raw("1e400"),
    [],
    {},
]
"""Protocol values that must be refused as malformed. An in-range protocol other than ours is a
version mismatch: a legitimate ``shutdown`` that spends the session's restart budget (and would
end the attacked session ``failed``), so the fuzz leaves those out; likewise short versions."""
VERSION_WRONG: list[Any] = [Pad(LONG_STRING), Pad(200_000, "é"), None, 1, True, [], {}, ["0.1.0"]]


def _replacements(kind: str) -> st.SearchStrategy[Any]:
    if kind == "protocol":
        return st.sampled_from(PROTOCOL_WRONG) | st.integers().filter(lambda v: not 0 <= v < INT63)
    if kind == "version":
        return st.sampled_from(VERSION_WRONG)
    if kind == "uint63":
        return st.sampled_from(INT_BOUNDS + INT_WRONG) | st.integers()
    if kind == "bool":
        return st.sampled_from(BOOL_WRONG)
    if kind == "stamp":
        return st.sampled_from(STAMP_VALUES) | st.floats(allow_nan=False, allow_infinity=False)
    if kind == "object":
        return st.one_of(
            st.sampled_from([[], "x", 1, None, True]),
            st.builds(
                lambda d: {"deep": nest(d - 2)}, st.sampled_from([d for d in DEPTHS if d > 2])
            ),
            st.builds(lambda n, c: {"text": Pad(n, c)}, st.sampled_from(STRING_SIZES), _chars),
            st.sampled_from(
                [
                    {"f": Raw("1e400")},
                    {"i": 2**64},
                    {"i": Raw("1" + "0" * 400)},
                    {"s": Raw('"\\udc00"')},
                    {Raw('"\\ud800"').text[1:-1]: 1},
                    {"n": Raw("NaN")},
                    {"dup": 1, "dup ": 2},
                ]
            ),
        )
    # string kinds
    return st.one_of(
        st.builds(Pad, st.sampled_from(STRING_SIZES), _chars),
        st.sampled_from(STRING_ODD),
        st.text(max_size=80),
    )


_chars = st.sampled_from(["x", "é", "😀", "\u0000", '"'])


@st.composite
def boundary_frames(draw: st.DrawFn) -> FuzzFrame:
    """A frame a wrapper could send with one field at or past a bound (or of a wrong type)."""
    body = draw(valid_bodies() | st.just(hello_body()))
    name = draw(st.sampled_from([k for k in body if k != "type"]))
    body = dict(body)
    body[name] = draw(_replacements(FIELD_KINDS[name]))
    label = f"boundary:{body['type']}.{name}"
    return FuzzFrame(label, body=body, ascii=draw(st.booleans()))


@st.composite
def deep_frames(draw: st.DrawFn) -> FuzzFrame:
    depth = draw(st.sampled_from(DEPTHS))
    shape = draw(st.sampled_from(["array", "object"]))
    where = draw(st.sampled_from(["event", "event", "extra", "top"]))
    if where == "top":  # the whole message
        return FuzzFrame(f"deep:top:{depth}", raw=nest(depth, shape).text)
    body: dict[str, Any] = {"type": "event", "seq": Ref("next"), "generation": 0}
    if where == "event":
        body["event"] = {"type": "deep", "d": nest(depth - 2, shape)} if depth > 1 else {}
    else:  # an unknown field nested as deep: depth is a property of the message, not the type
        body["event"] = {}
        body["x"] = nest(depth - 1, shape)
    return FuzzFrame(f"deep:{where}:{depth}", body=body)


RAW_MALFORMED = [
    "",
    " ",
    "{",
    "}",
    "[",
    "null",
    "true",
    "1",
    "-1",
    '"hello"',
    "[]",
    "{}",
    '{"type":1}',
    '{"type":null}',
    '{"type":"nope"}',
    '{"type":"HELLO"}',
    '{"type":"Event","seq":1,"generation":0,"event":{}}',
    '{"type":"ack","seq":1}',
    '{"type":"welcome","acked":0}',
    '{"type":"prompt","message_id":"m","prompt":"p"}',
    '{"seq":1,"generation":0,"event":{}}',
    '{"type":"event","seq":1,"generation":0,"event":{}',
    '{"type":"event","seq":1,"generation":0,"event":{},}',
    "{'type':'heartbeat'}",
    '{"type":"heartbeat","state":"idle","active":true,"degraded":false} x',
    '{"type":"heartbeat","state":"idle","active":true,"degraded":false}{}',
    '{"type":"heartbeat","state":"idle","active":True,"degraded":false}',
    '{"type":"heartbeat","state":"idle","active":true,"degraded":false} // c',
    '{"type":"lifecycle","seq":1,"machine":"m","state":"s","at":NaN}',
    '{"type":"lifecycle","seq":1,"machine":"m","state":"s","at":Infinity}',
    '{"type":"event","seq":0x10,"generation":0,"event":{}}',
    '{"type":"event","seq":01,"generation":0,"event":{}}',
    '{"type":"event","seq":+1,"generation":0,"event":{}}',
    '{"type":"heartbeat","state":"\x01","active":true,"degraded":false}',
    "\ufeff{}",
    "\x00",
]


@st.composite
def malformed_frames(draw: st.DrawFn) -> FuzzFrame:
    """Not JSON, JSON but no object, unknown type, missing fields, wrong types, extra fields."""
    how = draw(
        st.sampled_from(["raw", "text", "json", "drop", "extra", "type", "cut", "affix", "dup"])
    )
    if how == "raw":
        return FuzzFrame("malformed:raw", raw=draw(st.sampled_from(RAW_MALFORMED)))
    if how == "text":
        return FuzzFrame("malformed:text", raw=draw(st.text(max_size=40)))
    if how == "json":  # any JSON value; mostly not an object of a wrapper type
        value = draw(json_values)
        return FuzzFrame("malformed:json", raw=json.dumps(value))
    body = draw(valid_bodies() | st.just(hello_body()))
    kind = body["type"]
    if how == "drop":
        name = draw(st.sampled_from(sorted(body)))
        del body[name]
        return FuzzFrame(f"malformed:drop:{kind}.{name}", body=body)
    if how == "extra":
        name = draw(st.sampled_from(["extra", "Type", "seq2", "__proto__", ""]) | short_text)
        if name in body:
            name += "_"
        body[name] = draw(json_values)
        return FuzzFrame(f"malformed:extra:{kind}", body=body)
    if how == "type":
        body["type"] = draw(
            st.sampled_from(["", "HELLO", "Event", "ack", "welcome", "shutdown", None, 1, []])
            | short_text
        )
        return FuzzFrame("malformed:type", body=body)
    if how == "dup":  # the same key twice, the second value drawn like a boundary one
        name = draw(st.sampled_from([k for k in body if k != "type"]))
        body[Dup(name)] = draw(_replacements(FIELD_KINDS[name]))
        return FuzzFrame(f"malformed:dup:{kind}.{name}", body=body)
    if how == "cut":
        return FuzzFrame(f"malformed:cut:{kind}", body=body, cut=draw(st.integers(0, 60)))
    prefix, suffix = draw(st.sampled_from([("", " x"), ("", "{}"), ("[", "]"), ("\ufeff", "")]))
    return FuzzFrame(f"malformed:affix:{kind}", body=body, prefix=prefix, suffix=suffix)


@st.composite
def utf8_frames(draw: st.DrawFn) -> FuzzFrame:
    """A text message whose bytes are not UTF-8 (or, sometimes, are: random bytes)."""
    if draw(st.booleans()):
        return FuzzFrame("utf8:random", raw=draw(st.binary(min_size=1, max_size=40)), garbage=b"")
    garbage = draw(
        st.sampled_from(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82"]
        )
    )
    return FuzzFrame(
        "utf8:invalid",
        body={"type": "heartbeat", "state": GARBAGE_MARK, "active": True, "degraded": False},
        garbage=garbage,
    )


@st.composite
def binary_frames(draw: st.DrawFn) -> FuzzFrame:
    if draw(st.booleans()):
        return FuzzFrame("binary:random", raw=draw(st.binary(max_size=40)), binary=True)
    body = draw(valid_bodies())
    return FuzzFrame(f"binary:{body['type']}", body=body, binary=True)


def oversized_frames(frame_bytes: int) -> st.SearchStrategy[FuzzFrame]:
    """Valid event frames at, just under and over ``frame_bytes``, by bytes and by characters."""

    def event(pad: Any) -> dict[str, Any]:
        return {"type": "event", "seq": Ref("next"), "generation": 0, "event": {"pad": pad}}

    exact = st.builds(
        lambda d: FuzzFrame(f"size:{d:+d}", body=event(FillTo(frame_bytes + d))),
        st.sampled_from([-1, 0, 1, 2, 4096, frame_bytes]),
    )
    # 'é' is 2 bytes: fewer characters than frame_bytes, more bytes.
    wide = st.builds(
        lambda n: FuzzFrame(f"size:wide:{n}", body=event(Pad(n, "é")), ascii=False),
        st.sampled_from([frame_bytes // 2 - 64, frame_bytes // 2 + 1, frame_bytes - 64]),
    )
    return exact | wide


def any_frame(frame_bytes: int) -> st.SearchStrategy[FuzzFrame]:
    return st.one_of(
        valid_frames(),
        boundary_frames(),
        deep_frames(),
        malformed_frames(),
        utf8_frames(),
        binary_frames(),
        oversized_frames(frame_bytes),
    )


@st.composite
def hello_variants(draw: st.DrawFn) -> FuzzFrame:
    """A hello: ours, another session's id (the victim's among them), or a fuzzed field."""
    how = draw(st.sampled_from(["good", "other_sid", "victim_sid", "field", "wrapper_id"]))
    body = hello_body()
    if how == "good":
        return FuzzFrame("hello", body=body)
    if how == "victim_sid":
        body["session_id"] = Ref("other_sid")
        return FuzzFrame("hello:victim_sid", body=body)
    if how == "other_sid":
        body["session_id"] = draw(st.sampled_from(["s_000000000000", ""]) | short_text)
        return FuzzFrame("hello:other_sid", body=body)
    if how == "wrapper_id":  # another wrapper of this session (resets the seq)
        body["wrapper_id"] = draw(names)
        return FuzzFrame("hello:wrapper_id", body=body)
    name = draw(st.sampled_from([k for k in body if k != "type"]))
    body[name] = draw(_replacements(FIELD_KINDS[name]))
    return FuzzFrame(f"hello:{name}", body=body)


Scenario = list[FuzzFrame]


def after_hello(frame: FuzzFrame) -> Scenario:
    return [good_hello(), frame]


def alone(frame: FuzzFrame) -> Scenario:
    return [frame]


def then(first: FuzzFrame | None, rest: list[FuzzFrame]) -> Scenario:
    return ([first] if first is not None else []) + rest


def scenarios_after_hello(frame_bytes: int) -> st.SearchStrategy[Scenario]:
    return st.builds(after_hello, any_frame(frame_bytes))


def scenarios_before_hello(frame_bytes: int) -> st.SearchStrategy[Scenario]:
    return st.builds(alone, any_frame(frame_bytes))


def scenarios_mixed(frame_bytes: int) -> st.SearchStrategy[Scenario]:
    first = st.one_of(st.none(), st.just(good_hello()), hello_variants())
    rest = st.lists(any_frame(frame_bytes) | hello_variants(), min_size=1, max_size=4)
    return st.builds(then, first, rest)


def describe(scenario: Scenario) -> str:
    return "\n".join(f"  {i}: {f!r}" for i, f in enumerate(scenario))
