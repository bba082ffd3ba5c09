"""Where an agent's binary is: flag, then environment, then the project's own install, then PATH.

The order lets an operator pin a binary per run (flag), per host (``FSM_AGENT_KILO_BIN``,
``FSM_AGENT_OPENCODE_BIN``), and still work out of the box after ``just setup`` (which installs
the pinned npm platform packages into ``.kilo/`` and ``.opencode/``). A missing binary is a
configuration error worth a precise message, not a traceback. ``find_kilo`` is Kilo's lookup
(``adapters.kilo.spec.KILO``); ``find_agent`` is any agent's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from adapters.agents.base import PROJECT_ROOT, AgentSpec
from adapters.kilo.spec import KILO

KILO_VERSION = KILO.version
KILO_PACKAGE = KILO.package
ENV_VAR = KILO.bin_env
PROJECT_INSTALL = KILO.project_install
__all__ = ["PROJECT_ROOT", "AgentNotFound", "KiloNotFound", "find_agent", "find_kilo"]


class AgentNotFound(Exception):
    """No usable agent binary: the message says where we looked and how to install one."""


KiloNotFound = AgentNotFound


def find_kilo(flag: str | None = None, *, env: dict[str, str] | None = None) -> Path:
    return find_agent(KILO, flag, env=env, install=PROJECT_INSTALL)


def find_agent(
    spec: AgentSpec,
    flag: str | None = None,
    *,
    env: dict[str, str] | None = None,
    install: Path | None = None,
) -> Path:
    """``spec``'s binary: ``flag`` (``--agent-bin``/``--kilo-bin``), ``spec.bin_env``, the
    project's install, PATH; AgentNotFound naming each place and the install command."""
    environ = os.environ if env is None else env
    project = spec.project_install if install is None else install
    looked: list[str] = []
    for origin, candidate in (("--agent-bin", flag), (spec.bin_env, environ.get(spec.bin_env))):
        if candidate:
            path = Path(candidate).expanduser()
            if _executable(path):
                return path.resolve()
            raise AgentNotFound(f"{origin}={candidate}: not an executable file")
    looked.append(str(project))
    if _executable(project):
        return project
    on_path = shutil.which(spec.binary, path=environ.get("PATH"))
    looked.append(f"{spec.binary} on PATH")
    if on_path:
        return Path(on_path)
    raise AgentNotFound(
        f"cannot find the {spec.binary} binary (looked at "
        + ", ".join(looked)
        + f"). Install it with `npm install --prefix {spec.install_dir} "
        + f"{spec.package}@{spec.version}` (or `just setup`), or pass --agent-bin / set "
        + f"{spec.bin_env}."
    )


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)
