"""Multi-centre pieces of the study report: the leave-one-scanner-out table and the harmonisation record.

With ``validation: leave_one_scanner_out`` the folds of ``splits.json`` are the scanners (one fold per value of
the batch column), so a training patient's out-of-fold score comes from models fitted without any patient of its
scanner: the per-scanner AUC is how the study would do at that scanner as a new centre. Each fold is scored by one
fitted pipeline (the nested DL choice and combined model too), so every row gets DeLong's CI. A scanner whose
patients are all of one class has no AUC: NaN with the reason. These sections appear only when they apply.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.stats.auc import auc_ci
from p53hcc.tools.io import atomic_write_table, read_table

SCANNER_COLUMNS = ["scanner", "model", "n", "n_events", "auc", "ci_low", "ci_high", "note"]


def is_leave_one_scanner_out(splits: dict) -> bool:
    """Whether ``splits.json`` holds one fold per scanner."""
    return splits.get("validation") == "leave_one_scanner_out"


def scanner_auc_table(scores: pd.DataFrame, labels: pd.Series, splits: dict, alpha: float = 0.05) -> pd.DataFrame:
    """AUC (DeLong CI) of every model on each held-out scanner's training patients (leave-one-scanner-out).

    Args:
        scores: ``scores.parquet`` (``patient_id, model, fold, split, score``).
        labels: P53 label per patient (index ``patient_id``).
        splits: ``splits.json`` of a leave-one-scanner-out study (folds carry their ``group``).
        alpha: 1 - CI level.
    """
    y = pd.to_numeric(pd.Series(labels).set_axis(pd.Series(labels).index.astype(str)), errors="coerce")
    train = scores[scores["split"] == "train"].assign(patient_id=lambda d: d["patient_id"].astype(str))
    rows = []
    for f in splits["folds"]:
        held = train[train["fold"] == int(f["fold"])]
        for model, g in held.groupby("model", sort=False):
            yy = y.reindex(g["patient_id"]).to_numpy()
            known = ~np.isnan(yy)
            yy, s = yy[known].astype(int), g["score"].to_numpy(float)[known]
            row = {"scanner": f.get("group", str(f["fold"])), "model": model, "n": len(yy),
                   "n_events": int(yy.sum()), "auc": np.nan, "ci_low": np.nan, "ci_high": np.nan, "note": ""}
            if len(np.unique(yy)) < 2:
                row["note"] = "one class only at this scanner: AUC undefined"
            elif np.ptp(s) == 0:
                row["note"] = "constant scores at this scanner: ranks nobody"
            else:
                r = auc_ci(yy, s, alpha=alpha)
                row.update(auc=r.auc, ci_low=r.ci_low, ci_high=r.ci_high)
            rows.append(row)
    return pd.DataFrame(rows, columns=SCANNER_COLUMNS)


def methods_note(cfg: dict) -> str | None:
    """One sentence for "Methods actually run" on the multi-centre settings (None when neither is used)."""
    loso = cfg.get("validation") == "leave_one_scanner_out"
    harm = (cfg.get("fusion") or {}).get("harmonise", "none")
    if not loso and harm == "none":
        return None
    col = html.escape(str(cfg.get("batch_column") or "scanner"))
    parts = []
    if loso:
        parts.append(f"Leave-one-scanner-out validation: the training folds are the scanners of <code>{col}</code> "
                     "(the <code>folds</code> setting is not used), so each scanner's patients are scored by models "
                     "fitted without that scanner.")
    if harm != "none":
        parts.append(f"Scanner harmonisation: ComBat per <code>{col}</code> (neuroCombat, parametric empirical "
                     "Bayes) on the radiomics features and the FF deep features, fitted inside every training fold on "
                     "its training patients only; scanners a fit did not see get a shift and scale estimated "
                     "label-free from their own patients (docs/harmonisation.md).")
    return " ".join(parts)


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, na_rep="NaN", float_format=lambda v: f"{v:.3f}", border=0)


def report_sections(study_dir: Path, cohort: pd.DataFrame | None, alpha: float = 0.05) -> list[tuple[str, str]]:
    """``(heading, html)`` of the multi-centre sections that apply to this study (writes their CSV tables);
    ``cohort`` gives the labels (``patient_id``, ``p53``)."""
    study_dir = Path(study_dir)
    labels = None if cohort is None else cohort.set_index(cohort["patient_id"].astype(str))["p53"]
    out = []
    splits_path, scores_path = study_dir / "splits.json", study_dir / "scores.parquet"
    if splits_path.is_file() and scores_path.is_file() and labels is not None:
        splits = json.loads(splits_path.read_text())
        if is_leave_one_scanner_out(splits):
            table = scanner_auc_table(read_table(scores_path), labels, splits, alpha)
            atomic_write_table(study_dir / "tables" / "leave_one_scanner_out.csv", table)
            wide = table.assign(cell=[f"{a:.3f} ({lo:.3f}-{hi:.3f})" if np.isfinite(a) else f"NaN: {note}"
                                      for a, lo, hi, note in table[["auc", "ci_low", "ci_high", "note"]].to_numpy()])
            counts = table.drop_duplicates("scanner").set_index("scanner")[["n", "n_events"]]
            grid = wide.pivot(index="scanner", columns="model", values="cell").join(counts).reset_index()
            out.append(("Leave-one-scanner-out", _table_html(grid) + (
                '<p class="note">Each row: the training patients of one scanner, scored by models fitted without any '
                "patient of that scanner (the folds are the scanners); AUC with DeLong's CI. n: patients, n_events: "
                "P53-mutated. A scanner with one class has no AUC.</p>")))
    harm_path = study_dir / "fusion" / "harmonisation.json"
    if harm_path.is_file():
        rec = json.loads(harm_path.read_text())
        if rec.get("method", "none") != "none":
            counts = pd.DataFrame({"scanner": list(rec["n_per_batch"]),
                                   "training patients": list(rec["n_per_batch"].values())})
            counts["full-cohort ComBat"] = ["estimated" if s in rec["fitted_batches"] else "passed through (too few)"
                                            for s in counts["scanner"]]
            out.append(("Scanner harmonisation", _table_html(counts) + (
                f'<p class="note">ComBat per <code>{html.escape(str(rec.get("batch_column")))}</code>, fitted on '
                f"training patients only (every fold refits it on its own training patients); scanners with fewer "
                f"than {rec.get('min_batch')} patients are left unchanged. New scanners: "
                f"{html.escape(rec.get('new_batches', ''))}.</p>")))
    return out
