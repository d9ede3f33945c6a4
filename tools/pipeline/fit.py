"""The fusion stage: clinical, radiomics, DL choice and combined models, cross-fitted; ``scores.parquet``.

Every model is cross-fitted on the folds of ``splits.json``: training patients get out-of-fold scores, everybody
else the score of the model fitted on all training patients (:mod:`p53hcc.fusion.models.oof`). What is chosen (the
DL model, ``dl``) or stacked (the combined model) is nested (:mod:`p53hcc.fusion.models.nested`), so a training patient's
``dl`` and ``combined`` scores come from a choice and a stacking that never saw the patient. The
full-training-cohort fits go to ``fusion/*.joblib`` for the frozen ``model/``; they are fitted exactly as the fold
-1 models, so they reproduce the study's validation scores.
"""
from __future__ import annotations

from collections.abc import Collection
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from p53hcc.fusion.models.factories import make_clinical_model, make_combined_model, make_radiomics_model
from p53hcc.fusion.models.harmonise import harmonisation_record, with_batch
from p53hcc.fusion.models.nested import inner_from_oof, inner_scores, nested_choice_and_stack
from p53hcc.fusion.models.oof import crossfit_predict, crossfit_scores, fit_full, scores_wide
from p53hcc.fusion.models.radiomics import selected_features_table
from p53hcc.fusion.stats.metric_rows import degenerate_reason
from p53hcc.tools.cohort.batches import batch_of
from p53hcc.tools.cohort.dropped import dropped_patients
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.cohort.splits import load_splits
from p53hcc.tools.io import atomic_path, atomic_write_json, atomic_write_table, read_table
from p53hcc.tools.pipeline.choice import candidate_order, collect_dl_scores, select_dl_model, write_scores
from p53hcc.tools.radiomics.icc import reliable_features
from p53hcc.tools.schema import CLINICAL_COLUMNS, SCORE_COLUMNS


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


def _clinical_inputs(df: pd.DataFrame) -> pd.DataFrame:
    """The cohort columns the clinical model may see: patient id and clinical variables, never the outcome."""
    return df[["patient_id", *[c for c in CLINICAL_COLUMNS if c in df.columns]]]


def degenerate_models(scores: pd.DataFrame) -> dict[str, str]:
    """Models whose scores cannot rank patients on some split or training fold, with the reason."""
    out = {}
    for model, g in scores.groupby("model", sort=True):
        for split, h in g.groupby("split", sort=True):
            reason = degenerate_reason(h["score"], h["fold"] if split == "train" else None)
            if reason:
                out[model] = f"{split}: {reason}"
                break
    return out


def _oof(scores: pd.DataFrame, model: str) -> pd.DataFrame:
    t = scores[(scores["model"] == model) & (scores["split"] == "train")]
    return t[["patient_id", "fold", "score"]].assign(patient_id=lambda d: d["patient_id"].astype(str))


def dl_inner_scores(study_dir: Path, model: str, oof: pd.DataFrame, splits: dict) -> tuple[pd.DataFrame, str]:
    """A DL candidate's inner scores (``dl/<arm>/<net>/inner_scores.parquet``, from its pair-of-folds networks)
    and where they came from; without pair networks its out-of-fold scores stand in, and the record says so."""
    arm, net = model.split("_", 1)
    path = Path(study_dir) / "dl" / arm / net / "inner_scores.parquet"
    if path.is_file():
        return read_table(path).astype({"patient_id": str}), "pair networks"
    return inner_from_oof(oof, splits), "out-of-fold stand-in (no pair networks: train with inner=True)"


def _tidy(name: str, scores: pd.DataFrame, split: pd.Series) -> pd.DataFrame:
    out = scores.assign(model=name, split=lambda d: d["patient_id"].map(split))
    return out[SCORE_COLUMNS]


def run_fusion(study_dir: str | Path, cohort_csv: str | Path, cfg: dict) -> None:
    """Clinical and radiomics models (out-of-fold), DL choice, combined LR; writes scores.parquet + selection.json.

    The chosen DL model (``dl``) and the combined model are nested (``fusion.nesting: nested``, see
    :mod:`p53hcc.fusion.models.nested`) or, with ``apparent``, chosen and stacked on the same out-of-fold scores they
    are reported with. Degenerate models (constant scores) are left out of the choice and of the stacking.
    """
    study_dir = Path(study_dir)
    df, y, split = cohort_labels(cohort_csv, exclude=dropped_patients(study_dir))  # the datalist's patients
    df = df.reset_index(drop=True)
    splits = load_splits(study_dir)
    train = split[split == "train"].index
    fcfg, nested = cfg["fusion"], cfg["fusion"]["nesting"] == "nested"
    harmonise = fcfg.get("harmonise", "none")
    factories = {"clinical": make_clinical_model,
                 "radiomics": partial(make_radiomics_model, spearman=float(fcfg["spearman_threshold"]),
                                      cv=int(fcfg["lasso_cv_folds"]), random_state=int(cfg["seed"]),
                                      harmonise=harmonise)}
    Xr = _radiomics_matrix(study_dir, cfg["radiomics"].get("icc_threshold"))
    features = list(Xr.columns)
    if harmonise != "none":  # the scanner rides along as the column the harmoniser consumes, never a feature
        Xr = with_batch(Xr, batch_of(df, cfg.get("batch_column")))
    inputs = {"clinical": _clinical_inputs(df), "radiomics": Xr}
    frames, inner = [], {}
    for name, factory in factories.items():
        frames.append(crossfit_scores(name, factory, inputs[name], y, split, splits))
        X_train = inputs[name][inputs[name]["patient_id"].isin(train)] if name == "clinical" else Xr.loc[
            Xr.index.intersection(train)]
        full = fit_full(factory, X_train, y)
        _save_model(study_dir, name, full)
        if name == "radiomics":
            atomic_write_table(study_dir / "fusion" / "radiomics_lasso.csv", selected_features_table(full, features))
            atomic_write_json(study_dir / "fusion" / "radiomics_features.json", features)
            atomic_write_json(study_dir / "fusion" / "harmonisation.json",
                              harmonisation_record(full, harmonise, cfg.get("batch_column")))
        if nested:
            inner[name] = inner_scores(factory, inputs[name], y, splits)
    dl = collect_dl_scores(study_dir, cfg["dl"]["arms"], cfg["dl"]["nets"])
    frames.append(dl)
    base = pd.concat(frames, ignore_index=True)
    excluded = degenerate_models(base)
    arms, nets = cfg["dl"]["arms"], cfg["dl"]["nets"]
    candidates = [m for m in candidate_order(arms, nets) if m in set(dl["model"]) and m not in excluded]
    sel = select_dl_model(dl, y, arms, nets, excluded) if candidates else {"chosen": None, "excluded": excluded}
    chosen = sel["chosen"]["model"] if sel["chosen"] else None
    stack = [m for m in factories if m not in excluded]
    columns = [*stack, *(["dl"] if chosen else [])]
    combined_factory = partial(make_combined_model, nonnegative=fcfg["stack_weights"] == "nonnegative")
    Xc = scores_wide(base, {**{m: m for m in stack}, **({"dl": chosen} if chosen else {})}).sort_index()
    combined = fit_full(partial(combined_factory, inputs=columns), Xc.loc[Xc.index.intersection(train)], y)
    _save_model(study_dir, "combined", combined)
    atomic_write_table(study_dir / "fusion" / "combined_inputs.parquet", Xc.reset_index())
    others = Xc.index.difference(train)
    other = pd.DataFrame({"patient_id": others, "fold": -1, "score": combined.predict_proba(Xc.loc[others])[:, 1]})
    dl_inner = {}
    if nested:
        for m in candidates:
            inner[m], dl_inner[m] = dl_inner_scores(study_dir, m, _oof(dl, m), splits)
        dl_tc, comb_tc, choices = nested_choice_and_stack(inner, {m: _oof(base, m) for m in [*stack, *candidates]},
                                                          y, splits, candidates, stack, combined_factory)
    else:
        comb_tc = crossfit_predict(partial(combined_factory, inputs=columns), Xc.loc[Xc.index.intersection(train)],
                                   y, splits).reset_index()
        dl_tc, choices = (_oof(dl, chosen) if chosen else pd.DataFrame(columns=["patient_id", "fold", "score"]),
                          {int(f["fold"]): chosen for f in splits["folds"]})
    frames.append(_tidy("combined", pd.concat([comb_tc, other], ignore_index=True), split))
    if chosen:
        dl_full = dl[(dl["model"] == chosen) & (dl["split"] != "train")][["patient_id", "fold", "score"]]
        frames.append(_tidy("dl", pd.concat([dl_tc, dl_full], ignore_index=True), split))
    sel.update(nesting=fcfg["nesting"], stack_weights=fcfg["stack_weights"], combined_inputs=columns,
               fold_choices={str(k): v for k, v in choices.items()}, dl_inner_scores=dl_inner,
               combined_weights={"intercept": combined.intercept_, **combined.coefficients_})
    atomic_write_json(study_dir / "selection.json", sel)
    write_scores(study_dir, frames)
