"""The runtime for wrappers that someone else starts: an orchestrator, a CI job, a load test.

``fsm-agent control --runtime external`` does not launch anything. A created session's answer
carries the wrapper's ingest URL and token, and whoever runs wrappers starts ``fsm-agent serve``
with them. The control plane then sees a wrapper only through its socket: a wrapper that dies is
noticed by its missing heartbeats (``stale``), not by an exit code, and "stop" is the release
command sent down the socket. This is also how a cluster deployment plugs in before it has a
runtime of its own.
"""

from __future__ import annotations

import logging
from types import TracebackType

from adapters.runtime.base import OnExit, WrapperSpec

log = logging.getLogger("fsm_agent.runtime")


class ExternalRuntime:
    """``RuntimePort`` that starts nothing and reports no exits (it cannot see any)."""

    hands_out_credentials = True
    """The session's creator must be told the ingest URL and token: nobody else will use them."""

    def __init__(self, on_exit: OnExit) -> None:
        self._on_exit = on_exit

    async def __aenter__(self) -> ExternalRuntime:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def start(self, spec: WrapperSpec) -> None:
        log.info(
            "session %s waits for an externally started wrapper",
            spec.session_id,
            extra={"session": spec.session_id, "ingest_url": spec.ingest_url},
        )

    async def stop(self, session_id: str, grace: float, *, asked: bool = False) -> int | None:
        return None

    def running(self, session_id: str) -> bool:
        return False

    def adopt(self, session_id: str) -> int | None:
        return None
