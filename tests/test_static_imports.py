"""Static analysis follows every project import of a checkout: pyright, run over the package, its tests, scripts,
benchmarks and the Deploy app, resolves every ``p53hcc.*`` (and ``tests.*``) import and every name imported from
one, through the committed ``p53hcc/`` folder of links to the top-level folders, without the editable install's
import hook (which static tools do not run)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # pyright over ~160 files: a minute or two on 2 cores
PROJECT = ("p53hcc", "tests")


def _pyright() -> list[str]:
    exe = Path(sys.executable).with_name("pyright")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pyright")
    assert found, "pyright is not installed (it is in the test extra: pip install -e '.[test]')"
    return [found]


def _run(config: dict, tmp_path: Path, files: list[str] = ()) -> dict:
    """pyright's output (``summary``, ``generalDiagnostics``) with the repository's settings plus ``config`` and the
    repository as the import root (the config lives in ``tmp_path``; pyright wants paths relative to it)."""
    settings = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pyright"]

    def rel(p: str) -> str:
        return p if p.startswith("**") else os.path.relpath(REPO / p, tmp_path)

    cfg = {**settings, "include": [rel(p) for p in settings["include"]], "exclude": [rel(p) for p in settings["exclude"]],
           "executionEnvironments": [{"root": rel(".")}], **config}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(cfg))
    res = subprocess.run([*_pyright(), "--project", str(tmp_path), "--pythonpath", sys.executable, "--outputjson",
                          *files], check=False, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert res.stdout.startswith("{"), res.stdout[-2000:] + res.stderr[-2000:]
    return json.loads(res.stdout)


def unresolved(diagnostics: list[dict]) -> list[str]:
    """Project imports pyright cannot follow: a module it cannot find, or a name the module does not define."""
    out = []
    for d in diagnostics:
        line = Path(d["file"]).read_text(encoding="utf-8").splitlines()[d["range"]["start"]["line"]]
        words = line.replace("(", " ").split()
        module = words[words.index("from") + 1] if "from" in words else words[words.index("import") + 1] \
            if "import" in words else ""
        missing = d.get("rule") == "reportMissingImports" or "is unknown import symbol" in d["message"]
        if missing and module.split(".")[0] in PROJECT:
            out.append(f"{Path(d['file']).relative_to(REPO)}:{d['range']['start']['line'] + 1}: {d['message']}")
    return out


def test_every_project_import_resolves(tmp_path):
    out = _run({"reportAttributeAccessIssue": "error"}, tmp_path)
    assert out["summary"]["filesAnalyzed"] > 150  # every module, test, script and benchmark
    assert unresolved(out["generalDiagnostics"]) == []


def test_an_unresolved_import_is_reported(tmp_path):
    """The check can fail: a moved module and a renamed function are both caught (here in a scratch file)."""
    probe = REPO / "scripts" / f"_probe_{tmp_path.name}.py"  # inside the checkout, as a real module would be
    probe.write_text("from p53hcc.fusion.crossfit import crossfit_scores\n"
                     "from p53hcc.fusion.models.oof import crossfit_score\n"
                     "from p53hcc.fusion.models.oof import crossfit_scores\n")
    try:
        found = unresolved(_run({"reportAttributeAccessIssue": "error"}, tmp_path, [str(probe)])["generalDiagnostics"])
    finally:
        probe.unlink()
    assert [f.split(": ", 1)[0].rsplit(":", 1)[1] for f in found] == ["1", "2"], found
