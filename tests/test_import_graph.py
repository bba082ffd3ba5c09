"""The import graph of ``fsm`` and ``adapters``: no cycles, the engine stands alone, the walls hold.

Imports are read from the source (``ast``), function-level ones included (a lazy import is still
a dependency); only ``if TYPE_CHECKING:`` blocks are left out. The engine — the machine model,
its validation, the runtime, clocks and timer tables — may import nothing of the project beyond
itself: it knows nothing of Kilo, wrappers, sessions or the wire (issue 15). The checks are also
run on small made-up graphs, so each is seen to fail when the rule is broken. The walls are the
layout's (docs/architecture.md): the wrapper side and the control side meet only on the wire, the
sans-I/O cores do no I/O, and adapters plug into hosts without knowing them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fsm", "adapters")
ENGINE_PACKAGE = "fsm.engine"
"""The reusable state-machine engine: its modules import only each other."""
SIDES = ("fsm.serve", "fsm.control")
"""The wrapper side and the control side: each may use the wire, never the other side."""
CORES = ("fsm.serve.core", "fsm.control.core")
"""The sans-I/O cores: decisions only, so no I/O library, no adapter, no host helper."""
IO_MODULES = ("anyio", "asyncio", "httpx", "socket", "subprocess", "os", "sqlite3", "websockets")
WORLD_FACING = ("adapters",)
ABOVE_ADAPTERS = ("fsm.serve", "fsm.control", "fsm.cli", "fsm.sim", "fsm.demo")
"""Hosts and command lines: adapters are what they plug in, so adapters never import them."""

Graph = dict[str, set[str]]


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path) -> set[str]:
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                out.add(module)
                out.update(f"{module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return out


def import_graph() -> Graph:
    known = modules()
    return {
        name: {m for m in _imported(name, path) if m in known and m != name}
        for name, path in known.items()
    }


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def engine_modules(graph: Graph) -> frozenset[str]:
    return frozenset(m for m in graph if _within(m, ENGINE_PACKAGE))


def engine_leaks(graph: Graph) -> dict[str, list[str]]:
    """What an engine module imports from the project outside the engine."""
    engine = engine_modules(graph)
    leaks = {}
    for name in sorted(engine):
        outside = sorted(m for m in graph.get(name, ()) if m != "fsm" and m not in engine)
        if outside:
            leaks[name] = outside
    return leaks


def layer_breaks(graph: Graph) -> list[str]:
    """Imports that cross the layout's walls: one side into the other, an adapter into a host."""
    found = []
    for name, imported in sorted(graph.items()):
        for target in sorted(imported):
            for side in SIDES:
                other = [s for s in SIDES if s != side]
                if _within(name, side) and any(_within(target, o) for o in other):
                    found.append(f"{name} -> {target} (one side into the other)")
            if any(_within(name, w) for w in WORLD_FACING) and any(
                _within(target, h) for h in ABOVE_ADAPTERS
            ):
                found.append(f"{name} -> {target} (an adapter into a host)")
    return found


def core_io(name: str, imported: set[str]) -> list[str]:
    """What a sans-I/O core imports that does I/O or belongs to a host."""
    return sorted(
        m
        for m in imported
        if m.split(".")[0] in IO_MODULES
        or _within(m, "adapters")
        or _within(m, "fsm.hosting")
        or (m.startswith(("fsm.serve.", "fsm.control.")) and m not in CORES)
    )


def test_no_module_of_fsm_or_adapters_is_part_of_an_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_engine_imports_nothing_of_the_project_but_itself() -> None:
    graph = import_graph()
    assert {"fsm.engine.machine", "fsm.engine.runner", "fsm.engine.clock"} <= engine_modules(graph)
    assert engine_leaks(graph) == {}


def test_neither_side_imports_the_other_and_no_adapter_imports_a_host() -> None:
    assert layer_breaks(import_graph()) == []


def test_the_sans_io_cores_import_no_io_library_adapter_or_host_helper() -> None:
    known = modules()
    for core in CORES:
        assert core_io(core, _imported(core, known[core])) == [], core


def test_the_checks_fail_when_the_rules_are_broken() -> None:
    """What the two tests above would say, had ``fsm.control.host`` kept importing the API
    inside ``run`` (it did until this check came) or had the engine imported the timer tables."""
    graph = import_graph()
    broken = {**graph, "fsm.control.host": {*graph["fsm.control.host"], "fsm.control.api"}}
    assert ["fsm.control.api", "fsm.control.host"] in cycles(broken)
    leaking = {**graph, "fsm.engine.machine": {*graph["fsm.engine.machine"], "fsm.machines.timers"}}
    assert engine_leaks(leaking) == {"fsm.engine.machine": ["fsm.machines.timers"]}
    crossing = {
        **graph,
        "fsm.control.main": {*graph["fsm.control.main"], "fsm.serve.settings"},
        "adapters.kilo.client": {*graph["adapters.kilo.client"], "fsm.serve.host"},
    }
    assert layer_breaks(crossing) == [
        "adapters.kilo.client -> fsm.serve.host (an adapter into a host)",
        "fsm.control.main -> fsm.serve.settings (one side into the other)",
    ]
    assert core_io("fsm.serve.core", {"anyio", "fsm.wire.protocol", "fsm.serve.host"}) == [
        "anyio",
        "fsm.serve.host",
    ]


def test_imports_are_read_from_function_bodies_too() -> None:
    host = _imported("fsm.control.host", ROOT / "fsm" / "control" / "host.py")
    assert "fsm.control.metrics" in host
    assert "fsm.control.api" not in host
