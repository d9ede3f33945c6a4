"""The study report: ONE self-contained ``report.html`` (inline CSS, figures as base64 PNG, no external assets).

Reads only the study folder's tidy outputs (``study.yaml``, ``scores.parquet``, ``metrics.csv``, ``delong.csv``,
``selection.json``, ``fusion/radiomics_lasso.csv``, ``dl/ff/<net>/lasso.json``, ``figures/*.png``, Grad-CAM
folders (:mod:`p53hcc.fusion.report.gradcam_gallery`), the cohort's ``truth.csv``) and shows every table and figure of the
paper. A piece that is missing (stage not run, module not available) becomes a visible "not available: reason" box,
never a crash. Tables are also written as CSV under ``tables/``.
"""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from p53hcc.fusion.report import tables as ft
from p53hcc.fusion.report.gradcam_gallery import gallery_html, gradcam_files
from p53hcc.fusion.report.labels import model_label
from p53hcc.fusion.report.methods import methods_html, page
from p53hcc.fusion.report.multicentre import methods_note, report_sections
from p53hcc.tools.io import atomic_write_table, atomic_write_text, read_table
from p53hcc.tools.schema import NET_LABELS, SPLIT_LABELS

#: Section headings, in order (tests check that each one is present).
SECTIONS = (
    "Methods actually run", "Patients left out", "Final DL model choice", "Table 1", "Table 2", "Table 3",
    "Table 4", "Table 5", "Pairwise DeLong tests", "ROC curves", "Calibration", "Decision curves", "Nomogram",
    "Confusion matrices", "DL learning curves", "Grad-CAM gallery", "LASSO-selected radiomics features",
    "Files and provenance",
)
CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;border-bottom:2px solid #d8dde3;padding-bottom:4px;margin-top:36px}
h3{font-size:16px;margin:18px 0 6px}.sub{color:#59636e;margin:0 0 16px}
table{border-collapse:collapse;font-size:13px;margin:8px 0 4px}th,td{border:1px solid #d0d6dc;padding:4px 8px;
text-align:right}th{background:#eef1f4}td:first-child,th:first-child{text-align:left}
tr.group td{background:#f7f8fa;font-weight:600}.note{color:#59636e;font-size:12px;max-width:1000px}
.na{border:1px dashed #c0392b;background:#fdf2f1;color:#8e2a1f;padding:8px 12px;margin:8px 0;border-radius:4px}
.warn{border-left:4px solid #e67e22;background:#fff6ec;padding:8px 12px;margin:8px 0}
.ok{border-left:4px solid #27ae60;background:#eefaf2;padding:8px 12px;margin:8px 0}
figure{display:inline-block;margin:6px 10px 10px 0;vertical-align:top}figure img{max-width:560px;border:1px solid #e1e5e9}
figcaption{font-size:12px;color:#59636e;max-width:560px}figure.wide img{max-width:1130px}.gallery img{max-width:260px}
nav{font-size:13px;columns:3;margin:8px 0 12px}nav a{color:#1f5f99;text-decoration:none;display:block}
code{background:#f0f2f4;padding:1px 4px;border-radius:3px}
"""


# ------------------------------------------------------------------------------------------------- loading
def _load(path: Path, reader: Callable[[Path], Any]) -> tuple[Any, str | None]:
    """(value, None) or (None, reason) for an optional study output."""
    if not path.exists():
        return None, f"{path.name} not found (its stage has not run)"
    try:
        return reader(path), None
    except Exception as err:  # noqa: BLE001 - a broken optional input becomes a visible note
        return None, f"{path.name} could not be read: {err}"


def not_available(reason: str) -> str:
    """A visible "not available: reason" box (a missing piece of a report never crashes it)."""
    return f'<div class="na"><b>Not available:</b> {html.escape(reason)}</div>'


def image_html(path: Path, caption: str = "") -> str:
    """A PNG inlined as a figure (base64: the page stays self-contained), wide figures marked for full width."""
    raw = path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")  # PNG IHDR
    wide = ' class="wide"' if raw[:4] == b"\x89PNG" and width > 1.6 * max(height, 1) else ""
    return f'<figure{wide}><img alt="{html.escape(caption or path.stem)}" src="data:image/png;base64,{data}">{cap}</figure>'


def html_table(df: pd.DataFrame, group_col: str | None = None) -> str:
    """A DataFrame as an HTML table; with ``group_col``, repeated values are blanked (paper-style rows)."""
    cols = [c for c in df.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body, last = [], None
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = "" if c == group_col and r[c] == last else r[c]
            cells.append(f"<td>{html.escape(_fmt(v))}</td>")
        last = r[group_col] if group_col else None
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}"
    return str(v)


# ------------------------------------------------------------------------------------------ metric tables
def _ci(row) -> str:
    return f"{row['estimate']:.3f} ({row['ci_low']:.3f}–{row['ci_high']:.3f})" if np.isfinite(row["ci_low"]) else (
        f"{row['estimate']:.3f} (CI not estimable)")


def paper_metric_table(metrics: pd.DataFrame, models: list[str], labels: dict[str, str] | None = None,
                extra: dict[str, dict[str, Any]] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Paper-style metric table (Tables 3-5): one row per model x cohort with accuracy, AUC (95% CI),
    sensitivity, specificity, and on a synthetic cohort the population reference of the same patients.

    A metric that could not be computed is blank with its reason in the "Note" column (a constant model, a
    one-class cohort); training rows of an apparent (not nested) choice or stacking are marked in the note.

    Args:
        metrics: tidy ``model, split, metric, estimate, ci_low, ci_high, note``.
        models: models in display order.
        labels: display name per model (default: paper-style names).
        extra: additional columns per model (e.g. LASSO-retained feature counts), shown on every row.
        level: the confidence level of the CIs in ``metrics`` (``statistics.ci_level``), for the headers.
    """
    ci = f"{100 * level:g}% CI"
    metrics = metrics.assign(note=metrics["note"].fillna("") if "note" in metrics else "")
    m = metrics.set_index(["model", "split", "metric"])
    has_ref = (metrics["metric"] == "reference_auc").any()
    splits = [s for s in ("train", "validation", "external") if s in set(metrics["split"])]
    rows = []

    def get(model: str, sp: str, metric: str) -> float:
        return float(m.loc[(model, sp, metric), "estimate"]) if (model, sp, metric) in m.index else np.nan

    for model in models:
        for sp in splits:
            if (model, sp, "auc") not in m.index:
                continue
            auc, n, events = m.loc[(model, sp, "auc")], get(model, sp, "n"), get(model, sp, "n_events")
            one_class = np.isfinite(n) and events in (0, n)
            auc_text = (_ci(auc) if np.isfinite(auc["estimate"]) else  # a cohort with one class: kept, never dropped
                        f"not computable: one class ({events:.0f} of {n:.0f} P53-positive)" if one_class else "")
            row = {"Model name": (labels or {}).get(model, model_label(model)), "Cohort": SPLIT_LABELS.get(sp, sp),
                   "Accuracy": get(model, sp, "accuracy"), f"AUC ({ci})": auc_text,
                   "Sensitivity": get(model, sp, "sensitivity"), "Specificity": get(model, sp, "specificity")}
            if has_ref:
                ref = m.loc[(model, sp, "reference_auc")] if (model, sp, "reference_auc") in m.index else None
                row[f"Population reference AUC ({ci})"] = "" if ref is None else _ci(ref)
            row.update((extra or {}).get(model, {}))
            row["Note"] = auc["note"]
            rows.append(row)
    return pd.DataFrame(rows)


def _ff_lasso_counts(study_dir: Path) -> dict[str, dict[str, Any]]:
    """LASSO-retained FF feature counts per model from ``dl/ff/<net>/lasso.json`` (full-cohort head)."""
    out = {}
    for path in sorted(study_dir.glob("dl/ff/*/lasso.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        n = None
        if isinstance(info, dict):
            for key in ("n_selected", "full", "n_retained"):
                v = info.get(key)
                if isinstance(v, dict):
                    v = v.get("full")
                if isinstance(v, (int, float)):
                    n = int(v)
                    break
            if n is None and isinstance(info.get("selected"), list):
                n = len(info["selected"])
        out[f"ff_{path.parent.name}"] = {"LASSO-retained features": n}
    return out


# ------------------------------------------------------------------------------------------------ sections
class _Report:
    """Collects sections; each builder returns HTML and may write a CSV under tables/."""

    def __init__(self, study_dir: Path, cohort: pd.DataFrame | None):
        self.dir, self.cohort = study_dir, cohort
        self.cfg, self.cfg_err = _load(study_dir / "study.yaml", lambda p: yaml.safe_load(p.read_text()))
        self.cfg = self.cfg or {}
        self.metrics, self.metrics_err = _load(study_dir / "metrics.csv", read_table)
        self.selection, self.selection_err = _load(study_dir / "selection.json", lambda p: json.loads(p.read_text()))
        self.figures = study_dir / "figures"

    def table_csv(self, name: str, df: pd.DataFrame) -> None:
        atomic_write_table(self.dir / "tables" / f"{name}.csv", df)

    def models(self, prefix: str) -> list[str]:
        nets = list(self.cfg.get("dl", {}).get("nets") or [])
        present = sorted({m for m in self.metrics["model"] if m.startswith(prefix + "_")})
        ordered = [f"{prefix}_{n}" for n in nets if f"{prefix}_{n}" in present]
        return ordered + [m for m in present if m not in ordered]

    def chosen_dl(self) -> str | None:
        return (self.selection or {}).get("chosen", {}).get("model")

    # --- sections
    def methods(self) -> str:
        if self.cfg_err:
            return not_available(self.cfg_err)
        return methods_html(self.dir, self.cfg, methods_note(self.cfg))  # leave-one-scanner-out, harmonisation

    def choice(self) -> str:
        if self.selection_err:
            return not_available(self.selection_err)
        s = self.selection
        rows = [{"Arm": a.upper(), "Best network": NET_LABELS.get(v["net"], v["net"]), "Training OOF AUC": v["auc"]}
                for a, v in s.get("best_per_arm", {}).items()]
        ch = s.get("chosen")
        if not ch:
            return not_available("no DL model could be chosen (no arm trained, or every network degenerate)") + self._excluded()
        folds = s.get("fold_choices", {})
        nested = s.get("nesting") == "nested"
        per_fold = ", ".join(f"fold {k}: {model_label(v) if v else 'none'}" for k, v in sorted(folds.items()))
        how = (f"Nested: within each training fold the choice was made again on the other folds only ({per_fold}), "
               "so every training patient's DL and combined scores come from a choice and a stacking that never "
               "saw the patient." if nested else
               "Apparent: the choice and the combined model's weights were learned on the same out-of-fold scores "
               "they are reported with, so their training-cohort numbers are optimistic.")
        out = (f'<div class="ok"><b>Chosen DL model: {html.escape(model_label(ch["model"]))}</b> '
               f'(training out-of-fold AUC {ch["auc"]:.3f}), used for the validation cohort and the frozen model.'
               f'<br>Rule: {html.escape(s.get("rule", ""))}.<br>{html.escape(how)}<br>Combined model inputs: '
               f'{html.escape(", ".join(s.get("combined_inputs", [])))}; weights: '
               f'{html.escape(str(s.get("stack_weights", "")))}.</div>' + html_table(pd.DataFrame(rows)))
        out += self._excluded()
        paper = _load(self.dir / "selection_paper.json", lambda p: json.loads(p.read_text()))[0]
        if paper:
            pc = paper["chosen"]
            out += (f'<div class="warn"><b>Paper\'s practice (optimistic):</b> choosing by validation AUC would pick '
                    f'{html.escape(model_label(pc["model"]))} (validation AUC {pc["auc"]:.3f}). This reuses the '
                    "validation cohort for model choice, so its validation metrics are biased upwards; it is "
                    "shown for comparison only.</div>")
        return out

    def dropped(self) -> str:
        """Every patient a stage could not process (``dropped.csv``), with the stage and the reason."""
        if not (self.dir / "dropped.csv").exists():
            return '<div class="ok">Every patient of the cohort was analysed: no stage dropped anybody.</div>'
        df = read_table(self.dir / "dropped.csv").fillna("")
        return (f'<div class="warn">{df["patient_id"].nunique()} patient(s) left out of every model and table '
                "(<code>on_failure: record</code>).</div>" + html_table(df, group_col="patient_id"))

    def _excluded(self) -> str:
        excluded = (self.selection or {}).get("excluded") or {}
        if not excluded:
            return ""
        items = "".join(f"<li>{html.escape(model_label(m))}: {html.escape(r)}</li>" for m, r in sorted(excluded.items()))
        return (f'<div class="warn"><b>Degenerate models, left out of the choice and the stacking:</b>'
                f"<ul>{items}</ul></div>")

    def table1(self) -> str:
        return self._clinical_table("table1")

    def table2(self) -> str:
        return self._clinical_table("table2")

    def _clinical_table(self, which: str) -> str:
        if self.cohort is None:
            return not_available("no cohort table was given to the report")
        try:
            df = self.cohort[self.cohort["split"].isin(["train", "validation"])]
            if which == "table1":
                tidy = ft.table1(df)
                table = ft.render_table1(tidy)
            else:
                tidy = ft.table2(df[df["split"] == "train"])
                table = ft.render_table2(tidy)
        except Exception as err:  # noqa: BLE001 - module missing or failing: say so, keep the report
            return not_available(f"{which} could not be built: {type(err).__name__}: {err}")
        self.table_csv(f"{which}_tidy", tidy)
        self.table_csv(which, table)
        note = ("Training (TC) and validation (VC) cohorts by P53 status; tests as stated in p53hcc.fusion.report.tables."
                if which == "table1" else "Training cohort; unpenalised logistic regression, Wald 95% CI.")
        return html_table(table) + f'<p class="note">{note}</p>'

    def metric_table(self, name: str, models: list[str], note: str, extra=None, labels=None) -> str:
        if self.metrics_err:
            return not_available(self.metrics_err)
        if not models:
            return not_available(f"no models for {name} in metrics.csv (stage not run)")
        level = float(self.cfg.get("statistics", {}).get("ci_level", 0.95))
        table = paper_metric_table(self.metrics, models, labels=labels, extra=extra, level=level)
        self.table_csv(name, table)
        return html_table(table, group_col="Model name") + f'<p class="note">{note}</p>'

    def table5_models(self) -> tuple[list[str], dict[str, str]]:
        dl = self.chosen_dl()
        models = [m for m in ("clinical", "radiomics", "dl", "combined") if m in set(self.metrics["model"])]
        return models, ({"dl": f"DL model ({model_label(dl)})"} if dl else {})

    def delong(self) -> str:
        df, err = _load(self.dir / "delong.csv", read_table)
        if err:
            return not_available(err)
        out = []
        for sp, g in df.groupby("split", sort=False):
            g = g.assign(model_a=g["model_a"].map(model_label), model_b=g["model_b"].map(model_label))
            out.append(f"<h3>{SPLIT_LABELS.get(sp, sp)}</h3>" + html_table(
                g[["model_a", "model_b", "auc_a", "auc_b", "z", "p_value"]].rename(columns={
                    "model_a": "Model A", "model_b": "Model B", "auc_a": "AUC A", "auc_b": "AUC B",
                    "p_value": "P value"})))
        self.table_csv("delong", df)
        return "".join(out) + '<p class="note">Two-sided paired DeLong tests; p-values not adjusted for multiplicity.</p>'

    def figures_like(self, pattern: str, what: str) -> str:
        files = sorted(self.figures.glob(pattern))
        if not files:
            missing = _load(self.figures / "missing.json", lambda p: json.loads(p.read_text()))[0] or {}
            reason = missing.get(what) or "figures stage has not produced it"
            return not_available(f"{what}: {reason}")
        caps = _load(self.figures / "captions.json", lambda p: json.loads(p.read_text()))[0] or {}
        order = {name: i for i, name in enumerate(caps)}  # make_figures' logical order (cohort, then MC/FF/final)
        files.sort(key=lambda f: (order.get(f.name, len(order)), f.name))
        return "".join(image_html(f, caps.get(f.name, f.stem.replace("_", " "))) for f in files)

    def gradcam(self) -> str:
        files = gradcam_files(self.dir)
        if not files:
            return not_available("no Grad-CAM images under figures/gradcam/ (gradcam stage not run)")
        return gallery_html(files, image_html)

    def lasso(self) -> str:
        df, err = _load(self.dir / "fusion" / "radiomics_lasso.csv", read_table)
        if err:
            return not_available(err)
        self.table_csv("radiomics_lasso", df)
        return html_table(df) + f'<p class="note">{len(df)} features retained by LASSO (fitted on the training cohort).</p>'

    def provenance(self) -> str:
        files = sorted(p.relative_to(self.dir).as_posix() for p in self.dir.rglob("*")
                       if p.is_file() and not p.name.startswith(".") and p.suffix in (".csv", ".parquet", ".json", ".yaml"))
        markers = sorted(p.stem for p in (self.dir / ".stages").glob("*.done")) if (self.dir / ".stages").exists() else []
        return (f"<p>Finished stages: {', '.join(markers) or 'none recorded'}.</p><p>Software: {_versions()}.</p>"
                "<details><summary>Tidy outputs</summary><ul>" + "".join(f"<li><code>{html.escape(f)}</code></li>"
                                                                         for f in files[:200]) + "</ul></details>")


def _versions() -> str:
    """Versions of the packages that produced the numbers (read from installed metadata, nothing imported)."""
    import platform
    from importlib import metadata

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("p53hcc", "numpy", "pandas", "scikit-learn", "statsmodels", "torch", "monai", "pyradiomics", "itk"):
        try:
            parts.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            continue
    return html.escape(", ".join(parts))


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page with the report's style (``body``: the report's own HTML)."""
    return page(title, CSS, body=body)


def write_report(study_dir: str | Path, cohort: pd.DataFrame | None = None) -> Path:
    """Build ``study_dir/report.html`` (self-contained) and ``study_dir/tables/*.csv``; returns the HTML path.

    Args:
        study_dir: the study folder (its tidy outputs).
        cohort: the cohort table (raw cohort.csv columns, ``split``, ``p53``) for Tables 1 and 2; without it
            those tables say why they are missing.
    """
    study_dir = Path(study_dir)
    r = _Report(study_dir, cohort)
    bayes = ("Population reference (synthetic cohort): AUC, on the same patients, of the true posterior of exactly "
             "the inputs the model has (clinical model: the clinical table; radiomics and DL: what the images "
             "carry; combined: everything known before surgery): the best that model can do in the population "
             "(on a finite cohort it can be exceeded by chance, within the CIs).")
    common = ("Threshold: Youden index on training out-of-fold scores. TC: training cohort, cross-fitted (mean of "
              "the per-fold AUCs, Nadeau-Bengio corrected CI); VC: validation (DeLong CI).")

    def t3() -> str:
        return r.metric_table("table3", r.models("mc"), f"MC arm (AP|PVP|DP stacked as channels). {common} {bayes}")

    def t4() -> str:
        return r.metric_table("table4", r.models("ff"), f"FF arm (per-phase CNN features → PCA → LASSO → LR). "
                              f"{common} {bayes}", extra=_ff_lasso_counts(study_dir))

    def t5() -> str:
        models, labels = r.table5_models()
        return r.metric_table("table5", models, f"{common} {bayes}", labels=labels)

    builders: dict[str, Callable[[], str]] = {
        "Methods actually run": r.methods, "Patients left out": r.dropped, "Final DL model choice": r.choice,
        "Table 1": r.table1,
        "Table 2": r.table2, "Table 3": t3, "Table 4": t4, "Table 5": t5, "Pairwise DeLong tests": r.delong,
        "ROC curves": lambda: r.figures_like("roc*.png", "roc"),
        "Calibration": lambda: r.figures_like("calibration*.png", "calibration"),
        "Decision curves": lambda: r.figures_like("dca*.png", "dca"),
        "Nomogram": lambda: r.figures_like("nomogram*.png", "nomogram"),
        "Confusion matrices": lambda: r.figures_like("confusion*.png", "confusion"),
        "DL learning curves": lambda: r.figures_like("learning_*.png", "learning"),
        "Grad-CAM gallery": r.gradcam, "LASSO-selected radiomics features": r.lasso,
        "Files and provenance": r.provenance,
    }
    subtitles = {"Table 1": "Baseline characteristics by cohort and P53 status", "Table 2": "Univariable and "
                 "multivariable logistic regression (training cohort)",
                 "Table 3": "MC deep-learning arm: networks × cohorts",
                 "Table 4": "FF deep-learning arm: networks × cohorts, with LASSO-retained feature counts",
                 "Table 5": "Clinical, radiomics, DL and combined models"}
    extra = dict(report_sections(study_dir, cohort))  # multi-centre sections, only where they apply
    builders.update({name: (lambda body=body: body) for name, body in extra.items()})
    sections = []
    for name in [*SECTIONS, *extra]:
        try:
            body = builders[name]()
        except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
            body = not_available(f"{type(err).__name__}: {err}")
        sections.append({"name": name, "subtitle": subtitles.get(name), "html": body})
    subtitle = (f"Study folder {study_dir.name}. Clinical, radiomics and deep-learning arms fused by logistic "
                "regression; every number below comes from this run.")
    return atomic_write_text(study_dir / "report.html",
                             page("P53-mutated HCC from DCE-MRI: study report", CSS, sections, subtitle=subtitle))
