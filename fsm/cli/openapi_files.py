"""The OpenAPI documents as files (``docs/openapi/``), rendered from the API declarations.

The running processes serve the same documents at ``GET /openapi.json``; the committed files let
a reader (or a client generator) have them without starting anything, and ``fsm-agent openapi
--check`` in the test suite keeps them from drifting from the code, as ``graph --check`` does for
the diagrams.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fsm.settings.limits import limit_values


def render(config: Path | None = None) -> dict[str, str]:
    """File name → document text, with the limits of ``config`` (defaults without one)."""
    from fsm.control.api import openapi_document as control_document
    from fsm.serve.job_api import openapi_document as wrapper_document

    limits = limit_values(config)
    documents: dict[str, dict[str, Any]] = {
        "control.json": control_document(limits),
        "wrapper.json": wrapper_document(limits),
    }
    return {
        name: json.dumps(doc, indent=2, sort_keys=True) + "\n" for name, doc in documents.items()
    }


def stale(documents: dict[str, str], out: Path) -> list[str]:
    """The names whose file is missing or differs."""
    return [
        name
        for name, text in sorted(documents.items())
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]


def write(documents: dict[str, str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in documents.items():
        (out / name).write_text(text, encoding="utf-8")
