"""The import graph of densflow: no cycle (a lazy import inside a function counts too), and the
layers import downwards only: utils ← data ← the model ← io ← training, evaluation ← the entry
points. In particular the model never imports storage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "densflow"

# The model: the paper's parts and what they are built from.
MODEL = {
    "densflow.attention", "densflow.base", "densflow.bounds", "densflow.config",
    "densflow.coupling", "densflow.cross_unit", "densflow.dense_block", "densflow.dequantization",
    "densflow.glow", "densflow.input_augmentation", "densflow.invertible_dense_block",
    "densflow.model", "densflow.multiscale", "densflow.noise", "densflow.prior",
}  # fmt: skip
LAYERS = [  # (layer, its modules): a module imports its own layer and those before it
    ("utils", lambda m: m.startswith("densflow.utils")),
    ("data", lambda m: m.startswith("densflow.data")),
    ("model", lambda m: m in MODEL),
    ("speed and storage", lambda m: m.startswith(("densflow.performance", "densflow.io"))),
    ("training and evaluation", lambda m: m.startswith(("densflow.training", "densflow.evaluate"))),
    ("entry points", lambda m: True),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The densflow modules ``path`` imports, at any depth (functions included); a module inside
    a package another package imports stands for that package's ``__init__`` too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target in modules and target != "densflow":  # the root runs first, always
                if not name.startswith(target + "."):  # P.x imported from outside P runs P too
                    found.add(target)
                target = target.rpartition(".")[0]
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def layer(module: str) -> int:
    return next(i for i, (_, belongs) in enumerate(LAYERS) if belongs(module))


def test_the_graph_is_read_from_every_module(graph):
    assert "densflow.io.resolve" in graph["densflow.cli.models"]
    assert "densflow.io" in graph["densflow.training.state"]  # its package runs first
    assert "densflow.data.registry" not in graph["densflow.data.errors"]  # TYPE_CHECKING only


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_model_never_imports_storage(graph):
    reached, todo = set(), list(MODEL)
    while todo:
        for target in graph[todo.pop()] - reached:
            reached.add(target)
            todo.append(target)
    assert sorted(m for m in reached if m.startswith("densflow.io")) == []


def test_the_layers_import_downwards_only(graph):
    upwards = sorted(
        f"{m} imports {t}" for m, targets in graph.items() if m != "densflow"
        for t in targets if layer(t) > layer(m)
    )  # fmt: skip
    assert upwards == []
