"""Which prompts are commands (``fsm.wire.slash``) and what a file part must be
(``check_files``)."""

from __future__ import annotations

import base64

import pytest

from fsm.control.core import SessionCore
from fsm.engine.clock import VirtualClock
from fsm.engine.effects import Effect
from fsm.machines.timers import CONTROL_TIMERS
from fsm.settings.limits import defaults
from fsm.wire.httpjson import HTTPProblem
from fsm.wire.protocol import FilePart, PromptCommand
from fsm.wire.request_bodies import check_files
from fsm.wire.slash import SlashCommand, parse_slash
from fsm.wire.transmit import Transmit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/compact", SlashCommand("compact", "", "summarize")),
        ("  /compact  ", SlashCommand("compact", "", "summarize")),
        ("/init", SlashCommand("init", "", "command")),
        (
            "/review the last commit\nplease",
            SlashCommand("review", "the last commit\nplease", "command"),
        ),
        ("/usr/bin is a directory", None),
        ("/Compact", None),
        ("please /compact", None),
        ("/", None),
        ("hello", None),
    ],
)
def test_slash_commands_are_lower_case_names_at_the_start(
    text: str, expected: SlashCommand | None
) -> None:
    assert parse_slash(text) == expected


def _file(text: str, mime: str = "text/plain") -> FilePart:
    return FilePart(mime, f"data:{mime};base64," + base64.b64encode(text.encode()).decode())


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def test_files_within_their_bounds_pass() -> None:
    png = FilePart("image/png", "data:image/png;base64," + base64.b64encode(PNG).decode())
    check_files([_file("a"), _file("b", "text/markdown"), png], defaults())
    check_files(None, defaults())


@pytest.mark.parametrize(
    ("files", "field"),
    [
        ([FilePart("text/plain", "data:text/html;base64,aGk=")], "files[0].url"),
        ([FilePart("text/plain", "data:text/plain,hi")], "files[0].url"),
        ([_file("a"), FilePart("text/plain", "data:text/plain;base64,!!")], "files[1].url"),
        ([_file("a")] * 9, "files"),
        ([_file("x" * 300_000)], "files"),
        ([FilePart("a/b", "data:a/b;base64,aGk=")], "files[0].mime"),
        ([_file("not a png", "image/png")], "files[0].url"),
        ([FilePart("text/plain", "data:text/plain;base64,/w==")], "files[0].url"),
        (
            [_file("a"), FilePart("application/zip", "data:application/zip;base64,aGk=")],
            "files[1].mime",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_file(files: list[FilePart], field: str) -> None:
    with pytest.raises(HTTPProblem) as caught:
        check_files(files, defaults())
    assert caught.value.status == 400 and caught.value.field == field


def test_a_messages_files_reach_the_wrapper_in_its_prompt_command() -> None:
    sent: list[Effect] = []
    core = SessionCore(VirtualClock(), CONTROL_TIMERS.defaults(), "s1", sent.append)
    core.start()
    from fsm.serve.core import WRAPPER_VERSION
    from fsm.wire.protocol import PROTOCOL_VERSION, Hello

    core.hello(Hello("w1", WRAPPER_VERSION, PROTOCOL_VERSION, "agent", "u", "s1"))
    file = _file("the secret word is pelican")
    core.send_message("read it", "m1", files=[{"mime": file.mime, "url": file.url}])
    prompts = [
        f for a in sent if isinstance(a, Transmit) for f in a.frames if isinstance(f, PromptCommand)
    ]
    assert prompts[-1].files == (file,)
