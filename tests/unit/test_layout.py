"""The package layout keeps its promise: each top-level concern imports only those below it,
so there is no import cycle among them, and the product never imports its tools."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import balancer

PACKAGE = Path(balancer.__file__).parent

# Lowest first: a concern may import the ones before it, never one after it.
LAYERS = (
    "core",
    "observability",
    "config",
    "protocols",
    "pool",
    "selection",
    "health",
    "dataplane",
    "service",
    "admin",
    "control",
    "tools",
    "cli",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[str]:
    """Every balancer module `path` imports, anywhere in it (TYPE_CHECKING blocks and function
    bodies included: a cycle through either is still a cycle a reader has to untangle)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("balancer"))
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import"
            base = node.module or ""
            if base.startswith("balancer"):
                # `from balancer.pkg import module` imports a module; `from m import name`, m.
                modules = [f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")]
                yield from modules or [base]


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def concern(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        edges[module_name(path)] = set(imports(path))
    return edges


def test_every_module_belongs_to_a_concern() -> None:
    strays = [m for m in graph() if m != "balancer" and concern(m) not in (*LAYERS, "__main__")]
    assert not strays, f"modules outside the layout's concerns: {strays}"


def test_each_concern_imports_only_those_below_it() -> None:
    wrong = []
    for module, targets in graph().items():
        source = concern(module)
        if source not in LAYERS:
            continue
        for target in targets:
            dest = concern(target)
            if dest is None or dest == source:
                continue
            if dest not in LAYERS or LAYERS.index(dest) > LAYERS.index(source):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_module_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in edges:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_product_never_imports_its_tools() -> None:
    offenders = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        if concern(module) not in ("tools", "cli", "__main__")
        for target in targets
        if concern(target) == "tools"
    ]
    assert not offenders, offenders
