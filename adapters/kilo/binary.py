"""Where the ``kilo`` binary is: flag, then environment, then the project's own install, then PATH.

The order lets an operator pin a binary per run (flag), per host (``FSM_AGENT_KILO_BIN``), and
still work out of the box after ``just setup`` (which installs the pinned npm package into
``.kilo/``). A missing binary is a configuration error worth a precise message, not a traceback.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

KILO_VERSION = "7.7.9"
KILO_PACKAGE = "@kilocode/cli-linux-x64"
ENV_VAR = "FSM_AGENT_KILO_BIN"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT_INSTALL = PROJECT_ROOT / ".kilo" / "node_modules" / KILO_PACKAGE / "bin" / "kilo"


class KiloNotFound(Exception):
    """No usable ``kilo`` binary: the message says where we looked and how to install one."""


def find_kilo(flag: str | None = None, *, env: dict[str, str] | None = None) -> Path:
    environ = os.environ if env is None else env
    looked: list[str] = []
    for origin, candidate in (("--kilo-bin", flag), (ENV_VAR, environ.get(ENV_VAR))):
        if candidate:
            path = Path(candidate).expanduser()
            if _executable(path):
                return path.resolve()
            raise KiloNotFound(f"{origin}={candidate}: not an executable file")
    looked.append(str(PROJECT_INSTALL))
    if _executable(PROJECT_INSTALL):
        return PROJECT_INSTALL
    on_path = shutil.which("kilo", path=environ.get("PATH"))
    looked.append("kilo on PATH")
    if on_path:
        return Path(on_path)
    raise KiloNotFound(
        "cannot find the kilo binary (looked at "
        + ", ".join(looked)
        + f"). Install it with `npm install --prefix .kilo {KILO_PACKAGE}@{KILO_VERSION}` "
        + f"(or `just setup`), or pass --kilo-bin / set {ENV_VAR}."
    )


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
