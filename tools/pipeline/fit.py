"""The fusion stage: clinical, radiomics, DL choice and combined models, cross-fitted; ``scores.parquet``.

Every model is cross-fitted on the folds of ``splits.json``: training patients get out-of-fold scores, everybody
else the score of the model fitted on all training patients (:mod:`p53hcc.fusion.crossfit`). The combined LR
sees only those scores. The full-training-cohort fits go to ``fusion/*.joblib`` for the frozen ``model/``; they
are fitted exactly as crossfit's fold -1 model, so they reproduce the study's validation scores.
"""
from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd

from p53hcc.fusion.crossfit import crossfit_scores, fit_full, scores_wide
from p53hcc.fusion.models import make_clinical_model, make_combined_model, make_radiomics_model
from p53hcc.fusion.selection import selected_features_table
from p53hcc.tools.cohort.dropped import dropped_patients
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.cohort.splits import load_splits
from p53hcc.tools.io import atomic_path, atomic_write_json, atomic_write_table, read_table
from p53hcc.tools.pipeline.selection import collect_dl_scores, write_scores, write_selection
from p53hcc.tools.radiomics.icc import reliable_features


def cohort_labels(cohort_csv: str | Path, exclude: Collection[str] = ()) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Cohort rows indexed by ``patient_id`` (sorted), their P53 labels (NaN when unknown) and splits; without the
    ``exclude`` patients (those a stage dropped, ``dropped.csv``)."""
    df = read_cohort(cohort_csv).sort_values("patient_id")
    df = df[~df["patient_id"].isin(set(exclude))].set_index("patient_id", drop=False)
    return df, pd.to_numeric(df["p53"], errors="coerce"), df["split"]


def _save_model(study_dir: Path, name: str, model: Any) -> None:
    import joblib

    with atomic_path(Path(study_dir) / "fusion" / f"{name}.joblib") as tmp:
        joblib.dump(model, tmp)


def _radiomics_matrix(study_dir: Path, icc_threshold: float | None):
    """Radiomics features (patients x features), minus features below the ICC threshold when ICC exists."""
    X = read_table(Path(study_dir) / "radiomics.parquet")
    X["patient_id"] = X["patient_id"].astype(str)
    X = X.set_index("patient_id").sort_index().select_dtypes("number")
    icc_path = Path(study_dir) / "radiomics_icc.csv"
    if icc_threshold is not None and icc_path.exists():
        keep = set(reliable_features(read_table(icc_path), icc_threshold))
        X = X[[c for c in X.columns if c in keep]]
    return X


def run_fusion(study_dir: str | Path, cohort_csv: str | Path, cfg: dict) -> None:
    """Clinical and radiomics models (out-of-fold), DL choice, combined LR; writes scores.parquet + selection.json."""
    study_dir = Path(study_dir)
    df, y, split = cohort_labels(cohort_csv, exclude=dropped_patients(study_dir))  # the datalist's patients
    df = df.reset_index(drop=True)
    splits = load_splits(study_dir)
    train = split[split == "train"].index
    frames = []

    clinical = crossfit_scores("clinical", make_clinical_model, df, y, split, splits)
    frames.append(clinical)
    _save_model(study_dir, "clinical", fit_full(make_clinical_model, df[df["split"] == "train"], y))

    Xr = _radiomics_matrix(study_dir, cfg["radiomics"].get("icc_threshold"))
    radiomics = crossfit_scores("radiomics", make_radiomics_model, Xr, y, split, splits)
    frames.append(radiomics)
    rad_full = fit_full(make_radiomics_model, Xr.loc[Xr.index.intersection(train)], y)
    _save_model(study_dir, "radiomics", rad_full)
    atomic_write_table(study_dir / "fusion" / "radiomics_lasso.csv", selected_features_table(rad_full, Xr.columns))
    atomic_write_json(study_dir / "fusion" / "radiomics_features.json", list(Xr.columns))

    dl = collect_dl_scores(study_dir, cfg["dl"]["arms"], cfg["dl"]["nets"])
    frames.append(dl)
    sel = write_selection(study_dir, dl, y, cfg["dl"]["arms"], cfg["dl"]["nets"])
    base = pd.concat([clinical, radiomics, dl], ignore_index=True)
    Xc = scores_wide(base, {"clinical": "clinical", "radiomics": "radiomics", "dl": sel["chosen"]["model"]})
    Xc = Xc.sort_index()
    combined = crossfit_scores("combined", make_combined_model, Xc, y, split, splits)
    frames.append(combined)
    _save_model(study_dir, "combined", fit_full(make_combined_model, Xc.loc[Xc.index.intersection(train)], y))
    atomic_write_table(study_dir / "fusion" / "combined_inputs.parquet", Xc.reset_index())
    write_scores(study_dir, frames)
