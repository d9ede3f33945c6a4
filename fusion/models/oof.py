"""Cross-fitting: out-of-fold scores for training patients, full-cohort model scores for everyone else.

The combined model is a logistic regression on the clinical, radiomics and DL scores of the training cohort.
If those scores came from models that had seen the patient's own label, the combined model would learn from
overfitted inputs. So every training patient's score comes from the model fitted on the other folds of
``splits.json`` (``folds[k].train``), and validation/external/predict patients are scored by one model fitted
on all training patients. A fresh clone of the estimator is fitted for every fold (nothing is learned outside
the fold).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from tqdm.auto import tqdm

from p53hcc.fusion.inputs import on_patients, patient_indexed
from p53hcc.tools.errors import InputError
from p53hcc.tools.schema import SCORE_COLUMNS


def fresh_estimator(estimator_factory: Callable[[], Any] | Any):
    """A new unfitted estimator: call the factory (or clone an estimator instance), then clone once more."""
    is_instance = hasattr(estimator_factory, "fit") and not isinstance(estimator_factory, type)
    return clone(estimator_factory if is_instance else estimator_factory())


def positive_proba(est, X: pd.DataFrame) -> np.ndarray:
    """P(class 1) of a fitted classifier for the rows of ``X``."""
    return np.asarray(est.predict_proba(X))[:, 1]


def _check_folds(splits: Mapping, X: pd.DataFrame) -> list[dict]:
    folds = list(splits["folds"])
    held = [str(i) for f in folds for i in f["val"]]
    if len(held) != len(set(held)):
        raise InputError(None, "splits.json: a patient is held out in more than one fold")
    missing = sorted(set(held) - set(X.index))
    if missing:
        raise InputError(missing[0], "patient in splits.json folds has no row in the feature table")
    for f in folds:
        overlap = set(map(str, f["train"])) & set(map(str, f["val"]))
        if overlap:
            raise InputError(min(overlap), f"fold {f['fold']}: patient in both train and val")
    return folds


def crossfit_predict(estimator_factory, X: pd.DataFrame, y, splits: Mapping, progress: bool = False
                     ) -> pd.DataFrame:
    """Out-of-fold probabilities for the training patients listed in ``splits``.

    Args:
        estimator_factory: zero-argument callable returning an unfitted sklearn-style classifier (or an
            estimator instance, cloned per fold).
        X: features (or raw cohort rows), indexed by ``patient_id`` or with a ``patient_id`` column.
        y: 0/1 labels (Series indexed by patient_id, or aligned array).
        splits: ``splits.json`` content (``folds[k] = {fold, train, val}``).
        progress: show a tqdm bar over folds.

    Returns:
        Frame indexed by patient_id with columns ``fold`` and ``score`` (one row per held-out patient).
    """
    X = patient_indexed(X)
    y = on_patients(y, X.index)
    parts = []
    for f in tqdm(_check_folds(splits, X), desc="cross-fit", disable=not progress):
        tr, va = [str(i) for i in f["train"]], [str(i) for i in f["val"]]
        est = fresh_estimator(estimator_factory).fit(X.loc[tr], y.loc[tr].astype(int))
        parts.append(pd.DataFrame({"fold": int(f["fold"]), "score": positive_proba(est, X.loc[va])},
                                  index=pd.Index(va, name="patient_id")))
    return pd.concat(parts)


def fit_full(estimator_factory, X_train: pd.DataFrame, y_train):
    """A fresh estimator fitted on all training patients (used for validation/external/predict scores)."""
    X_train = patient_indexed(X_train)
    y_train = on_patients(y_train, X_train.index).loc[X_train.index]
    return fresh_estimator(estimator_factory).fit(X_train, y_train.astype(int))


def crossfit_scores(name: str, estimator_factory, X: pd.DataFrame, y, split, splits: Mapping,
                    progress: bool = False) -> pd.DataFrame:
    """Tidy scores of one model for every patient (the ``scores.parquet`` format).

    Training patients (``split == "train"``) get out-of-fold scores from :func:`crossfit_predict`; all other
    patients get the score of the model fitted on every training patient (``fold = -1``).

    Args:
        name: model name written in the ``model`` column.
        estimator_factory: see :func:`crossfit_predict`.
        X: features / raw rows for all patients (index or column ``patient_id``).
        y: labels (only training labels are used).
        split: Series (index patient_id) or aligned array of split names.
        splits: ``splits.json`` content; its held-out patients must be exactly the training patients.
        progress: show a tqdm bar.

    Returns:
        DataFrame with columns patient_id, model, fold, split, score.
    """
    X = patient_indexed(X)
    split = on_patients(split, X.index).reindex(X.index)
    y = on_patients(y, X.index)
    train_ids = X.index[split == "train"]
    held = {str(i) for f in splits["folds"] for i in f["val"]}
    if held != set(train_ids):
        odd = min(held.symmetric_difference(train_ids))
        raise InputError(odd, "training patients and splits.json held-out patients differ")
    oof = crossfit_predict(estimator_factory, X, y, splits, progress=progress)
    frames = [oof.reset_index().assign(split="train")]
    others = X.index[split != "train"]
    if len(others):
        full = fit_full(estimator_factory, X.loc[train_ids], y.loc[train_ids])
        frames.append(pd.DataFrame({"patient_id": others, "fold": -1, "score": positive_proba(full, X.loc[others]),
                                    "split": split.loc[others].to_numpy()}))
    out = pd.concat(frames, ignore_index=True).assign(model=name)
    out["fold"] = out["fold"].astype(int)
    return out[SCORE_COLUMNS]


def scores_wide(scores_long: pd.DataFrame, models: Mapping[str, str] | list[str]) -> pd.DataFrame:
    """Pivot tidy scores to one column per model (index patient_id), e.g. the combined model's inputs.

    Args:
        scores_long: ``patient_id, model, fold, split, score``.
        models: model names to take, or a mapping {column name: model name}.

    Raises:
        InputError: a patient lacks the score of one of the models.
    """
    mapping = dict(models) if isinstance(models, Mapping) else {m: m for m in models}
    sub = scores_long[scores_long["model"].isin(mapping.values())]
    wide = sub.pivot(index="patient_id", columns="model", values="score")
    for model in mapping.values():
        if model not in wide.columns:
            raise InputError(None, f"no scores for model {model!r}")
    wide = wide[list(mapping.values())].set_axis(list(mapping), axis=1)
    if wide.isna().any().any():
        pid = wide.index[wide.isna().any(axis=1)][0]
        raise InputError(str(pid), "missing score for one of the combined model's inputs")
    wide.index = wide.index.astype(str)
    return wide
