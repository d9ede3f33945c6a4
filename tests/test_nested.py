"""Nested cross-fitting of the DL choice and the combined model: a training patient's reported score never comes
from a choice or a stacking that saw the patient (or its fold)."""
from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from p53hcc.fusion.models.factories import make_combined_model
from p53hcc.fusion.models.nested import choose, inner_from_oof, inner_scores, nested_choice_and_stack
from tests.test_crossfit import make_splits


def _lr():
    return LogisticRegression(C=0.1)


def _problem(seed=0, n=150):
    """Training patients, labels with weak signal, one clinical-like and three DL-like feature sets."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"P{i:03d}" for i in range(n)], name="patient_id")
    y = pd.Series(rng.integers(0, 2, n), index=ids)
    feats = {name: pd.DataFrame(rng.normal(size=(n, 3)) + w * y.to_numpy()[:, None], index=ids, columns=["x0", "x1", "x2"])
             for name, w in (("clinical", 0.4), ("mc_a", 0.1), ("mc_b", 0.5), ("ff_a", 0.0))}
    return ids, y, feats, make_splits(ids, n_folds=4, seed=seed)


def _oof(X, y, splits):
    rows = []
    for f in splits["folds"]:
        est = _lr().fit(X.loc[f["train"]], y.loc[f["train"]])
        rows.append(pd.DataFrame({"patient_id": f["val"], "fold": f["fold"],
                                  "score": est.predict_proba(X.loc[f["val"]])[:, 1]}))
    return pd.concat(rows, ignore_index=True)


def _run(y, feats, splits):
    inner = {m: inner_scores(_lr, X, y, splits) for m, X in feats.items()}
    oof = {m: _oof(X, y, splits) for m, X in feats.items()}
    return nested_choice_and_stack(inner, oof, y, splits, ["mc_a", "mc_b", "ff_a"], ["clinical"],
                                   partial(make_combined_model, nonnegative=True))


def test_inner_scores_come_from_models_without_either_fold():
    ids, y, feats, splits = _problem()
    inner = inner_scores(_lr, feats["clinical"], y, splits)
    fold_of = splits["fold_of"]
    for k in range(4):
        got = inner[inner["outer"] == k]
        assert set(got["patient_id"]) == {p for p in ids if fold_of[p] != k} and not got["patient_id"].duplicated().any()
    # the pair model {0, 1} is the LR fitted on folds 2 and 3 only
    fit_ids = [p for p in ids if fold_of[p] in (2, 3)]
    ref = _lr().fit(feats["clinical"].loc[fit_ids], y.loc[fit_ids])
    fold1 = inner[(inner["outer"] == 0) & inner["patient_id"].map(fold_of).eq(1)].set_index("patient_id")["score"]
    np.testing.assert_allclose(fold1, ref.predict_proba(feats["clinical"].loc[fold1.index])[:, 1])


def test_nested_scores_of_a_fold_never_depend_on_its_labels():
    """Relabel fold 0's patients at random: the choice for fold 0 and the chosen-DL and combined scores of fold 0
    stay exactly the same (the apparent pipeline, which chooses and stacks on everybody's out-of-fold scores,
    would change)."""
    ids, y, feats, splits = _problem(seed=1)
    dl, comb, choices = _run(y, feats, splits)
    fold0 = [p for p in ids if splits["fold_of"][p] == 0]
    y2 = y.copy()
    y2.loc[fold0] = np.random.default_rng(9).permutation(y.loc[fold0].to_numpy()[::-1] ^ 1)
    assert (y2.loc[fold0] != y.loc[fold0]).any()
    dl2, comb2, choices2 = _run(y2, feats, splits)
    assert choices2[0] == choices[0]
    for a, b in ((dl, dl2), (comb, comb2)):
        a0, b0 = (t[t["fold"] == 0].set_index("patient_id")["score"].sort_index() for t in (a, b))
        pd.testing.assert_series_equal(a0, b0)
    assert not comb[comb["fold"] == 1].set_index("patient_id")["score"].sort_index().equals(
        comb2[comb2["fold"] == 1].set_index("patient_id")["score"].sort_index())  # other folds do learn from it


def test_nested_choice_and_outputs():
    ids, y, feats, splits = _problem(seed=2, n=300)
    dl, comb, choices = _run(y, feats, splits)
    assert set(choices.values()) == {"mc_b"}  # the candidate with signal, in every fold
    assert sorted(comb["patient_id"]) == sorted(ids) and comb["score"].between(0, 1).all()
    assert sorted(dl["patient_id"]) == sorted(ids)


def test_choose_ignores_nan_and_breaks_ties_by_order():
    assert choose({"a": 0.6, "b": 0.6, "c": np.nan}, ["b", "a", "c"]) == "b"
    assert choose({"a": np.nan}, ["a"]) is None


def test_oof_stand_in_is_labelled_by_outer_fold():
    oof = pd.DataFrame({"patient_id": ["a", "b", "c"], "fold": [0, 1, 2], "score": [0.1, 0.2, 0.3]})
    splits = {"folds": [{"fold": k} for k in range(3)]}
    inner = inner_from_oof(oof, splits)
    assert set(inner[inner["outer"] == 1]["patient_id"]) == {"a", "c"}
    with pytest.raises(KeyError):
        inner_from_oof(oof.drop(columns="fold"), splits)
