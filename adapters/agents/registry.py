"""Every agent ``--agent`` can name, and what the shared code asks of the list as a whole.

The specs live with their adapters; this list is the one place that gathers them, so the config
loader and the command line learn the older names an agent keeps working (``config_aliases``,
``flag_aliases``) from the specs rather than spelling any agent's name themselves.
"""

from __future__ import annotations

from adapters.agents.base import AgentSpec
from adapters.agents.opencode import OPENCODE
from adapters.kilo.spec import KILO as DEFAULT

AGENTS: dict[str, AgentSpec] = {spec.name: spec for spec in (DEFAULT, OPENCODE)}
"""Every agent ``--agent`` can name; the first is the default."""
DEFAULT_AGENT = DEFAULT.name


def agent_spec(name: str | None) -> AgentSpec:
    """The agent called ``name`` (None: the default); ValueError listing the known ones."""
    spec = AGENTS.get(name or DEFAULT_AGENT)
    if spec is None:
        raise ValueError(f"agent: {name!r} is not one of {', '.join(AGENTS)}")
    return spec


def config_aliases() -> dict[str, str]:
    """Older config table name -> the agent that declares it (read as ``[agent]``)."""
    return {alias: spec.name for spec in AGENTS.values() for alias in spec.config_aliases}


def flag_aliases() -> tuple[str, ...]:
    """Older spellings of ``--agent-bin``, every agent's."""
    return tuple(flag for spec in AGENTS.values() for flag in spec.flag_aliases)
