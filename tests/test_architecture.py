"""The import contract of the package: one import name, data flowing one way, no cycles, small modules.

Every import of a project module counts, including those inside functions, so a lazy import cannot hide a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"p53hcc.tools": REPO / "tools", "p53hcc.fusion": REPO / "fusion"}
#: The only modules of p53hcc.tools that p53hcc.fusion may import (small leaves with no project imports).
FUSION_MAY_IMPORT = {"p53hcc.tools.errors", "p53hcc.tools.io", "p53hcc.tools.schema"}
LEAVES = {"p53hcc.tools.errors", "p53hcc.tools.io", "p53hcc.tools.schema", "p53hcc.tools.logs",
          "p53hcc.tools.parallel"}
#: Stage packages in data-flow order: a package may import only packages before it (and leaves).
STAGE_ORDER = ["cohort", "preprocessing", "radiomics", "dl", "pipeline", "federated", "export", "cli"]
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join([prefix, *[p for p in parts if p != "__init__"]])
            out[name] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level or inside functions)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != name and not n.endswith(("p53hcc.tools", "p53hcc.fusion")):
                found.add(n)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_fusion_imports_only_leaf_modules_of_tools(graph):
    bad = {m: sorted(d for d in deps if d.startswith("p53hcc.tools") and d not in FUSION_MAY_IMPORT)
           for m, deps in graph.items() if m.startswith("p53hcc.fusion")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_leaves_import_no_project_module(graph):
    assert {m: sorted(graph[m]) for m in LEAVES if graph[m]} == {}


def _stage(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["p53hcc", "tools"] or len(parts) < 3 or parts[2] not in STAGE_ORDER:
        return None
    return STAGE_ORDER.index(parts[2])


def test_data_flows_one_way_between_stage_packages(graph):
    backwards = []
    for module, deps in graph.items():
        own = _stage(module)
        for dep in deps:
            other = _stage(dep)
            if own is not None and other is not None and other > own:
                backwards.append(f"{module} -> {dep}")
    assert backwards == []


def test_everything_imports_under_the_one_import_name():
    bad = []
    for path in [*REPO.glob("tools/**/*.py"), *REPO.glob("fusion/**/*.py"), *REPO.glob("tests/*.py"),
                 *REPO.glob("benchmarks/*.py"), *REPO.glob("scripts/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("tools", "fusion")]
    assert bad == []


def test_modules_stay_small():
    big = {str(p.relative_to(REPO)): n for p in _modules().values()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}
