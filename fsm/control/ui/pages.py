"""The dashboard's HTML, rendered on the server from the views and the declarations.

Every value that came from a client or a wrapper (ids, prompts, errors) is escaped here; the page
script (``static/dashboard.js``) writes text with ``textContent`` only. The page's live state
starts from what is known at render time and is then updated from the session's event stream.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from fsm.control.core import Message
from fsm.control.ui.diagrams import declarations, diagram, specs
from fsm.control.views import SessionDetail, SessionSummary
from fsm.engine.timer_table import TimerValues

e = html.escape


def _page(title: str, body: str, *, script: bool = True) -> str:
    js = '<script src="/ui/static/dashboard.js"></script>' if script else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)} · fsm-agent</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/ui/static/dashboard.css">'
        "</head><body>"
        '<header><a href="/ui/">fsm-agent</a> <span>control plane dashboard</span></header>'
        f"<main>{body}</main>{js}</body></html>"
    )


def login(next_path: str, problem: str = "") -> str:
    note = f'<p class="problem" role="alert">{e(problem)}</p>' if problem else ""
    return _page(
        "sign in",
        "<h1>Sign in</h1>"
        "<p>The dashboard takes the control plane's API key, sent once in this form's body; the "
        "browser then keeps an HttpOnly cookie for <code>/ui</code> only.</p>"
        f"{note}"
        '<form method="post" action="/ui/login" id="login">'
        f'<input type="hidden" name="next" value="{e(next_path)}">'
        '<label>API key <input type="password" name="key" autocomplete="current-password" '
        "required autofocus></label> "
        '<button type="submit">Sign in</button></form>',
        script=False,
    )


def problem(status: int, error: str) -> str:
    """A page that could not be shown (an unknown or malformed session id): what was wrong."""
    return _page(
        f"error {status}",
        f'<h1>{status}</h1><p class="problem" role="alert">{e(error)}</p>'
        '<p><a href="/ui/">all sessions</a></p>',
        script=False,
    )


def _summary_row(s: SessionSummary) -> str:
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_at))
    return (
        f'<tr data-session="{e(s.id)}">'
        f'<td><a href="/ui/sessions/{e(s.id)}">{e(s.id)}</a></td>'
        f'<td class="state" data-role="state">{e(s.state)}</td>'
        f'<td data-role="connected">{"yes" if s.connected else "no"}</td>'
        f"<td>{e(s.agent_session)}</td><td>{e(s.user_id)}</td><td>{e(created)}</td></tr>"
    )


def sessions(summaries: Sequence[SessionSummary]) -> str:
    rows = "".join(_summary_row(s) for s in summaries)
    empty = "" if summaries else '<p id="no-sessions">No sessions.</p>'
    return _page(
        "sessions",
        '<h1>Sessions</h1><table id="sessions" data-live="/ui/sessions.json">'
        "<thead><tr><th>session</th><th>state</th><th>connected</th><th>agent session</th>"
        f"<th>user</th><th>created</th></tr></thead><tbody>{rows}</tbody></table>{empty}",
    )


def _message_row(m: Message) -> str:
    outcome = " ".join(x for x in (m.reason, m.error) if x)
    return (
        f'<tr data-message="{e(m.id)}"><td><code>{e(m.id)}</code></td>'
        f'<td class="state">{e(m.state)}</td><td>{e(outcome)}</td>'
        f'<td class="prompt">{e(m.prompt[:500])}</td></tr>'
    )


def _machine(name: str, values: Mapping[str, TimerValues], info: Mapping[str, Any]) -> str:
    spec = next(s for s in specs() if s.name == name)
    by = info["reported_by"]
    known = (
        f"state reported by the {e(by)}"
        if by
        else "its state is not reported to the control plane (the wrapper keeps it)"
    )
    return (
        f'<article class="machine" id="machine-{e(name)}" data-machine="{e(name)}" '
        f'data-state="">'
        f'<h2>{e(name)} <span class="current" data-role="state">unknown</span> '
        f'<small data-role="instance"></small></h2>'
        f'<p class="note">{e(spec.table.side)} side; {known}</p>'
        f'<div class="diagram">{diagram(spec, values)}</div>'
        '<h3>armed timers</h3><ul class="timers" data-role="timers"><li>none</li></ul>'
        "</article>"
    )


def session(detail: SessionDetail, values: Mapping[str, TimerValues]) -> str:
    decl = declarations(values)
    machines = "".join(_machine(spec.name, values, decl[spec.name]) for spec in specs())
    messages = "".join(_message_row(m) for m in detail.messages)
    boot = {
        "session": detail.id,
        "declarations": decl,
        "events": f"/ui/sessions/{detail.id}/events",
        "state": f"/ui/sessions/{detail.id}/state",
    }
    # A JSON data block is never executed, and "</" cannot end it once escaped.
    data = msgspec.json.encode(boot).decode().replace("</", "<\\/")
    return _page(
        f"session {detail.id}",
        f'<h1>Session <code id="session-id">{e(detail.id)}</code> '
        f'<span id="session-state" class="current">{e(detail.state)}</span> '
        f'<span id="stream-status" class="note">connecting…</span></h1>'
        f'<p class="note">agent session {e(detail.agent_session)} · user {e(detail.user_id)} · '
        f"workdir <code>{e(detail.workdir)}</code></p>"
        f'<section id="machines">{machines}</section>'
        '<section><h2>Messages</h2><table id="messages"><thead><tr><th>id</th><th>state</th>'
        f"<th>outcome</th><th>prompt</th></tr></thead><tbody>{messages}</tbody></table>"
        "</section>"
        '<section><h2>Timeline</h2><ol id="timeline" reversed></ol></section>'
        f'<script type="application/json" id="boot">{data}</script>',
    )
