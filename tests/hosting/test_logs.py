"""asyncio's logger joins the JSON log, identical messages folded: after a SIGSTOP/SIGCONT of the
control plane, 106 plain-text lines ``socket.send() raised exception.`` reached stderr between the
JSON lines (asyncio's warnings fell through to ``logging``'s last-resort handler)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from fsm.hosting.logs import JsonLog, capture_asyncio, capture_stdlib

SEND_FAILED = "socket.send() raised exception."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def asyncio_logger() -> Iterator[logging.Logger]:
    """asyncio's logger as it was: these tests replace its handlers."""
    logger = logging.getLogger("asyncio")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    # Start from none: a test earlier in the session (an in-process host) may have left its own.
    logger.handlers = []
    yield logger
    for handler in logger.handlers:
        handler.close()
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def json_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """Ours only: pytest's own capture handlers may sit on the logger beside them."""
    return [h for h in logger.handlers if type(h).__module__ == "fsm.hosting.logs"]


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_flood_of_one_asyncio_warning_is_one_line_then_a_count_per_window(
    asyncio_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    stream, clock = io.StringIO(), Clock()
    capture_asyncio(JsonLog(stream), every=60.0, clock=clock)
    for _ in range(106):
        asyncio_logger.warning(SEND_FAILED)
        clock.now += 0.1
    assert [(x["level"], x["message"], x["logger"]) for x in lines(stream)] == [
        ("warning", SEND_FAILED, "asyncio")
    ]
    clock.now += 60
    asyncio_logger.warning(SEND_FAILED)  # the next window: written, with the count folded
    assert lines(stream)[-1]["repeated"] == 105
    asyncio_logger.warning(SEND_FAILED)
    asyncio_logger.warning("Unclosed connection")  # another text is not folded into it
    assert [x["message"] for x in lines(stream)] == [
        SEND_FAILED,
        SEND_FAILED,
        "Unclosed connection",
    ]
    assert "repeated" not in lines(stream)[-1]
    assert capsys.readouterr().err == ""  # nothing as plain text on stderr


def test_a_count_still_pending_is_written_when_its_window_ends_or_the_log_closes(
    asyncio_logger: logging.Logger,
) -> None:
    """A burst that stops must still be reported: by the next line of any text after its window,
    by ``flush`` (a host may call it periodically) and at the latest by ``logging.shutdown``'s
    ``close`` at exit."""
    stream, clock = io.StringIO(), Clock()
    capture_asyncio(JsonLog(stream), every=60.0, clock=clock)
    for _ in range(5):
        asyncio_logger.warning(SEND_FAILED)
    clock.now += 61
    asyncio_logger.warning("something else")
    assert [(x["message"], x.get("repeated")) for x in lines(stream)] == [
        (SEND_FAILED, None),
        (SEND_FAILED, 4),
        ("something else", None),
    ]
    for _ in range(3):
        asyncio_logger.warning("something else")
    (handler,) = json_handlers(asyncio_logger)
    handler.flush()  # inside the window: nothing yet
    assert len(lines(stream)) == 3
    clock.now += 61
    handler.flush()
    assert lines(stream)[-1] == {**lines(stream)[-1], "message": "something else", "repeated": 3}
    asyncio_logger.warning(SEND_FAILED)
    asyncio_logger.warning(SEND_FAILED)
    handler.close()
    assert lines(stream)[-1]["repeated"] == 1


def test_real_asyncio_writes_after_a_lost_connection_are_folded(
    asyncio_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """The very warning of the issue, from asyncio itself: every write to a transport whose
    connection is lost logs it (after the first five)."""
    stream = io.StringIO()
    capture_asyncio(JsonLog(stream))

    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.abort()  # the connection is lost; the writer does not know yet
        for _ in range(111):
            writer.write(b"x")
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    json_handlers(logging.getLogger("asyncio"))[0].close()
    sent = [x for x in lines(stream) if x["message"] == SEND_FAILED]
    assert len(sent) == 2  # the first, and the count at close
    assert sent[1]["repeated"] >= 100
    assert SEND_FAILED not in capsys.readouterr().err


def test_capturing_again_replaces_the_handler_and_keeps_what_it_folded(
    asyncio_logger: logging.Logger,
) -> None:
    first, second = io.StringIO(), io.StringIO()
    capture_asyncio(JsonLog(first))
    asyncio_logger.warning(SEND_FAILED)
    asyncio_logger.warning(SEND_FAILED)
    capture_asyncio(JsonLog(second))
    assert [x.get("repeated") for x in lines(first)] == [None, 1]
    assert len(json_handlers(asyncio_logger)) == 1
    asyncio_logger.warning(SEND_FAILED)
    assert len(lines(second)) == 1


def test_the_folding_table_is_bounded(asyncio_logger: logging.Logger) -> None:
    """A library logging ever-new texts cannot grow it: the oldest is written out and forgotten."""
    stream, clock = io.StringIO(), Clock()
    capture_stdlib(JsonLog(stream), "asyncio", logging.WARNING, fold_every=60.0, clock=clock)
    (handler,) = json_handlers(asyncio_logger)
    asyncio_logger.warning("text 0")
    asyncio_logger.warning("text 0")
    for i in range(1, 300):
        asyncio_logger.warning(f"text {i}")
    assert len(handler._folded) <= handler.MAX_FOLDED  # type: ignore[attr-defined]
    assert any(x["message"] == "text 0" and x.get("repeated") == 1 for x in lines(stream))
