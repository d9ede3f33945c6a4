"""The external-evaluation page of a frozen model (``p53hcc evaluate``): external vs the study's own AUCs."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from p53hcc.fusion.report.labels import model_label
from p53hcc.fusion.report.page import html_page, html_table
from p53hcc.tools.io import atomic_write_text


def warnings_section(pred: pd.DataFrame) -> str:
    """The input checks' warnings of the evaluated patients (predict's ``warnings`` column): a table of the
    patients with any, or a line saying there were none."""
    text = pred["warnings"].fillna("").astype(str).str.strip()
    flagged = pred.loc[text != "", ["patient_id", "probability"]].assign(warnings=text[text != ""])
    head = "<h2>Warnings of the input checks</h2>"
    if flagged.empty:
        return head + f'<p class="sub">No warnings: none of the {len(pred)} patients was flagged.</p>'
    rows = flagged.rename(columns={"patient_id": "Patient", "probability": "Probability", "warnings": "Warnings"})
    return (head + f'<p class="sub">{len(flagged)} of {len(pred)} patients flagged by the checks (phase order, mask '
            "extent, clinical and image-derived values outside the training cohort's range): they were scored, "
            "and their predictions deserve a second look (predictions.csv, column warnings).</p>"
            + html_table(rows.sort_values("Patient")))


def write_evaluation_report(dest: str | Path, metrics: pd.DataFrame, study_metrics: pd.DataFrame | None,
                            dl_model: str | None, model_dir: str | Path, predictions: pd.DataFrame | None = None
                            ) -> Path:
    """External evaluation page: external vs the study's own training/validation AUC with CIs, the AUC drop,
    calibration and Brier score, per component and for the combined model.

    Args:
        dest: the HTML file to write.
        metrics: tidy metrics of the external cohort (``model`` in combined, clinical, radiomics, dl).
        study_metrics: the study's own ``metrics.csv`` (None: internal columns left out).
        dl_model: the study's name of the frozen DL model (e.g. ``ff_resnet18``); None when the study chose none.
        model_dir: the frozen model folder (named on the page).
        predictions: predict's ``predictions.csv`` (``patient_id, probability, warnings``): its warnings are
            listed (:func:`warnings_section`); None leaves the section out.
    """
    rows = []
    for comp in ("combined", "clinical", "radiomics", "dl"):
        if comp == "dl" and not dl_model:
            continue
        study_name = comp  # the study's metrics.csv holds the chosen DL model's nested scores as "dl"
        ext = metrics[(metrics["model"] == comp) & (metrics["metric"] == "auc")]
        label = f"{model_label('dl')} ({model_label(dl_model)})" if comp == "dl" else model_label(comp)
        row, internal = {"Model": label}, {}
        if study_metrics is not None:
            for sp in ("train", "validation"):
                s = study_metrics[(study_metrics["model"] == study_name) & (study_metrics["split"] == sp)
                                  & (study_metrics["metric"] == "auc")]
                if len(s):
                    r = s.iloc[0]
                    internal[sp] = float(r.estimate)
                    row[f"AUC {sp}"] = f"{r.estimate:.3f} ({r.ci_low:.3f}–{r.ci_high:.3f})"
        if len(ext):
            r = ext.iloc[0]
            row["AUC external"] = f"{r.estimate:.3f} ({r.ci_low:.3f}–{r.ci_high:.3f})"
            if "validation" in internal:
                row["AUC drop (validation − external)"] = f"{internal['validation'] - r.estimate:+.3f}"
        for key in ("calibration_intercept", "calibration_slope", "brier"):
            v = metrics[(metrics["model"] == comp) & (metrics["metric"] == key)]
            row[key.replace("_", " ")] = f"{v['estimate'].iloc[0]:.3f}" if len(v) else ""
        rows.append(row)
    body = (f'<p class="sub">Frozen model <code>{html.escape(str(model_dir))}</code>. AUC with DeLong 95% CI; '
            "calibration-in-the-large (0 ideal) and slope (1 ideal) by logistic recalibration; net benefit in "
            "net_benefit.csv. AUC train is the study's out-of-fold estimate, AUC validation its internal validation "
            "cohort; the drop is internal validation minus external AUC (positive: worse on the external cohort; "
            "compare it with the width of the CIs).</p>" + html_table(pd.DataFrame(rows))
            + (warnings_section(predictions) if predictions is not None else ""))
    return atomic_write_text(dest, html_page("External evaluation of the frozen model", body))
