"""The agent port: one declaration per agent server of everything that differs between them.

Kilo is an OpenCode fork and both serve the same HTTP/SSE API (sessions, ``prompt_async``, abort,
permission and question replies, ``GET /event``), so one client and one process owner serve both.
What differs is data, declared once per agent as an ``AgentSpec`` (this module holds the type;
each agent's own value lives with its adapter: ``adapters.kilo.spec``, ``adapters.agents.opencode``;
``adapters.agents.registry`` lists them) and read by the process owner
(``adapters.kilo.process``), the client (``adapters.kilo.client``), the wrapper core's event
dialect (``fsm.agents.dialect``) and the job API (capabilities). Measured on Kilo 7.7.9 and
OpenCode 1.18.33 (issue 17):

* the binary: each has its own npm platform package, project install dir and ``FSM_AGENT_*_BIN``;
* readiness: both are polled on ``GET /global/health`` at the URL of the port we chose, never
  read from a stdout line (OpenCode prints ``opencode server listening``, Kilo ``kilo server
  listening``; a line is a promise, health is the fact);
* environment: Kilo reads ``KILO_*`` (password, user, config content, parent pid), OpenCode
  ``OPENCODE_*`` and has no parent-pid watchdog: the process owner replaces it with the kernel's
  parent-death signal (``setpriv --pdeathsig KILL``), so a SIGKILLed wrapper still takes it along;
* auth: basic auth with user ``kilo`` / ``opencode``;
* stop: OpenCode ignored SIGTERM for more than 5 s twice right after a turn, so its grace before
  SIGKILL is capped short (``stop_grace``);
* the event dialect: Kilo brackets each turn with ``session.turn.open``/``close``; OpenCode never
  does, a turn ends only by ``session.idle`` and two queued prompts give a single one
  (``dialect = "idle"``: the core synthesises the brackets, correlating by message id);
* capabilities: OpenCode has no ``/commit-message`` and no ``/network*`` routes (they answer 200
  with its web UI's HTML): a prompt asking for one is refused as "not supported by this agent".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

COMMIT_MESSAGE = "commit_message"
"""``POST /commit-message``: the agent writes the auto-commit's message (``auto_commit``)."""
NETWORK_REPLY = "network_reply"
"""``session.network.asked`` and its reply routes: a model-endpoint wait the agent reports."""
CAPABILITIES = {
    COMMIT_MESSAGE: "auto_commit",
    NETWORK_REPLY: "network replies",
}
"""Every capability an agent may lack, with the request field or feature that needs it."""


class AgentUnsupported(Exception):
    """The agent lacks a capability: ``str()`` says which agent and which capability."""

    def __init__(self, agent: str, capability: str) -> None:
        super().__init__(
            f"{CAPABILITIES.get(capability, capability)}: not supported by this agent ({agent})"
        )
        self.agent = agent
        self.capability = capability


@dataclass(frozen=True)
class AgentSpec:
    """Everything agent-specific of a ``serve``-style agent server, as data."""

    name: str
    """What ``--agent`` and ``[agent] name`` say."""
    title: str
    """For messages: ``Kilo``, ``OpenCode``."""
    version: str
    package: str
    """The npm platform package that carries the real binary (the meta packages' postinstall,
    which npm 11 skips, is what would link it)."""
    install_dir: str
    """The project's install of it (``just setup``), relative to the project root."""
    binary: str
    """Its name on PATH."""
    bin_env: str
    """The variable that pins the binary per host."""
    env_prefix: str
    """Its own knobs (``KILO_*``, ``OPENCODE_*``): inherited by name, whoever sets one means it."""
    username: str
    password_env: str
    username_env: str
    config_env: str
    """Where its JSON config goes (``[agent.config]``, ``[kilo.config]``)."""
    parent_pid_env: str | None
    """Its parent-pid watchdog variable; None: it has none, the kernel's pdeathsig stands in."""
    quiet_env: Mapping[str, str]
    """Set always: no telemetry, no update check, no model-list fetch (offline they only wait)."""
    serve_error: tuple[bytes, ...]
    """stderr markers of an exit because the port was taken (draw another port)."""
    dialect: str
    """``brackets``: the agent opens and closes each turn; ``idle``: ``session.idle`` ends it."""
    capabilities: frozenset[str]
    stop_grace: float | None = None
    """A cap on SIGTERM → SIGKILL, when the agent is known to ignore SIGTERM for long."""
    log_stem: str = field(default="")
    config_aliases: tuple[str, ...] = ()
    """Older names of the config file's ``[agent]`` table this agent's users may still write
    (read as ``[agent]``, with a one-line deprecation warning)."""
    flag_aliases: tuple[str, ...] = ()
    """Older spellings of ``--agent-bin`` kept working on the command line."""
    env_aliases: Mapping[str, str] = field(default_factory=dict)
    """The wrapper's own agent-neutral variable (``FSM_AGENT_AGENT_USER``...) -> the older name
    it had for this agent, still read when the neutral one is unset (images built before)."""

    @property
    def project_install(self) -> Path:
        return PROJECT_ROOT / self.install_dir / "node_modules" / self.package / "bin" / self.binary

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def env_name(self, name: str, environ: Mapping[str, str]) -> str:
        """The variable to read for ``name``: itself, unless only the older name this agent
        declares for it is set (so a message names the variable the operator wrote)."""
        older = self.env_aliases.get(name)
        return older if name not in environ and older is not None and older in environ else name

    def require(self, capability: str) -> None:
        """Raise ``AgentUnsupported`` unless this agent has ``capability``."""
        if capability not in self.capabilities:
            raise AgentUnsupported(self.name, capability)
