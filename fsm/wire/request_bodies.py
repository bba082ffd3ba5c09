"""The bodies clients send to drive a turn, shared by the wrapper's job API and the control
plane's client API: one prompt, abort, permission or question means the same thing on both sides,
so a client can talk to either, and a field added here is accepted by both at once.

Unknown fields are refused (a misspelt ``auto_comit`` must not be silently ignored); a decode
error names the field (see ``fsm.wire.httpjson.decode_body``).

Every field is bounded here, on the type that decodes it (and the OpenAPI documents are generated
from these types); the prompt's length is a ``fsm.settings.limits`` row (``prompt_chars``) because
an
operator may want to move it, and is checked by ``check_prompt``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

import msgspec

from fsm.settings.limits import LimitValues
from fsm.wire.httpjson import HTTPProblem
from fsm.wire.protocol import Answers, FilePart, Ident, Short, Text

Model = Annotated[
    str,
    msgspec.Meta(
        # ASCII classes only: the OpenAPI reader (ECMA regex) and msgspec (Python re) must
        # agree on what the pattern admits.
        pattern=r"^[A-Za-z0-9._:@+-]+/[A-Za-z0-9._:@+/-]+$(?!\n)",
        max_length=256,
        description="provider/model, e.g. openai/gpt-4o",
    ),
]


class PromptBody(msgspec.Struct, forbid_unknown_fields=True):
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    model: Model | None = None
    variant: Short | None = None
    agent: Short | None = None
    auto_commit: bool = False
    message_id: Ident | None = None
    """Idempotency key: the same id again returns the message already sent."""
    files: list[FilePart] | None = None
    """Files for the model to read, as ``data:`` URLs (``limits.attachments``,
    ``limits.attachment_chars``)."""


class AbortBody(msgspec.Struct, forbid_unknown_fields=True):
    message_id: Ident | None = None


class PermissionBody(msgspec.Struct, forbid_unknown_fields=True):
    reply: Literal["once", "always", "reject"]
    message: Text | None = None


class QuestionBody(msgspec.Struct, forbid_unknown_fields=True):
    answers: Answers | None = None
    reject: bool = False


IMAGE_SIGNATURES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
"""The images a prompt's files may be, and how each begins: a body that is not the image it says
it is made Kilo's turn hang (measured: a 'PNG' of text never got an outcome)."""

FILE_TYPES = ("text/*", *IMAGE_SIGNATURES)
"""Media types a prompt's files may have: what Kilo hands the model (text it inlines, images).
Any other reaches Kilo's history and fails that message and every later one of the
conversation ("'file part media type a/b' functionality not supported", measured on 7.7.9)."""


def _readable_type(mime: str) -> bool:
    return mime.startswith("text/") or mime in IMAGE_SIGNATURES


def _content_problem(mime: str, content: bytes) -> str | None:
    if mime.startswith("text/"):
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            return "is not UTF-8 text"
        return None
    signatures = IMAGE_SIGNATURES.get(mime, ())
    if not any(content.startswith(sig) for sig in signatures) or (
        mime == "image/webp" and content[8:12] != b"WEBP"
    ):
        return f"is not a {mime} image"
    return None


def check_files(files: list[FilePart] | None, limits: LimitValues) -> None:
    """Each file a ``data:`` URL whose media type is the part's, one of ``FILE_TYPES``, and whose
    base64 decodes; their number and size within the configured bounds. A 400 names the file."""
    if not files:
        return
    if len(files) > limits.attachments:
        raise HTTPProblem(
            400,
            f"{len(files)} files; the limit is {limits.attachments} (limits.attachments)",
            "files",
        )
    total = sum(len(f.url) for f in files)
    if total > limits.attachment_chars:
        raise HTTPProblem(
            400,
            f"the files' data URLs are {total} characters; the limit is "
            f"{limits.attachment_chars} (limits.attachment_chars)",
            "files",
        )
    for i, part in enumerate(files):
        if not _readable_type(part.mime):
            raise HTTPProblem(
                400,
                f"files[{i}].mime {part.mime!r} is not a type the agent reads "
                f"({', '.join(FILE_TYPES)})",
                f"files[{i}].mime",
            )
        head, comma, data = part.url.partition(",")
        if not comma or head != f"data:{part.mime};base64":
            raise HTTPProblem(
                400, f"files[{i}].url must be data:{part.mime};base64,<content>", f"files[{i}].url"
            )
        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise HTTPProblem(
                400, f"files[{i}].url: the content is not base64", f"files[{i}].url"
            ) from None
        problem = _content_problem(part.mime, content)
        if problem is not None:
            raise HTTPProblem(400, f"files[{i}].url: the content {problem}", f"files[{i}].url")


def check_prompt(body: PromptBody, limits: LimitValues) -> None:
    """What the type cannot say: the prompt is not blank and within the configured length, its
    files are well-formed and within their bounds."""
    check_files(body.files, limits)
    if not body.prompt.strip():
        raise HTTPProblem(400, "prompt must not be empty", "prompt")
    if len(body.prompt) > limits.prompt_chars:
        raise HTTPProblem(
            400,
            f"prompt is {len(body.prompt)} characters; the limit is {limits.prompt_chars} "
            "(limits.prompt_chars)",
            "prompt",
        )
