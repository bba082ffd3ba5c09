"""Who may see the dashboard: whoever holds the API key, as for the API.

A browser cannot send a bearer header when it navigates, and a key in the URL (``?token=``) ends
up in history, in a proxy's access log and in ``Referer`` headers. So the key is typed once into
a login form and POSTed in the body; the answer sets a cookie that is

* ``HttpOnly``: the page's own script cannot read it, so an injected script cannot steal it;
* ``SameSite=Strict`` and ``Path=/ui``: no other site's page makes the browser send it, and the
  API (which takes the bearer header only) never accepts it — a cross-site form cannot drive the
  API through it;
* an HMAC of the key, not the key: the cookie opens the dashboard (read-only) and nothing else,
  and it stops working when the key changes.

A request with the bearer header is let in too (scripts, curl).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from fsm.wire.httpjson import HTTPProblem, check_bearer

COOKIE = "fsm_agent_ui"
COOKIE_PATH = "/ui"


def cookie_value(api_key: str) -> str:
    return hmac.new(api_key.encode(), b"fsm-agent dashboard", hashlib.sha256).hexdigest()


def key_matches(given: str, api_key: str) -> bool:
    return hmac.compare_digest(given.encode(), api_key.encode())


def signed_in(request: Request, api_key: str) -> bool:
    given = request.cookies.get(COOKIE)
    if given is not None and hmac.compare_digest(given.encode(), cookie_value(api_key).encode()):
        return True
    try:
        check_bearer(request, api_key)
    except HTTPProblem:
        return False
    return True


def check(request: Request, api_key: str) -> None:
    """401 (JSON naming the header) unless the request carries the cookie or the bearer key."""
    if not signed_in(request, api_key):
        raise HTTPProblem(401, "sign in at /ui first, or send the bearer token", "Authorization")
