"""Choice of the final DL model (never on validation) and the study's DL score table.

``selection.json``: per arm the network with the highest **training-cohort out-of-fold AUC**, then MC vs FF by the
same number (ties: the earlier, simpler network in ``dl.nets``, then MC). The validation cohort is never looked at.
``selection_paper.json`` records the paper's practice (choice by validation AUC) for the report only, labelled
optimistic: it uses the validation cohort twice.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.models.nested import choose
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


def candidate_order(arms: list[str], nets: list[str]) -> list[str]:
    """DL candidates in tie-break order: arm by arm (MC first), the earlier (simpler) network first."""
    return [f"{arm}_{net}" for arm in arms for net in nets]


def choose_dl_model(aucs: pd.DataFrame, arms: list[str], nets: list[str], split: str = "train",
                    excluded: dict[str, str] | None = None) -> dict:
    """Best network per arm, then the better arm, by AUC on ``split`` (``train`` = out-of-fold: the honest rule).

    Ties go to the earlier network in ``nets`` (the simpler one in the default order) and to MC over FF, so the
    choice is deterministic; ``excluded`` models (degenerate: constant scores) are never chosen.
    ``split="validation"`` reproduces the paper's (optimistic) practice.
    """
    auc = aucs[aucs["split"] == split].set_index("model")["auc"].to_dict()
    auc = {m: a for m, a in auc.items() if m not in (excluded or {})}
    best_per_arm = {}
    for arm in arms:
        best = choose(auc, candidate_order([arm], nets))
        if best:
            best_per_arm[arm] = {"net": best.split("_", 1)[1], "model": best, "auc": float(auc[best])}
    chosen = choose(auc, candidate_order(arms, nets))
    if chosen is None:
        raise P53hccError(f"no DL scores with labels on the {split} split to choose a network from"
                          + (f" ({len(excluded)} degenerate model(s) excluded)" if excluded else ""))
    return {"split": split, "best_per_arm": best_per_arm,
            "chosen": {"arm": chosen.split("_", 1)[0], "net": chosen.split("_", 1)[1], "model": chosen,
                       "auc": float(auc[chosen])}}


def select_dl_model(dl_scores: pd.DataFrame, labels: pd.Series, arms: list[str], nets: list[str],
                    excluded: dict[str, str] | None = None) -> dict:
    """The choice of the final DL model by training-cohort out-of-fold AUC (the record ``selection.json`` holds)."""
    aucs = oof_auc_table(dl_scores, labels)
    sel = choose_dl_model(aucs, arms, nets, "train", excluded)
    sel["rule"] = ("best network per arm, then MC vs FF, by training-cohort out-of-fold AUC "
                   "(ties: simpler network, then MC); the validation cohort is not used for the choice")
    sel["aucs"] = aucs.to_dict("records")
    sel["excluded"] = dict(excluded or {})
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
    excluded = json.loads((study_dir / "selection.json").read_text()).get("excluded", {}) if (
        study_dir / "selection.json").is_file() else {}
    paper = choose_dl_model(oof_auc_table(dl_scores, labels), arms, nets, "validation", excluded)
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
