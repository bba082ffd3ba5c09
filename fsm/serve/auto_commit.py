"""Auto-commit: after a completed turn whose prompt asked for it, commit the workspace.

A post-turn task, not part of the turn: the outcome has already gone out when this runs, so a
slow or failing commit never changes a turn's result (the source system raced it against the
completion and could lose the outcome to a hung ``git``). The result is reported as a wrapper
event (``wrapper.auto_commit``) on the same ordered stream as Kilo's events. Each step is bounded:
``git`` calls 30 s, the commit message from Kilo 30 s, falling back to one built from the prompt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

GIT_TIMEOUT = 30.0
MESSAGE_TIMEOUT = 30.0


class GitError(Exception):
    pass


async def _git(workdir: Path, *args: str) -> str:
    with anyio.fail_after(GIT_TIMEOUT):
        done = await anyio.run_process(["git", *args], cwd=workdir, check=False)
    if done.returncode != 0:
        raise GitError(f"git {args[0]} failed ({done.returncode}): {done.stderr.decode()[-300:]}")
    return done.stdout.decode()


def fallback_message(prompt: str) -> str:
    first = prompt.strip().splitlines()[0] if prompt.strip() else "changes"
    return f"fsm-agent: {first[:72]}"


async def auto_commit(
    workdir: Path, prompt: str, generate: Callable[[], Awaitable[str]]
) -> dict[str, Any]:
    """Commit everything the turn changed; the report, never an exception."""
    try:
        if not (await _git(workdir, "status", "--porcelain")).strip():
            return {"success": True, "skipped": True, "reason": "nothing to commit"}
        message = ""
        try:
            with anyio.fail_after(MESSAGE_TIMEOUT):
                message = (await generate()).strip()
        except Exception:
            message = ""
        message = message or fallback_message(prompt)
        await _git(workdir, "add", "-A")
        await _git(
            workdir,
            "-c",
            "user.name=fsm-agent",
            "-c",
            "user.email=fsm-agent@localhost",
            "commit",
            "-q",
            "-m",
            message,
        )
        sha = (await _git(workdir, "rev-parse", "HEAD")).strip()
        return {"success": True, "skipped": False, "commit": sha, "commit_message": message}
    except TimeoutError:
        return {"success": False, "error": f"git did not answer within {GIT_TIMEOUT:g} s"}
    except (GitError, OSError) as exc:
        return {"success": False, "error": str(exc)}
