"""Choice of the final DL model (never on validation) and the study's DL score table.

``selection.json``: per arm the network with the highest **training-cohort out-of-fold AUC**, then MC vs FF by the
same number (ties: the earlier, simpler network in ``dl.nets``, then MC). The validation cohort is never looked at.
``selection_paper.json`` records the paper's practice (choice by validation AUC) for the report only, labelled
optimistic: it uses the validation cohort twice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_json, atomic_write_table, read_table
from p53hcc.tools.schema import SCORE_COLUMNS


def oof_auc_table(scores: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """AUC per (model, split) of a long score table; train rows are the out-of-fold scores."""
    from sklearn.metrics import roc_auc_score

    rows = []
    lab = pd.DataFrame({"patient_id": labels.index.astype(str), "y": pd.to_numeric(labels, errors="coerce").to_numpy()})
    df = scores.assign(patient_id=scores["patient_id"].astype(str)).merge(lab, on="patient_id").dropna(subset=["y"])
    for (model, split), g in df.groupby(["model", "split"], sort=True):
        auc = roc_auc_score(g["y"].astype(int), g["score"]) if g["y"].nunique() == 2 else np.nan
        rows.append({"model": model, "split": split, "auc": float(auc), "n": len(g)})
    return pd.DataFrame(rows)


def choose_dl_model(aucs: pd.DataFrame, arms: list[str], nets: list[str], split: str = "train") -> dict:
    """Best network per arm, then the better arm, by AUC on ``split`` (``train`` = out-of-fold: the honest rule).

    Ties go to the earlier network in ``nets`` (the simpler one in the default order) and to MC over FF, so the
    choice is deterministic. ``split="validation"`` reproduces the paper's (optimistic) practice.
    """
    auc = aucs[aucs["split"] == split].set_index("model")["auc"]
    best_per_arm = {}
    for arm in arms:
        cands = [(auc.get(f"{arm}_{net}", np.nan), -i, net) for i, net in enumerate(nets)]
        cands = [c for c in cands if not np.isnan(c[0])]
        if cands:
            best = max(cands)
            best_per_arm[arm] = {"net": best[2], "model": f"{arm}_{best[2]}", "auc": float(best[0])}
    if not best_per_arm:
        raise P53hccError(f"no DL scores with labels on the {split} split to choose a network from")
    arm = max(best_per_arm, key=lambda a: (best_per_arm[a]["auc"], -arms.index(a)))
    return {"split": split, "best_per_arm": best_per_arm,
            "chosen": {"arm": arm, "net": best_per_arm[arm]["net"], "model": best_per_arm[arm]["model"],
                       "auc": best_per_arm[arm]["auc"]}}


def write_selection(study_dir: Path, dl_scores: pd.DataFrame, labels: pd.Series, arms: list[str],
                    nets: list[str]) -> dict:
    """Write ``selection.json``: the choice of the final DL model by training-cohort out-of-fold AUC."""
    aucs = oof_auc_table(dl_scores, labels)
    sel = choose_dl_model(aucs, arms, nets, "train")
    sel["rule"] = ("best network per arm, then MC vs FF, by training-cohort out-of-fold AUC "
                   "(ties: simpler network, then MC); the validation cohort is not used for the choice")
    sel["aucs"] = aucs.to_dict("records")
    atomic_write_json(study_dir / "selection.json", sel)
    return sel


def write_paper_selection(study_dir: Path, dl_scores: pd.DataFrame, labels: pd.Series, arms: list[str],
                          nets: list[str], enabled: bool) -> dict | None:
    """``selection_paper.json``: the paper's choice by validation AUC (report only; never used for fitting).

    Removed when not ``enabled`` so a report never shows a stale one.
    """
    dest = study_dir / "selection_paper.json"
    if not enabled:
        dest.unlink(missing_ok=True)
        return None
    paper = choose_dl_model(oof_auc_table(dl_scores, labels), arms, nets, "validation")
    paper["rule"] = "paper's practice: choice by validation-cohort AUC (optimistic: validation used twice)"
    atomic_write_json(dest, paper)
    return paper


def collect_dl_scores(study_dir: Path, arms: list[str] | None = None, nets: list[str] | None = None) -> pd.DataFrame:
    """All ``dl/<arm>/<net>/scores.parquet`` in one long table, sorted by model and patient; only the study's
    ``arms`` x ``nets`` when given (a network of an earlier run with other settings is not mixed in)."""
    files = sorted(f for f in (study_dir / "dl").glob("*/*/scores.parquet")
                   if (arms is None or f.parent.parent.name in arms) and (nets is None or f.parent.name in nets))
    if not files:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    df = pd.concat([read_table(f) for f in files], ignore_index=True)
    df["patient_id"] = df["patient_id"].astype(str)
    return df.sort_values(["model", "patient_id"]).reset_index(drop=True)


def write_scores(study_dir: Path, frames: list[pd.DataFrame]) -> Path:
    """Write ``scores.parquet`` (all models), sorted so reruns are byte-identical."""
    df = pd.concat([f[SCORE_COLUMNS] for f in frames if len(f)], ignore_index=True)
    df["patient_id"] = df["patient_id"].astype(str)
    df = df.sort_values(["model", "patient_id"]).reset_index(drop=True)
    return atomic_write_table(study_dir / "scores.parquet", df)
