"""The import contract of the package: one import name, data flowing one way, no cycles, layers that only look
down, no private name used across modules, small modules (``docs/architecture.md`` draws the same rules).

Every import of a project module counts, including those inside functions, so a lazy import cannot hide an
edge. Each rule is a function of the import graph; the tests run it on the real graph and on the real graph plus
one deliberately wrong import, which it must report.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"p53hcc.tools": REPO / "tools", "p53hcc.fusion": REPO / "fusion"}
#: Folders whose code imports the package (checked for the one import name and private names).
USERS = ("tools", "fusion", "tests", "benchmarks", "scripts", "deploy")
#: The only modules of p53hcc.tools that p53hcc.fusion may import (small leaves with no project imports).
FUSION_MAY_IMPORT = {"p53hcc.tools.errors", "p53hcc.tools.io", "p53hcc.tools.schema"}
LEAVES = {"p53hcc.tools.errors", "p53hcc.tools.io", "p53hcc.tools.schema", "p53hcc.tools.logs",
          "p53hcc.tools.parallel"}
#: Stage packages in data-flow order: a package may import only packages before it (and leaves).
STAGE_ORDER = ["cohort", "preprocessing", "radiomics", "dl", "pipeline", "federated", "export", "deploy", "cli"]
#: The layers of p53hcc.fusion and the fusion layers each may import (``report`` may import every layer).
FUSION_LAYERS = {"inputs": set(), "models": {"inputs", "models"}, "stats": {"inputs", "stats"},
                 "report": {"inputs", "models", "stats", "report"}}
#: The fusion layers each stage package may import; a stage not named here imports none.
FUSION_FOR_STAGE = {"dl": {"inputs", "models"}, "pipeline": set(FUSION_LAYERS), "federated": set(FUSION_LAYERS),
                    "cli": set(FUSION_LAYERS)}
#: The one module of the pipeline the Deploy runtime may use: the documented predict entry point.
DEPLOY_ENTRY_POINT = "p53hcc.tools.pipeline.predict"
#: The study configuration package (typed schema, checks) imports only these leaves (and itself).
CONFIG_MAY_IMPORT = {"p53hcc.tools.errors", "p53hcc.tools.schema"}
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for prefix, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join([prefix, *[p for p in parts if p != "__init__"]])
            out[name] = path
    return out


def _imports(source: str, name: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in ``source`` (module level or inside functions)."""
    found = set()
    package = name if is_package else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
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
    return {name: _imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", modules)
            for name, path in modules.items()}


# ------------------------------------------------------------------------------------------------- the rules
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


def _edges(graph: dict[str, set[str]]):
    return ((m, d) for m, deps in sorted(graph.items()) for d in sorted(deps))


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["p53hcc", "tools"] and len(parts) > 2 and parts[2] in STAGE_ORDER else None


def _fusion_layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["p53hcc", "fusion"] and len(parts) > 2 else None


def fusion_imports_only_tool_leaves(graph) -> list[str]:
    return [f"{m} -> {d}" for m, d in _edges(graph)
            if m.startswith("p53hcc.fusion.") and d.startswith("p53hcc.tools.") and d not in FUSION_MAY_IMPORT]


def leaves_import_nothing(graph) -> list[str]:
    return [f"{m} -> {d}" for m, d in _edges(graph) if m in LEAVES]


def data_flows_one_way(graph) -> list[str]:
    return [f"{m} -> {d}" for m, d in _edges(graph)
            if _stage(m) and _stage(d) and STAGE_ORDER.index(_stage(d)) > STAGE_ORDER.index(_stage(m))]


def fusion_layers_look_down(graph) -> list[str]:
    """models never imports report (nor stats), stats never imports models or report, inputs imports no layer."""
    return [f"{m} -> {d}" for m, d in _edges(graph)
            if _fusion_layer(m) and _fusion_layer(d) and _fusion_layer(d) not in FUSION_LAYERS[_fusion_layer(m)]]


def stages_use_their_fusion_layers(graph) -> list[str]:
    """dl imports only fusion.models (and fusion.inputs); only pipeline and the CLI import fusion.report."""
    return [f"{m} -> {d}" for m, d in _edges(graph)
            if m.startswith("p53hcc.tools.") and _fusion_layer(d)
            and _fusion_layer(d) not in FUSION_FOR_STAGE.get(_stage(m) or "", set())]


def configuration_imports_only_leaves(graph) -> list[str]:
    """The study configuration (tools/config: typed schema and checks) imports only leaves and itself."""
    return [f"{m} -> {d}" for m, d in _edges(graph) if m.startswith("p53hcc.tools.config.")
            and d not in CONFIG_MAY_IMPORT and not d.startswith("p53hcc.tools.config.")]


def deploy_uses_only_the_predict_entry_point(graph) -> list[str]:
    return [f"{m} -> {d}" for m, d in _edges(graph)
            if _stage(m) == "deploy" and _stage(d) == "pipeline" and d != DEPLOY_ENTRY_POINT]


RULES = [fusion_imports_only_tool_leaves, leaves_import_nothing, data_flows_one_way, fusion_layers_look_down,
         stages_use_their_fusion_layers, configuration_imports_only_leaves, deploy_uses_only_the_predict_entry_point]


# ------------------------------------------------------------------------------------------------- the tests
def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_cycle_detector_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_the_package_keeps_the_rule(graph, rule):
    assert rule(graph) == []


#: One deliberately wrong import per rule (importer, imported): each must be reported by its rule.
WRONG = [
    (fusion_imports_only_tool_leaves, "p53hcc.fusion.models.combined", "p53hcc.tools.pipeline.fit"),
    (leaves_import_nothing, "p53hcc.tools.io", "p53hcc.tools.lock"),
    (data_flows_one_way, "p53hcc.tools.preprocessing.run", "p53hcc.tools.dl.engine"),
    (data_flows_one_way, "p53hcc.tools.export.bundle", "p53hcc.tools.deploy.run"),
    (fusion_layers_look_down, "p53hcc.fusion.models.combined", "p53hcc.fusion.report.nomogram_figure"),
    (fusion_layers_look_down, "p53hcc.fusion.models.nested", "p53hcc.fusion.stats.auc"),
    (fusion_layers_look_down, "p53hcc.fusion.stats.metric_rows", "p53hcc.fusion.models.factories"),
    (stages_use_their_fusion_layers, "p53hcc.tools.dl.gradcam", "p53hcc.fusion.report.gradcam_figure"),
    (stages_use_their_fusion_layers, "p53hcc.tools.dl.arms", "p53hcc.fusion.stats.auc"),
    (stages_use_their_fusion_layers, "p53hcc.tools.deploy.combined", "p53hcc.fusion.report.page"),
    (stages_use_their_fusion_layers, "p53hcc.tools.radiomics.extract", "p53hcc.fusion.models.radiomics"),
    (configuration_imports_only_leaves, "p53hcc.tools.config.check", "p53hcc.tools.dl.bundle"),
    (deploy_uses_only_the_predict_entry_point, "p53hcc.tools.deploy.combined", "p53hcc.tools.pipeline.freeze"),
]


@pytest.mark.parametrize("rule,importer,imported", WRONG, ids=lambda v: getattr(v, "__name__", v))
def test_a_wrong_import_is_reported(graph, rule, importer, imported):
    assert importer in graph and imported in graph  # real modules: the rule is tested on the real layout
    wrong = {**graph, importer: graph[importer] | {imported}}
    assert rule(wrong) == [f"{importer} -> {imported}"]


def test_a_lazy_import_inside_a_function_counts():
    modules = {"p53hcc.tools.dl.gradcam": Path(), "p53hcc.fusion.report.gradcam_figure": Path()}
    source = "def draw():\n    from p53hcc.fusion.report.gradcam_figure import save_overlay\n"
    found = _imports(source, "p53hcc.tools.dl.gradcam", False, modules)
    assert found == {"p53hcc.fusion.report.gradcam_figure"}
    assert stages_use_their_fusion_layers({"p53hcc.tools.dl.gradcam": found}) != []


def _user_files() -> list[Path]:
    return [p for top in USERS for p in (REPO / top).rglob("*.py") if "data" not in p.relative_to(REPO).parts]


def _imported_names(source: str):
    """``(module, name)`` of every absolute import in ``source`` (``name`` None for ``import module``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield from ((node.module or "", a.name) for a in node.names)


def _sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text(encoding="utf-8") for p in _user_files()}


def test_everything_imports_under_the_one_import_name():
    bad = [f"{path}: {module}" for path, text in _sources().items() for module, _ in _imported_names(text)
           if module.split(".")[0] in ("tools", "fusion")]
    assert bad == []


def private_imports(sources: dict[str, str]) -> list[str]:
    """``from <project module> import _name``: a private name used outside its module."""
    return [f"{path}: {module}.{name}" for path, text in sources.items() for module, name in _imported_names(text)
            if name and name.startswith("_") and not name.startswith("__")
            and module.split(".")[0] in ("p53hcc", "tests")]


def test_no_private_name_is_imported_across_modules():
    assert private_imports(_sources()) == []
    wrong = {"fusion/models/nested.py": "def f():\n    from p53hcc.fusion.models.oof import _check_folds\n"}
    assert private_imports(wrong) == ["fusion/models/nested.py: p53hcc.fusion.models.oof._check_folds"]


def test_modules_stay_small():
    big = {str(p.relative_to(REPO)): n for p in _modules().values()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}
