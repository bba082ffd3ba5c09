"""Kilo's names stay inside the Kilo adapter (issue 17's acceptance: ``kilo_events``,
``KiloClient``, ``[kilo]`` remain only inside ``adapters/kilo``).

The shared code (``fsm/`` and ``adapters/`` minus ``adapters/kilo/``) talks about *the agent*:
Kilo and upstream OpenCode sit behind one port, and a name such as ``kilo_session`` in the host
says the host knows which agent it drives. So every name the code is made of is read from the
source (``ast``): identifiers, attribute names, function, class and parameter names, keyword
arguments, imported names, and the string constants that act as names: config keys, agent
names and environment variables (a whole string shaped like an identifier) and command-line
flags (``--kilo-bin``). Prose is free to say "Kilo" where it states a fact about Kilo:
docstrings, comments and strings with anything but a name in them (a message, a path such as
``/var/lib/kilo``, a label value) are not read. Importing from the Kilo adapter's modules
(``adapters.kilo.*``) is allowed: that is the adapter's address, not a Kilo name.

``KNOWN`` lists, file by file, the Kilo names still left in shared code, each with the reason
it stays; ``ALIASES`` are those among them kept beside their new names while other code still
calls the old one, each marked with ``ALIAS`` where it is. The test fails on a new name *and* on
a listed one that is gone, so the lists only shrink and say exactly what is left to rename. Both
are empty: nothing is left.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ("fsm", "adapters")
ADAPTER = ROOT / "adapters" / "kilo"
KILO = re.compile(r"kilo", re.IGNORECASE)
NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|--[a-z0-9-]+=?")
"""A string constant that is a name: a config key, an agent name, an environment variable, a
command-line flag. Anything else (a sentence, a path, a label value) is prose or data."""

ALIAS = "alias for fsm/sim and fsm/control until they are renamed (issue 17)"

ALIASES: dict[str, set[str]] = {}
"""Aliases kept beside their new names for code other engineers are editing now, each marked
with ``ALIAS`` where it is."""
KNOWN: dict[str, set[str]] = {**ALIASES}


def _docstrings(tree: ast.AST) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for statement in body:
                if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                    found.add(id(statement.value))
    return found


def _from_the_adapter(module: str | None) -> bool:
    return module is not None and (module == "adapters.kilo" or module.startswith("adapters.kilo."))


def names_in(source: str) -> set[str]:
    """Every name of ``source`` that spells Kilo, prose left out (see the module docstring)."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        candidates: list[str | None] = []
        if isinstance(node, ast.Name):
            candidates = [node.id]
        elif isinstance(node, ast.Attribute):
            candidates = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            candidates = [node.name]
        elif isinstance(node, ast.arg | ast.keyword):
            candidates = [node.arg]
        elif isinstance(node, ast.Import):
            candidates = [a.asname for a in node.names]
            candidates += [a.name for a in node.names if not _from_the_adapter(a.name)]
        elif isinstance(node, ast.ImportFrom):
            candidates = [a.asname or a.name for a in node.names]
            if not _from_the_adapter(node.module):
                candidates.append(node.module)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in prose
            and NAME_LIKE.fullmatch(node.value)
        ):
            candidates = [node.value]
        found.update(c for c in candidates if c and KILO.search(c))
    return found


def shared_names() -> dict[str, set[str]]:
    """File (relative to the root) -> the Kilo names in it, for the shared code."""
    out: dict[str, set[str]] = {}
    for package in SHARED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.is_relative_to(ADAPTER):
                continue
            names = names_in(path.read_text())
            if names:
                out[str(path.relative_to(ROOT))] = names
    return out


def test_kilo_names_appear_only_inside_the_kilo_adapter() -> None:
    found = shared_names()
    new = {f: sorted(n - KNOWN.get(f, set())) for f, n in found.items() if n - KNOWN.get(f, set())}
    assert new == {}, "Kilo names in shared code (rename them, or declare them in adapters/kilo)"
    gone = {f: sorted(n - found.get(f, set())) for f, n in KNOWN.items() if n - found.get(f, set())}
    assert gone == {}, "renamed: remove them from KNOWN"


def test_the_aliases_left_in_shared_code_are_marked_as_such() -> None:
    for path in ALIASES:
        assert ALIAS in (ROOT / path).read_text(), path


def test_the_check_sees_names_and_leaves_prose_alone() -> None:
    source = '''
"""Kilo says kilo_events here: a docstring."""
from adapters.kilo.client import AgentClient
from fsm.agents import kilo_events
import adapters.kilo.process
# KiloClient in a comment

class KiloShape:
    """KILO_PASSWORD in a docstring."""

def run(kilo_bin: str, *, agent: str = "kilo") -> None:
    host.kilo_session = 1
    start(kilo_config=2)
    read("FSM_AGENT_KILO_BIN", "--kilo-bin", "--kilo-bin=x")
    print("Kilo exited: see /var/lib/kilo and io.fsm-agent.kilo-state")
'''
    assert names_in(source) == {
        "kilo_events",
        "KiloShape",
        "kilo_bin",
        "kilo",
        "kilo_session",
        "kilo_config",
        "FSM_AGENT_KILO_BIN",
        "--kilo-bin",
    }
