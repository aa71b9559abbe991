"""The package's import structure: data never reaches up into training or segmentation, and ``support``
has no import cycle (issue 18). The graph counts every import of a ``support`` module, those inside
functions too: an import moved into a function still makes a cycle, it only hides it at import time."""
import ast
import subprocess
import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parents[1] / "support"

#: Edges allowed to close a cycle, each with why. Nothing else may.
ALLOWED = {
    # sweep_ray is the optional Ray backend: sweep imports it only for backend="ray".
    ("support.sweep", "support.sweep_ray"): "optional backend, imported on demand",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SUPPORT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """``{module: {imported support module: line}}`` for every ``support`` module, function-level imports included."""
    modules = {_module_name(p): p for p in SUPPORT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                base = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                # a module's own package (and the root package) is imported before it anyway: no edge
                if target in modules and target != name and not name.startswith(target + "."):
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_support_has_no_import_cycle():
    graph = import_graph()
    assert "support.segmentation.crop" in graph["support.segmentation.classify"]  # the graph sees imports
    allowed = {(a, b) for a, b in ALLOWED}
    pruned = {m: {t: line for t, line in edges.items() if (m, t) not in allowed} for m, edges in graph.items()}
    found = cycles(pruned)
    detail = [{m: sorted(f"{t} (line {graph[m][t]})" for t in pruned[m] if t in c) for m in c} for c in found]
    assert not found, f"import cycles in support (break them, or allow an edge in ALLOWED with why): {detail}"
    for a, b in ALLOWED:  # an allowed edge that no longer exists must leave the list
        assert b in graph[a], f"ALLOWED names {a} -> {b}, which is gone: remove it from ALLOWED"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_importing_data_imports_neither_training_nor_segmentation():
    code = ("import sys, support.data; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['support', 'training'], "
            "['support', 'segmentation'], ['support', 'ensembles'], ['support', 'models']) "
            "or m == 'segmentation_models_pytorch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=SUPPORT.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
