"""Cross-fitting never uses a patient's own label; combined model coefficients; score table format."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from p53hcc.fusion.models.factories import CombinedModel, logit, make_clinical_model, make_combined_model
from p53hcc.fusion.models.oof import crossfit_predict, crossfit_scores, fit_full, scores_wide
from p53hcc.tools.errors import InputError
from tests.test_clinical import raw_cohort


def make_splits(ids, n_folds: int = 5, seed: int = 0) -> dict:
    """splits.json content (docs/contracts.md) for the given training ids."""
    ids = list(ids)
    fold = np.random.default_rng(seed).permutation(len(ids)) % n_folds
    folds = [{"fold": k, "train": [i for i, f in zip(ids, fold) if f != k],
              "val": [i for i, f in zip(ids, fold) if f == k]} for k in range(n_folds)]
    return {"n_folds": n_folds, "seed": seed, "folds": folds,
            "fold_of": {i: int(f) for i, f in zip(ids, fold)}}


class Memoriser(ClassifierMixin, BaseEstimator):
    """Remembers its training patients and refuses to score any of them."""

    def fit(self, X, y):
        self.seen_ = set(X.index)
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X):
        leaked = self.seen_ & set(X.index)
        if leaked:
            raise AssertionError(f"asked to score training patient(s) {sorted(leaked)[:3]}")
        return np.column_stack([np.full(len(X), 0.5), np.full(len(X), 0.5)])


def cohort_with_split(n=200, seed=0):
    df = raw_cohort(n, seed=seed)
    df["split"] = np.where(np.arange(n) < int(0.7 * n), "train", "validation")
    return df.set_index("patient_id", drop=False)


def test_memoriser_never_scores_its_own_training_patients():
    df = cohort_with_split()
    splits = make_splits(df.index[df.split == "train"])
    scores = crossfit_scores("memo", Memoriser, df, df.p53, df.split, splits)
    assert len(scores) == len(df)
    # the check itself can fail: scoring a training patient raises
    with pytest.raises(AssertionError, match="training patient"):
        Memoriser().fit(df, df.p53).predict_proba(df.iloc[:3])


def test_null_labels_give_chance_oof_auc():
    r = np.random.default_rng(0)
    n = 300
    X = pd.DataFrame(r.normal(size=(n, 40)), index=[f"P{i}" for i in range(n)])
    y = pd.Series(r.binomial(1, 0.5, n), index=X.index)
    factory = lambda: LogisticRegression(C=10.0, max_iter=2000)
    splits = make_splits(X.index)
    oof = crossfit_predict(factory, X, y, splits)
    assert sorted(oof.index) == sorted(X.index)
    in_sample = roc_auc_score(y, fit_full(factory, X, y).predict_proba(X)[:, 1])
    oof_auc = roc_auc_score(y.loc[oof.index], oof["score"])
    assert in_sample > 0.7  # resubstitution is optimistic...
    assert abs(oof_auc - 0.5) < 0.1  # ...out-of-fold is not


def test_scores_format_and_full_model_for_validation():
    df = cohort_with_split(220, seed=1)
    splits = make_splits(df.index[df.split == "train"])
    calls = []

    def factory():
        calls.append(1)
        return make_clinical_model()

    X = df.drop(columns=["p53", "split"])  # the clinical model never sees the outcome
    scores = crossfit_scores("clinical", factory, X, df.p53, df.split, splits)
    assert list(scores.columns) == ["patient_id", "model", "fold", "split", "score"]
    assert len(calls) == 6  # one fresh model per fold + the full-cohort model
    tr = scores[scores.split == "train"].set_index("patient_id")
    assert (tr["fold"].to_numpy() == pd.Series(splits["fold_of"]).loc[tr.index].to_numpy()).all()
    va = scores[scores.split == "validation"].set_index("patient_id")
    assert (va["fold"] == -1).all()
    full = fit_full(make_clinical_model, X[df.split == "train"], df.p53[df.split == "train"])
    np.testing.assert_allclose(va["score"], full.predict_proba(X.loc[va.index])[:, 1])
    with pytest.raises(InputError, match="outcome"):
        make_clinical_model().fit(df, df.p53)
    assert scores["score"].between(0, 1).all()


def test_splits_must_match_training_patients():
    df = cohort_with_split(100)
    bad = make_splits(df.index[df.split == "train"][:-1])
    X = df.drop(columns=["p53", "split"])
    with pytest.raises(InputError, match="differ"):
        crossfit_scores("m", make_clinical_model, X, df.p53, df.split, bad)
    overlap = make_splits(df.index[df.split == "train"])
    overlap["folds"][0]["train"].append(overlap["folds"][0]["val"][0])
    with pytest.raises(InputError, match="both train and val"):
        crossfit_predict(make_clinical_model, X, df.p53, overlap)


def test_combined_model_is_unpenalised_lr_on_logits():
    r = np.random.default_rng(3)
    n = 250
    y = r.binomial(1, 0.5, n)
    W = pd.DataFrame({name: 1 / (1 + np.exp(-(s * (y - 0.5) + r.normal(0, 1, n))))
                      for name, s in (("clinical", 1.5), ("radiomics", 0.5), ("dl", 2.0))},
                     index=[f"P{i}" for i in range(n)])
    model = make_combined_model(nonnegative=False).fit(W, y)
    ref = sm.Logit(y, sm.add_constant(pd.DataFrame(logit(W.to_numpy()), columns=W.columns))).fit(disp=0)
    np.testing.assert_allclose(model.coef_, ref.params[["clinical", "radiomics", "dl"]], rtol=1e-4)
    assert model.intercept_ == pytest.approx(ref.params["const"], abs=1e-4)
    lp = model.intercept_ + logit(W.to_numpy()) @ model.coef_
    np.testing.assert_allclose(model.decision_function(W), lp, atol=1e-8)
    assert isinstance(model, CombinedModel) and model.feature_names_ == ["clinical", "radiomics", "dl"]
    long = W.reset_index(names="patient_id").melt(id_vars="patient_id", var_name="model", value_name="score")
    pd.testing.assert_frame_equal(scores_wide(long, ["clinical", "radiomics", "dl"]).loc[W.index], W,
                                  check_names=False)
    with pytest.raises(InputError, match="missing"):
        model.predict_proba(W.drop(columns="dl"))


def test_nonnegative_combined_model_zeroes_what_the_data_do_not_support():
    """With a component ranked the wrong way, the non-negative fit sets its weight to 0 and the others equal the
    unpenalised fit without it (the KKT solution); with every weight positive both fits agree."""
    r = np.random.default_rng(4)
    n = 400
    y = r.binomial(1, 0.5, n)
    W = pd.DataFrame({name: 1 / (1 + np.exp(-(s * (y - 0.5) + r.normal(0, 1, n))))
                      for name, s in (("clinical", 1.5), ("radiomics", -1.0), ("dl", 2.0))},
                     index=[f"P{i}" for i in range(n)])
    free = make_combined_model(nonnegative=False).fit(W, y)
    assert free.coefficients_["radiomics"] < 0
    model = make_combined_model().fit(W, y)
    assert model.coefficients_["radiomics"] == pytest.approx(0.0, abs=1e-6)
    ref = sm.Logit(y, sm.add_constant(pd.DataFrame(logit(W[["clinical", "dl"]].to_numpy()),
                                                   columns=["clinical", "dl"]))).fit(disp=0)
    np.testing.assert_allclose([model.coefficients_["clinical"], model.coefficients_["dl"]],
                               ref.params[["clinical", "dl"]], rtol=1e-4)
    assert model.intercept_ == pytest.approx(ref.params["const"], abs=1e-4)
    positive = W.assign(radiomics=1 - W["radiomics"])
    np.testing.assert_allclose(make_combined_model().fit(positive, y).coef_,
                               make_combined_model(nonnegative=False).fit(positive, y).coef_, rtol=1e-4)


def test_plain_cohort_frame_with_positional_labels():
    """A cohort table as read from cohort.csv (RangeIndex, patient_id column) works without re-indexing."""
    df = cohort_with_split(120, seed=6).reset_index(drop=True)
    splits = make_splits(df.loc[df.split == "train", "patient_id"])
    X = df.drop(columns=["p53", "split"])
    scores = crossfit_scores("clinical", make_clinical_model, X, df["p53"], df["split"], splits)
    assert sorted(scores.patient_id) == sorted(df.patient_id)
    with pytest.raises(InputError, match="labels/splits"):
        crossfit_predict(make_clinical_model, X, df["p53"].iloc[:-1].to_numpy(), splits)
