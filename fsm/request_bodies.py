"""The bodies clients send to drive a turn, shared by the wrapper's job API and the control
plane's client API: one prompt, abort, permission or question means the same thing on both sides,
so a client can talk to either, and a field added here is accepted by both at once.

Unknown fields are refused (a misspelt ``auto_comit`` must not be silently ignored); a decode
error names the field (see ``fsm.httpjson.decode_body``).
"""

from __future__ import annotations

from typing import Literal

import msgspec


class PromptBody(msgspec.Struct, forbid_unknown_fields=True):
    prompt: str
    model: str | None = None
    variant: str | None = None
    agent: str | None = None
    auto_commit: bool = False
    message_id: str | None = None


class AbortBody(msgspec.Struct, forbid_unknown_fields=True):
    message_id: str | None = None


class PermissionBody(msgspec.Struct, forbid_unknown_fields=True):
    reply: Literal["once", "always", "reject"]
    message: str | None = None


class QuestionBody(msgspec.Struct, forbid_unknown_fields=True):
    answers: list[list[str]] | None = None
    reject: bool = False
