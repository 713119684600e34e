"""No module circles: every ``xraytriage`` import, wherever it sits in a file (top level, inside a
function, under ``TYPE_CHECKING``), points one way, so each layer can be read, tested and replaced
without dragging in the modules that use it (issue #27)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "xraytriage"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest known module that ``name`` (a module or ``module.attribute``) lies in."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name the file imports, ``from m import x`` giving both ``m`` and ``m.x``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (itself and its own
    parent packages left out: importing ``a.b`` runs ``a/__init__`` but that is not a circle
    the module author chose)."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            if name != PACKAGE and not name.startswith(PACKAGE + "."):
                continue
            target = _resolve(name, modules)
            if target and target != module and not module.startswith(target + "."):
                targets.add(target)
        graph[module] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is a set of modules in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete circle through the component's first module, for a readable failure."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return component


def test_finder_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from xraytriage.sub.b import B\n"
    )
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    import xraytriage.sub.a\n")
    (pkg / "sub" / "d.py").write_text("from xraytriage.sub.a import thing\n")
    graph = import_graph(pkg)
    assert graph["xraytriage.sub.d"] == {"xraytriage.sub.a"}
    components = strongly_connected(graph)
    assert components == [["xraytriage.sub.a", "xraytriage.sub.b", "xraytriage.sub.c"]]
    assert _one_cycle(graph, components[0]) == [
        "xraytriage.sub.a",
        "xraytriage.sub.b",
        "xraytriage.sub.c",
        "xraytriage.sub.a",
    ]


def test_no_import_cycles_among_modules() -> None:
    graph = import_graph()
    assert len(graph) > 10, f"found too few modules under {SRC}"
    circles = [" -> ".join(_one_cycle(graph, c)) for c in strongly_connected(graph)]
    assert not circles, "module circles (imports anywhere in a file count):\n" + "\n".join(circles)


def test_published_model_registry_loads_without_torch() -> None:
    """The registry below ``import_weights`` and ``published`` reads JSON only: listing or
    resolving published models needs no torch."""
    import os
    import subprocess
    import sys

    code = (
        "import sys; import xraytriage.models.registry as r; r.load_registry();"
        "print(sorted(m for m in ('torch', 'monai', 'onnxruntime') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
