"""Nested cross-fitting of everything that is chosen or stacked: the choice of the DL model and the combined model.

Out-of-fold scores make each *base* model honest: a training patient's score comes from the model fitted on the
other folds. A model *chosen* among candidates, or *stacked* on base scores, is only honest if the choice and the
stacking weights are learned without the patient too. For every outer fold k of ``splits.json``:

1. the inner training patients are those outside fold k; each of them needs a base score from a model that saw
   neither fold k nor the patient's own fold m: the *inner* scores (:func:`inner_scores`, one fit per pair of
   folds, for the fusion-level models; the DL arms train the same pair-of-folds networks,
   :mod:`p53hcc.tools.dl.arms`). Without them a model's out-of-fold scores can stand in
   (:func:`inner_from_oof`), but that leaks: those scores came from models that saw fold k, and on null
   cohorts the choice then favours networks whose fold-k errors agree with the other folds
   (``docs/validation.md``);
2. the DL model is chosen on the inner patients' inner scores only (highest AUC; ties to the earlier candidate);
3. the combined model is fitted on the inner patients' inner scores of clinical, radiomics and the chosen DL
   model;
4. fold k's patients are scored with their out-of-fold base scores (from models fitted without fold k).

So each training patient's chosen-DL and combined scores come from a pipeline that never saw the patient. The
"apparent" alternative (choose and stack on the same out-of-fold scores that are then reported) is kept for
comparison and labelled so wherever it is used.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from p53hcc.fusion.inputs import on_patients, patient_indexed
from p53hcc.fusion.models.oof import fresh_estimator, positive_proba
from p53hcc.tools.errors import InputError

#: Columns of inner scores (``inner_scores.parquet``): the outer fold a score serves, the patient and the score.
INNER_COLUMNS = ["outer", "patient_id", "score"]


def fold_map(splits: Mapping) -> dict[str, int]:
    """Training patient -> the fold that holds it out (``splits.json``'s ``fold_of``, ids as strings)."""
    return {str(p): int(k) for p, k in splits["fold_of"].items()}


def fold_pairs(splits: Mapping) -> list[tuple[int, int]]:
    """Every pair of folds {k, m}, k < m: one inner model per pair, K (K - 1) / 2 of them."""
    return list(combinations(sorted(int(f["fold"]) for f in splits["folds"]), 2))


def pair_training(splits: Mapping, pair: tuple[int, int]) -> list[str]:
    """The training patients the pair model {k, m} is fitted on: those outside both folds (``splits.json`` order).
    The one answer for the fits (:func:`inner_scores`) and for the study's plan check (``pipeline.plan``)."""
    folds = fold_map(splits)
    return [str(i) for f in splits["folds"] for i in f["val"] if folds[str(i)] not in pair]


def pair_inner_scores(pair: tuple[int, int], scores: pd.DataFrame, folds: Mapping[str, int]) -> pd.DataFrame:
    """The scores (``patient_id, score``) a pair model gave the patients of its folds k and m, as inner scores:
    fold m's patients serve outer fold k, fold k's patients outer fold m (``folds``: :func:`fold_map`)."""
    k, m = pair
    ids = scores["patient_id"].astype(str)
    return pd.DataFrame({"outer": np.where(ids.map(folds) == m, k, m), "patient_id": ids,
                         "score": scores["score"].to_numpy(float)})[INNER_COLUMNS]


def inner_scores(estimator_factory, X: pd.DataFrame, y, splits: Mapping) -> pd.DataFrame:
    """Inner out-of-fold scores for every outer fold: ``outer, patient_id, score``.

    For each pair of folds {k, m} one model is fitted on the training patients outside both; it scores fold m's
    patients for outer fold k and fold k's patients for outer fold m. K folds need K (K - 1) / 2 fits.
    """
    X = patient_indexed(X)
    y = on_patients(y, X.index)
    folds = fold_map(splits)
    training = [str(i) for f in splits["folds"] for i in f["val"]]
    rows = []
    for k, m in fold_pairs(splits):
        fit_ids = pair_training(splits, (k, m))
        held = [p for p in training if folds[p] == m] + [p for p in training if folds[p] == k]
        est = fresh_estimator(estimator_factory).fit(X.loc[fit_ids], y.loc[fit_ids].astype(int))
        rows.append(pair_inner_scores((k, m), pd.DataFrame({"patient_id": held,
                                                            "score": positive_proba(est, X.loc[held])}), folds))
    return pd.concat(rows, ignore_index=True)[INNER_COLUMNS]


def inner_from_oof(oof: pd.DataFrame, splits: Mapping) -> pd.DataFrame:
    """Stand-in inner scores from a model's out-of-fold scores (``patient_id, fold, score``): for outer fold k,
    the out-of-fold scores of the patients outside fold k. Those came from models that did see fold k, which is
    why real inner scores are preferred where they are affordable."""
    oof = oof.assign(patient_id=oof["patient_id"].astype(str))
    parts = [oof[oof["fold"] != int(f["fold"])].assign(outer=int(f["fold"])) for f in splits["folds"]]
    return pd.concat(parts, ignore_index=True)[INNER_COLUMNS]


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def choose(aucs: Mapping[str, float], order: Sequence[str]) -> str | None:
    """The candidate with the highest AUC (NaN never wins; ties go to the earlier one in ``order``)."""
    best = [(a, -order.index(m), m) for m, a in aucs.items() if m in order and np.isfinite(a)]
    return max(best)[2] if best else None


def _wide(tables: Mapping[str, pd.DataFrame], ids: Sequence[str]) -> pd.DataFrame:
    cols = {name: t.set_index("patient_id")["score"].reindex(ids) for name, t in tables.items()}
    wide = pd.DataFrame(cols, index=pd.Index(ids, name="patient_id"))
    if wide.isna().any().any():
        pid = wide.index[wide.isna().any(axis=1)][0]
        raise InputError(str(pid), "missing a score needed by the nested combined model")
    return wide


def nested_choice_and_stack(inner: Mapping[str, pd.DataFrame], oof: Mapping[str, pd.DataFrame], y,
                            splits: Mapping, candidates: Sequence[str], stack_inputs: Sequence[str],
                            combined_factory: Callable[..., object]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Nested out-of-fold scores of the chosen DL model and of the combined model (see the module docstring).

    Args:
        inner: per model, its inner scores (``outer, patient_id, score``) for every outer fold.
        oof: per model, its out-of-fold scores of the training patients (``patient_id, fold, score``).
        y: labels (Series by patient id).
        splits: ``splits.json`` content.
        candidates: DL models to choose from, in tie-break order (degenerate ones already left out).
        stack_inputs: the fusion-level inputs of the combined model besides the DL model (e.g. clinical,
            radiomics; degenerate ones already left out).
        combined_factory: ``combined_factory(inputs=[...])`` gives an unfitted combined model.

    Returns:
        ``(dl, combined, choices)``: tidy ``patient_id, fold, score`` frames of the chosen DL model and the
        combined model for every training patient, and ``{fold: chosen candidate}``.
    """
    y = pd.Series(y).set_axis(pd.Series(y).index.astype(str))
    dl_parts, comb_parts, choices = [], [], {}
    for f in splits["folds"]:
        k, held = int(f["fold"]), [str(i) for i in f["val"]]
        inner_k = {m: t[t["outer"] == k] for m, t in inner.items()}
        ids = sorted(inner_k[candidates[0]]["patient_id"]) if candidates else sorted(
            inner_k[stack_inputs[0]]["patient_id"])
        yk = y.loc[ids].astype(int).to_numpy()
        aucs = {m: _auc(yk, _wide({m: inner_k[m]}, ids)[m].to_numpy()) for m in candidates}
        chosen = choose(aucs, list(candidates))
        choices[k] = chosen
        names = [*stack_inputs, *([chosen] if chosen else [])]
        columns = [*stack_inputs, *(["dl"] if chosen else [])]
        X_in = _wide({c: inner_k[n] for c, n in zip(columns, names)}, ids)
        model = combined_factory(inputs=columns).fit(X_in, yk)
        X_out = _wide({c: oof[n] for c, n in zip(columns, names)}, held)
        comb_parts.append(pd.DataFrame({"patient_id": held, "fold": k, "score": model.predict_proba(X_out)[:, 1]}))
        if chosen:
            dl_parts.append(X_out[["dl"]].rename(columns={"dl": "score"}).reset_index().assign(fold=k))
    dl = (pd.concat(dl_parts, ignore_index=True)[["patient_id", "fold", "score"]] if dl_parts
          else pd.DataFrame(columns=["patient_id", "fold", "score"]))
    return dl, pd.concat(comb_parts, ignore_index=True), choices
