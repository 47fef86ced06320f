"""The import graph keeps its shape (docs/design.md, "Layers"): no cycles between modules,
and no package imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "klbudget"

# Lowest first; a package may import its own layer and those below.
LAYERS = [
    {"core", "rewards", "presets"},
    {"base", "runs", "theory"},
    {"envs"},
    {"config"},
    {"world", "evaluation"},
    {"compose"},
    {"agent", "generation", "report"},
    {"pipelines"},
    {"api"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (anywhere in it)."""
    names = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {}
    for mod, f in names.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != "klbudget":
                    continue
                for a in node.names:  # `from klbudget import config` imports a module
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in names else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "klbudget"}
        graph[mod] = {d for d in deps if d != mod and d != "klbudget"}
    return graph


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "klbudget"


def test_every_package_has_a_layer_and_imports_only_downwards():
    graph = _modules()
    packages = {_package(m) for m in graph} - {"klbudget"}
    assert packages <= set(RANK), f"packages without a layer: {packages - set(RANK)}"
    upward = [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if _package(m) != "klbudget" and RANK[_package(d)] > RANK[_package(m)]
    ]
    assert not upward, upward


def test_no_import_cycles():
    graph = _modules()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            assert (cycle := visit(m)) is None, " -> ".join(cycle)


def test_building_parts_does_not_go_through_the_trainer():
    graph = _modules()
    users = sorted(m for m, deps in graph.items() if "klbudget.agent.trainer" in deps)
    assert "klbudget.pipelines.prior" not in users
    for f in (PACKAGE.parent / "benchmarks").glob("*.py"):
        text = f.read_text()
        for name in ("build_base", "build_env", "chat_format"):
            assert f"trainer import {name}" not in text, f.name
