"""The report's page layout and its "Methods actually run", rendered through jinja2 templates from what ran.

The templates (``fusion/report/templates/*.html.j2``) hold the page layout and the wording; this module gathers the
values they show, all of them read from the study folder: the resolved ``study.yaml``, the preprocessing
parameters the preprocess stage used (``preprocessed/params.json``), the PyRadiomics version of the extraction
(``radiomics_provenance.parquet``) and the training recipe the DL engine instantiated
(``dl/<arm>/<net>/full[/<phase>]/recipe.json``: optimizer, loss, schedule, augmentation, precision). A value a
run did not record is shown as not recorded, never filled in from a default.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from p53hcc.tools.io import read_table
from p53hcc.tools.schema import PHASES

#: Optimizer settings worth a sentence (torch optimizers' ``defaults`` hold many flags of no interest).
OPTIMIZER_KEYS = ("lr", "weight_decay", "momentum", "betas", "eps", "nesterov", "dampening", "alpha")


@functools.cache
def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(loader=PackageLoader("p53hcc.fusion.report", "templates"), autoescape=select_autoescape(["j2"]),
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context: Any) -> str:
    """Render one of the package's templates (HTML-escaped values; :func:`markup` for HTML built here)."""
    return _environment().get_template(template).render(**context)


def markup(html: str | None):
    """HTML made by the report's own code, passed to a template unescaped."""
    from markupsafe import Markup

    return None if html is None else Markup(html)


def page(title: str, css: str, sections: list[dict] | None = None, subtitle: str | None = None,
         body: str = "") -> str:
    """A self-contained HTML page: title, optional subtitle and navigation, ``body`` and ``sections``
    (``{"name", "subtitle", "html"}``; their HTML is the report's own)."""
    parts = [{**s, "html": markup(s["html"])} for s in (sections or [])]
    return render("page.html.j2", title=title, css=markup(css), subtitle=subtitle, sections=parts,
                  body=markup(body))


def _json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pyradiomics_version(study_dir: Path) -> str | None:
    path = study_dir / "radiomics_provenance.parquet"
    if not path.is_file():
        return None
    versions = read_table(path).get("pyradiomics_version")
    return None if versions is None else ", ".join(sorted({str(v) for v in versions.dropna()})) or None


def training_recipe(study_dir: Path, arm: str, net: str) -> dict | None:
    """The recipe the full-cohort network of ``arm``/``net`` trained with (FF: its AP network), or None."""
    unit = study_dir / "dl" / arm / net / "full"
    return _json_or_none(unit / "recipe.json" if arm == "mc" else unit / PHASES[0] / "recipe.json")


def methods_context(study_dir: Path, cfg: dict, multicentre: str | None = None) -> dict[str, Any]:
    """Everything the methods template shows, read from the study folder (see the module docstring)."""
    chosen = (_json_or_none(study_dir / "selection.json") or {}).get("chosen") or {}
    candidates = ([(chosen["arm"], chosen["net"])] if chosen.get("arm") else []) + [
        (a, n) for a in cfg["dl"]["arms"] for n in cfg["dl"]["nets"]]
    recipe, source = None, ""
    for arm, net in candidates:
        recipe = training_recipe(study_dir, arm, net)
        if recipe:
            source = f"{arm.upper()} {net}, full-cohort network"
            break
    return {"cfg": cfg, "preset": cfg["preprocess"]["params"],
            "chain": _json_or_none(study_dir / "preprocessed" / "params.json"),
            "pyradiomics": _pyradiomics_version(study_dir), "recipe": recipe, "recipe_source": source,
            "optimizer_keys": OPTIMIZER_KEYS, "multicentre": markup(multicentre),
            "study_yaml": yaml.safe_dump(cfg, sort_keys=False)}


def methods_html(study_dir: str | Path, cfg: dict, multicentre: str | None = None) -> str:
    """The "Methods actually run" section of ``study_dir``'s report."""
    return render("methods.html.j2", **methods_context(Path(study_dir), cfg, multicentre))
