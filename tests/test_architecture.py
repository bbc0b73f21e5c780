"""The shape of the code, read from the source: one direction of imports, no private names across modules, training
code apart from inference, small modules, and one copy of the training toolkit and of the weight-file I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "textseg"
MAX_LINES = 500
# Modules that may import textseg.train: the trainers, the command line, the workbench runs and the benchmarks.
MAY_IMPORT_TRAIN = ("textseg.train", "textseg.cli", "textseg.workbench.quickstart", "textseg.workbench.ablate",
                    "textseg.bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str, tree: ast.AST | None = None) -> list[tuple[str, str | None, int]]:
    """Every textseg import of a module, wherever it is (top level, inside functions, under TYPE_CHECKING):
    (imported module, imported name or None, line). ``from pkg import sub`` counts as an import of ``pkg.sub``."""
    out = []
    for node in ast.walk(tree or TREES[name]):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "textseg"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package(name) else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "textseg":
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (source, alias.name, node.lineno))
    return out


def owner(target: str) -> str:
    """The textseg module that holds ``target`` (a dotted module path, possibly an attribute past it)."""
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, _, _ in imports(name):
            dep = owner(target)
            # a package's __init__ re-exporting its own modules is not a dependency of those modules on it
            if dep != name and not (is_package(name) and dep.startswith(name + ".")):
                graph[name].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_hidden_cycle():
    # the checker itself: a cycle through an import inside a function and one under TYPE_CHECKING is found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from textseg.segmenter import Segmenter\n" \
             "def f():\n    from textseg import pipeline\n    import textseg.model\n"
    got = {(owner(t), n) for t, n, _ in imports("textseg.grouping", ast.parse(source))}
    assert got == {("textseg.segmenter", "Segmenter"), ("textseg.pipeline", None), ("textseg.model", None)}


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert "textseg.segmenter" in graph["textseg.eval.diagnose"]  # the graph is really built
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_inference_does_not_depend_on_segmenter_from_ris():
    # ris sits on the pipeline, below the Segmenter (whose refer() dispatches to it)
    graph = import_graph()
    for name in MODULES:
        if name.startswith("textseg.ris") or name == "textseg.pipeline":
            assert "textseg.segmenter" not in graph[name], name


def test_no_private_name_is_imported_from_another_module():
    bad = [f"{MODULES[name].relative_to(ROOT.parent)}:{line} imports {target}.{imported}"
           for name in MODULES for target, imported, line in imports(name)
           if imported and imported.startswith("_") and not imported.startswith("__") and owner(target) != name]
    assert not bad, "\n".join(bad)


def private_definitions() -> dict[str, set[str]]:
    """Module → the private functions, methods and classes it defines."""
    out: dict[str, set[str]] = {}
    for name, tree in TREES.items():
        out[name] = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                       ast.ClassDef))
                     and n.name.startswith("_") and not n.name.startswith("__")}
    return out


def test_no_module_uses_another_modules_private_functions_or_methods():
    defined = private_definitions()
    bad = []
    for name, tree in TREES.items():
        elsewhere = set().union(*(v for k, v in defined.items() if k != name)) - defined[name]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in elsewhere
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{MODULES[name].relative_to(ROOT.parent)}:{node.lineno} uses {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


def test_only_training_code_imports_textseg_train():
    bad = [f"{name} imports {target}" for name in MODULES for target, _, _ in imports(name)
           if owner(target).startswith("textseg.train") and not name.startswith(MAY_IMPORT_TRAIN)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_at_most_500_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT.parent)} has {lines} lines"


def calls(tree: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}


def test_one_schedule_and_one_optimizer_builder():
    from textseg.train.schedule import build_optimizer, lr_scheduler, warmup_cosine

    assert callable(build_optimizer) and callable(lr_scheduler) and callable(warmup_cosine)
    for name, tree in TREES.items():
        if name == "textseg.train.schedule":
            continue
        made = {c for c in calls(tree) if c.endswith(("optim.AdamW", "optim.SGD", "LambdaLR", "math.cos"))}
        assert not made, f"{name} builds its own optimizer or schedule: {sorted(made)}"
        own = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
               and any(w in n.name.lower() for w in ("cosine", "lr_factor", "lr_at"))]
        assert not own, f"{name} defines a schedule of its own: {own}"


def test_weight_files_are_written_and_read_in_one_module():
    for name, tree in TREES.items():
        if name not in ("textseg.artifacts", "textseg.weight_formats"):
            io = {c for c in calls(tree) if c in ("torch.save", "torch.load")}
            assert not io, f"{name} reads or writes weight files itself: {sorted(io)}"
