"""An exported bundle's ``scripts/``: the package's own definitions behind the names its configs use.

Model-zoo bundles carry their custom code in ``scripts/`` so that they run where p53hcc is not installed. Rather
than keeping a second copy of each transform in the repository, :func:`generate_scripts` copies, at export time,
the source of exactly the definitions the configs reach: starting from names of
:mod:`p53hcc.tools.dl.components` it follows every module-level name those definitions use (functions, classes,
constants, imports, also imports inside functions) through the p53hcc modules that define them. Each p53hcc
module contributes one file ``scripts/<module>.py`` holding only what is needed, its ``p53hcc`` imports rewritten
to ``scripts.<module>``; third-party imports are kept. The files are formatted with the model zoo's black and
isort settings when those tools are installed (``p53hcc[zoo]``), so the zoo's code-format check passes.
"""
from __future__ import annotations

import ast
import importlib.util
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from p53hcc.tools.errors import P53hccError

log = logging.getLogger(__name__)
ROOT = "p53hcc.tools.dl.components"
PACKAGE = "scripts"
#: The model zoo's formatting (its pyproject.toml and setup.cfg; runtests.sh adds --skip-magic-trailing-comma).
LINE_LENGTH = 120


def script_module(module: str) -> str:
    """The ``scripts`` module a p53hcc module becomes (its last name; ``io`` reads as the standard library's)."""
    last = module.rsplit(".", 1)[-1]
    return f"{PACKAGE}.{'files' if last == 'io' else last}"


@dataclass
class _Source:
    """One parsed p53hcc module: its top-level definitions and the names its imports bind."""

    name: str
    text: str
    tree: ast.Module
    defs: dict[str, ast.stmt] = field(default_factory=dict)
    imports: dict[str, tuple[str | None, str, ast.stmt]] = field(default_factory=dict)  # bound -> (module, name)
    exprs: list[ast.stmt] = field(default_factory=list)


@cache
def _source(module: str) -> _Source:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise P53hccError(f"cannot find the source of {module}")
    text = Path(spec.origin).read_text(encoding="utf-8")
    src = _Source(module, text, ast.parse(text))
    for node in src.tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            src.defs[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        src.defs.setdefault(n.id, node)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for a in node.names:
                src.imports[a.asname or a.name] = (node.module, a.name, node)
        elif isinstance(node, ast.Import):
            for a in node.names:
                src.imports[a.asname or a.name.split(".")[0]] = (None, a.name, node)
        elif isinstance(node, ast.Expr) and not isinstance(getattr(node, "value", None), ast.Constant):
            src.exprs.append(node)  # module-level statements (e.g. restoring the umask) travel with their names
    return src


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _inner_imports(node: ast.AST) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("p53hcc.")]


@dataclass
class _Plan:
    """What each p53hcc module contributes: its needed top-level statements and the names it imports."""

    statements: dict[str, set[int]] = field(default_factory=dict)  # module -> indices into tree.body
    imported: dict[str, set[str]] = field(default_factory=dict)  # module -> bound names of kept imports

    def add(self, module: str, node: ast.stmt) -> bool:
        index = _source(module).tree.body.index(node)
        seen = self.statements.setdefault(module, set())
        if index in seen:
            return False
        seen.add(index)
        return True


def _resolve(plan: _Plan, module: str, name: str) -> None:
    """Include ``module``'s definition of ``name`` and, recursively, everything it uses."""
    src = _source(module)
    if name in src.imports:
        target, original, _ = src.imports[name]
        plan.imported.setdefault(module, set()).add(name)
        if target and target.startswith("p53hcc."):
            _resolve(plan, target, original)
        return
    node = src.defs.get(name)
    if node is None:
        raise P53hccError(f"{module} defines no {name!r} to export")
    if not plan.add(module, node):
        return
    for used in sorted(_names(node) - {name}):
        if used in src.defs or used in src.imports:
            _resolve(plan, module, used)
    for inner in _inner_imports(node):
        for a in inner.names:
            _resolve(plan, inner.module, a.name)
    for expr in src.exprs:  # e.g. ``os.umask(_UMASK)`` right after ``_UMASK = os.umask(0)``
        if name in _names(expr) and plan.add(module, expr):
            for used in _names(expr):
                if used in src.defs or used in src.imports:
                    _resolve(plan, module, used)


def _segment(src: _Source, node: ast.stmt) -> str:
    """The statement's source text, decorators and comment lines right above it included."""
    lines = src.text.splitlines()
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    text = "\n".join(lines[start:node.end_lineno])
    for inner in _inner_imports(node):  # imports inside functions point at the scripts modules too
        text = re.sub(rf"\bfrom {re.escape(inner.module)} import", f"from {script_module(inner.module)} import", text)
    return text


def _import_lines(src: _Source, bound: set[str]) -> list[str]:
    out = []
    for name in sorted(bound):
        module, original, node = src.imports[name]
        alias = f" as {name}" if name != original.split(".")[0] and isinstance(node, ast.ImportFrom) else ""
        if isinstance(node, ast.Import):
            alias = f" as {name}" if name != original.split(".")[0] else ""
            out.append(f"import {original}{alias}")
        elif module.startswith("p53hcc."):
            out.append(f"from {script_module(module)} import {original}{alias}")
        else:
            out.append(f"from {module} import {original}{alias}")
    return out


#: Lines the zoo's flake8 (pep8-naming) would flag although they follow a library's own convention.
NOQA = {re.compile(r"^(\s*import SimpleITK as sitk)$", re.MULTILINE): r"\1  # noqa: N813"}


def module_text(module: str, plan: _Plan, version: str, exports: Iterable[str] = ()) -> str:
    """The generated ``scripts`` file of one p53hcc module (``exports``: its public names, as ``__all__``)."""
    src = _source(module)
    body = [_segment(src, src.tree.body[i]) for i in sorted(plan.statements.get(module, ()))]
    head = (f'"""Generated from {module} by `p53hcc export-bundle` (p53hcc {version}).\n\n'
            'Do not edit: the p53hcc repository holds the one copy of this code."""\n')
    imports = "\n".join(_import_lines(src, plan.imported.get(module, set())))
    names = f"\n\n__all__ = {sorted(exports)!r}" if exports else ""
    text = "\n\n\n".join([head + "from __future__ import annotations\n\n" + imports + names, *body]) + "\n"
    for pattern, repl in NOQA.items():
        text = pattern.sub(repl, text)
    return text


def _literal(token: str) -> tuple[str, str, str] | None:
    """``(prefix, quote, body)`` of a one-line string literal token (None for triple-quoted ones)."""
    m = re.fullmatch(r"([rRfFbBuU]*)(['\"])(.*)\2", token, re.DOTALL)
    if m is None or token.endswith(('"""', "'''")) or "\n" in token:
        return None
    return m.group(1).lower(), m.group(2), m.group(3)


def _merged(a: tuple[str, str, str], b: tuple[str, str, str]) -> str | None:
    """Two adjacent literals as one (None where prefixes or quotes differ in a way that needs care)."""
    (pa, qa, ba), (pb, qb, bb) = a, b
    if qa != qb or ("r" in pa) != ("r" in pb) or ("b" in pa) != ("b" in pb):
        return None
    if ("f" in pa) != ("f" in pb):  # the plain part's braces become literal braces of the f-string
        ba, bb = (ba, bb.replace("{", "{{").replace("}", "}}")) if "f" in pa else (
            ba.replace("{", "{{").replace("}", "}}"), bb)
    prefix = "".join(sorted(set(pa + pb) - {"u"}))
    return f"{prefix}{qa}{ba}{bb}{qa}"


def join_adjacent_strings(text: str) -> str:
    """Adjacent string literals on one line merged into one (``"a " "b"`` -> ``"a b"``): black joins a wrapped
    message onto one line and leaves the implicit concatenation, which the zoo's flake8 (bugbear B914) refuses."""
    import io
    import tokenize

    tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)]
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    edits = []
    i = 0
    while i < len(tokens):
        run = [tokens[i]] if tokens[i].type == tokenize.STRING else []
        while run and i + 1 < len(tokens) and tokens[i + 1].type == tokenize.STRING and \
                tokens[i + 1].start[0] == run[-1].end[0] == run[0].start[0]:
            run.append(tokens[i + 1])
            i += 1
        i += 1
        if len(run) < 2 or any(_literal(t.string) is None for t in run):
            continue
        merged = _literal(run[0].string)
        text_out = run[0].string
        for t in run[1:]:
            joined = _merged(merged, _literal(t.string))
            if joined is None:
                break
            text_out, merged = joined, _literal(joined)
        else:
            start = offsets[run[0].start[0] - 1] + run[0].start[1]
            end = offsets[run[-1].end[0] - 1] + run[-1].end[1]
            edits.append((start, end, text_out))
    for start, end, new in reversed(edits):
        text = text[:start] + new + text[end:]
    return text


def format_code(text: str) -> str:
    """``text`` formatted like the model zoo's code (isort, black at 120 columns), when the tools are installed."""
    try:
        import black
        import isort
    except ImportError:
        log.warning("black/isort are not installed (pip install 'p53hcc[zoo]'): scripts/ is not formatted as "
                    "the model zoo's code-format check requires")
        return text
    text = isort.code(text, config=isort.Config(profile="black", line_length=LINE_LENGTH,
                                                known_first_party=["models"], known_third_party=[PACKAGE]))
    mode = black.Mode(line_length=LINE_LENGTH, magic_trailing_comma=False,
                      target_versions={black.TargetVersion.PY39})
    return join_adjacent_strings(black.format_str(text, mode=mode))


def generate_scripts(names: Mapping[str, Iterable[str]] | Iterable[str], version: str) -> dict[str, str]:
    """``{relative path: text}`` of the ``scripts/`` package that defines ``names``: ``{p53hcc module: names}``
    (a plain iterable: names of :data:`ROOT`).

    Each requested module's file exposes its requested names as ``__all__``, so configs that used
    ``p53hcc.tools.dl.components.X`` work with ``scripts.components.X``; a network module (``scripts/nets.py``,
    ``scripts/ffnet.py``) holds only what building the network needs.
    """
    roots = {k: sorted(set(v)) for k, v in names.items()} if isinstance(names, Mapping) else {ROOT: sorted(set(names))}
    plan = _Plan()
    for root, wanted in roots.items():
        for name in wanted:
            _resolve(plan, root, name)
        plan.imported.setdefault(root, set())
    files = {f"{PACKAGE}/__init__.py": f'"""This bundle\'s code, generated by `p53hcc export-bundle` (p53hcc {version})."""\n'}
    for module in sorted(set(plan.statements) | set(plan.imported)):
        path = script_module(module).replace(".", "/") + ".py"
        files[path] = format_code(module_text(module, plan, version, set(roots.get(module, ()))))
    return files


def referenced_names(config_text: str, module: str = ROOT) -> set[str]:
    """Names of ``module`` a config uses, as ``p53.<name>`` (its import alias) or ``"<module>.<name>"`` targets."""
    names = set(re.findall(rf"{re.escape(module)}\.(\w+)", config_text))
    names |= set(re.findall(r"\bp53\.(\w+)", config_text))
    return names
