"""The dashboard's routes (``/ui``): HTML pages, their live data and the static assets.

They are not API operations (no OpenAPI entry): pages for a person, signed in with the API key
once (``fsm.control.ui.auth``). The live data reuses the API's own handlers — a session's detail
and its event stream (SSE, resumable with ``Last-Event-ID``, which a browser's ``EventSource``
sends by itself on reconnect) — behind the dashboard's check instead of the bearer check, so the
page reads exactly what a client reads.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from fsm.control.ui import auth, pages
from fsm.engine.timer_table import TimerValues
from fsm.settings.config import timer_values
from fsm.wire.httpjson import HTTPProblem, path_id, read_body
from fsm.wire.openapi import Handler, Operation

if TYPE_CHECKING:
    from fsm.control.host import ControlHost

STATIC = Path(__file__).parent / "static"
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
"""The only files served from ``static/``: our own, small, no third-party code."""
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def ui_routes(host: ControlHost, operations: Sequence[Operation]) -> list[BaseRoute]:
    """``host`` is the ``ControlHost``; ``operations`` the API's, whose handlers are reused."""
    api_key = host.settings.api_key
    by_route = {(op.method, op.path): op.handler for op in operations}
    body_bytes = host.limits.body_bytes

    @functools.cache
    def values() -> dict[str, TimerValues]:
        """Every side's effective timers from the control plane's config file (the one its
        wrappers get), with the control side's as the host runs them."""
        return {**timer_values(host.settings.config), "control": host.values}

    def html(text: str, status: int = 200) -> Response:
        return HTMLResponse(text, status, headers=HEADERS)

    def guarded(handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                auth.check(request, api_key)
                return await handler(request)
            except HTTPProblem as problem:
                return problem.response()

        return handle

    def page(render: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            if not auth.signed_in(request, api_key):
                return html(pages.login(request.url.path), 401)
            try:
                return await render(request)
            except HTTPProblem as problem:
                return html(pages.problem(problem.status, problem.error), problem.status)

        return handle

    async def index(_request: Request) -> Response:
        return html(pages.sessions([host.session_summary(e) for e in host.sessions.values()]))

    async def session(request: Request) -> Response:
        sid = path_id(request, "session_id")
        entry = host.sessions.get(sid)
        if entry is None:
            raise HTTPProblem(404, f"unknown session {sid}", "session_id")
        return html(pages.session(host.session_detail(entry), values()))

    async def login(request: Request) -> Response:
        form = parse_qs((await read_body(request, body_bytes)).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0]
        target = (form.get("next") or ["/ui/"])[0]
        # Only back into the dashboard: never an open redirect to another site.
        if not target.startswith("/ui") or target.startswith("//"):
            target = "/ui/"
        if not auth.key_matches(key, api_key):
            return html(pages.login(target, "That is not the API key."), 401)
        response = RedirectResponse(target, 303, headers=HEADERS)
        response.set_cookie(
            auth.COOKIE,
            auth.cookie_value(api_key),
            path=auth.COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def login_guarded(request: Request) -> Response:
        try:
            return await login(request)
        except HTTPProblem as problem:
            return html(pages.login("/ui/", problem.error), problem.status)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        media = ASSETS.get(name)
        if media is None:
            return HTTPProblem(404, f"no asset {name[:60]!r}", "path").response()
        return Response((STATIC / name).read_bytes(), media_type=media, headers=HEADERS)

    # One mount: the dashboard is beside the API's operations, not among them (the API's
    # route table is exactly its OpenAPI document; tests/fuzz/test_openapi_documents.py).
    # A bare /ui is redirected to /ui/ by the router.
    return [
        Mount(
            "/ui",
            routes=[
                Route("/", page(index), methods=["GET"]),
                Route("/login", login_guarded, methods=["POST"]),
                Route("/static/{name}", static, methods=["GET"]),
                Route("/sessions.json", guarded(by_route[("GET", "/sessions")]), methods=["GET"]),
                Route("/sessions/{session_id}", page(session), methods=["GET"]),
                Route(
                    "/sessions/{session_id}/state",
                    guarded(by_route[("GET", "/sessions/{session_id}")]),
                    methods=["GET"],
                ),
                Route(
                    "/sessions/{session_id}/events",
                    guarded(by_route[("GET", "/sessions/{session_id}/events")]),
                    methods=["GET"],
                ),
            ],
        )
    ]
