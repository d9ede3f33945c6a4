"""The study plan simulated before any heavy stage: every training set a fusion-level fit will see, made by the
functions the run itself uses, checked for what the fits inside it need.

The training sets are the whole training cohort (the final models), each fold's training part (out-of-fold
scores; folds from :func:`p53hcc.tools.cohort.splits.make_splits`) and, with nested cross-fitting, each pair of
folds' training part (inner scores; :func:`p53hcc.fusion.models.nested.fold_pairs` and ``pair_training``). In each:

* the radiomics LASSO chooses its penalty by a ``fusion.lasso_cv_folds``-fold stratified search; scikit-learn
  refuses it (hours later, in fusion) when both classes have fewer patients than folds or one class has fewer than
  2 (an inner training fold of one class): an error naming the set and the settings that would pass; fewer than
  ``lasso_cv_folds`` of one class runs with inner folds lacking that class (a warning, as scikit-learn's);
* ComBat (``fusion.harmonise: combat``) estimates a correction only from scanners with at least
  :data:`p53hcc.fusion.models.harmonise.MIN_BATCH` patients and needs two of them; a set with fewer is left
  unharmonised (a warning, as in the run).
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from p53hcc.fusion.models.harmonise import MIN_BATCH
from p53hcc.fusion.models.nested import fold_pairs, pair_training
from p53hcc.tools.cohort.splits import make_splits
from p53hcc.tools.errors import P53hccError


def training_sets(splits: Mapping, nested: bool) -> dict[str, list[str]]:
    """Every training set of the fusion-level fits, by a name a user can find in ``splits.json``."""
    sets = {"the training cohort": [str(i) for f in splits["folds"] for i in f["val"]]}
    sets.update({f"fold {f['fold']}'s training part": [str(i) for i in f["train"]] for f in splits["folds"]})
    if nested:
        sets.update({f"the training part of the pair of folds ({k}, {m}) (nested cross-fitting)":
                     pair_training(splits, (k, m)) for k, m in fold_pairs(splits)})
    return sets


def _counts(labels: pd.Series, sets: Mapping[str, list[str]]) -> dict[str, tuple[int, int]]:
    """(negative, positive) patients of each training set."""
    return {name: tuple(int(n) for n in labels.reindex(ids).value_counts().reindex([0, 1], fill_value=0))
            for name, ids in sets.items()}


def lasso_search_fails(counts: tuple[int, int], inner_cv: int) -> bool:
    """What scikit-learn refuses in the LASSO's penalty search: fewer than ``inner_cv`` patients in both classes
    (``StratifiedKFold``), or fewer than 2 in one (an inner training fold then holds one class only)."""
    return max(counts) < inner_cv or min(counts) < 2


def _first(counts: Mapping[str, tuple[int, int]], bad) -> tuple[str, tuple[int, int]] | None:
    return next(((name, c) for name, c in counts.items() if bad(c)), None)


def lasso_problem(df: pd.DataFrame, splits: Mapping, inner_cv: int, nested: bool, seed: int = 0,
                  folds: int | None = None) -> tuple[str, str] | None:
    """``(severity, message)`` when the radiomics LASSO's penalty search in some training set would fail
    (``error``, with what to change) or run with inner folds that hold no patient of a class (``warning``:
    scikit-learn warns, the search is noisier); None when every set has ``inner_cv`` patients of each class.

    ``folds`` (stratified K folds; None for leave-one-scanner-out, whose folds are the scanners) lets the message
    name the nearest number of folds that would pass (nested fits train on K - 2 of K folds: more folds make larger
    training sets), found by making those folds with the same function and seed."""
    labels = pd.to_numeric(df.set_index(df["patient_id"].astype(str))["p53"], errors="coerce")
    counts = _counts(labels, training_sets(splits, nested))
    failing = _first(counts, lambda c: lasso_search_fails(c, inner_cv))
    short = failing or _first(counts, lambda c: min(c) < inner_cv)
    if short is None:
        return None
    where, (neg, pos) = short
    has = f"{where} has {pos} P53-positive and {neg} P53-negative"
    if not failing:
        return "warning", (f"the radiomics LASSO's {inner_cv}-fold penalty search: {has}, so some of its inner folds "
                           f"hold no patient of a class (scikit-learn warns; use --fusion.lasso_cv_folds "
                           f"{max(2, min(min(c) for c in counts.values()))} for folds with both classes)")
    fixes = []
    k = min(max(c) for c in counts.values())
    if min(min(c) for c in counts.values()) >= 2 and 2 <= k < inner_cv:
        fixes.append(f"--fusion.lasso_cv_folds {k}")
    most = min(_counts(labels, training_sets(splits, False))["the training cohort"])
    for k in sorted(range(3 if nested else 2, most + 1) if folds else [], key=lambda k: (abs(k - folds), k)):
        if k == folds:
            continue
        try:
            alt = make_splits(df, k, seed)
        except P53hccError:
            continue
        if not _first(_counts(labels, training_sets(alt, nested)), lambda c: lasso_search_fails(c, inner_cv)):
            fixes.append(f"--folds {k}")
            break
    if nested and not _first(_counts(labels, training_sets(splits, False)), lambda c: lasso_search_fails(c, inner_cv)):
        fixes.append("--fusion.nesting apparent (optimistic)")
    fixes.append("add training patients")
    return "error", (f"the radiomics LASSO's {inner_cv}-fold penalty search needs, in every training set it is "
                     f"fitted on, {inner_cv} patients of a class and 2 of the other; {has}: use "
                     f"{' or '.join(fixes)}")


def combat_problem(batch: pd.Series, splits: Mapping, nested: bool, min_batch: int = MIN_BATCH) -> str | None:
    """A warning when ComBat would harmonise nothing in some training set (fewer than two scanners with
    ``min_batch`` patients there), naming how many sets and the first; None when every set is harmonised."""
    short = {name: ids for name, ids in training_sets(splits, nested).items()
             if int((batch.reindex(ids).value_counts() >= min_batch).sum()) < 2}
    if not short:
        return None
    first, ids = next(iter(short.items()))
    counts = ", ".join(f"{b} {n}" for b, n in batch.reindex(ids).value_counts().sort_index().items())
    return (f"ComBat needs at least 2 scanners with {min_batch} or more patients in a training set to harmonise it; "
            f"{len(short)} training set(s) have fewer and are left unharmonised, e.g. {first} ({counts})")
