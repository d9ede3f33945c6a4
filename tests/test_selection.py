"""Radiomics selection: Spearman redundancy filter, LASSO selector, and no leakage of selection into validation."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score

from p53hcc.fusion.models.radiomics import (
    LassoSelector,
    SpearmanFilter,
    make_radiomics_model,
    neg_log_loss,
    rad_score,
    selected_features_table,
    univariable_auc,
)


def _pair_data(seed=0, n=200):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    strong = y + rng.normal(size=n)  # relevant
    weak = strong + 0.25 * rng.normal(size=n)  # redundant with `strong` (rho > 0.9) but noisier -> less relevant
    other = rng.normal(size=n)  # independent noise
    return np.column_stack([weak, other, strong]), y


def test_univariable_auc_matches_sklearn():
    X, y = _pair_data()
    ref = [roc_auc_score(y, X[:, j]) for j in range(X.shape[1])]
    assert univariable_auc(X, y) == pytest.approx(ref, abs=1e-12)


def test_spearman_filter_keeps_more_relevant_of_pair():
    X, y = _pair_data()
    assert abs(spearmanr(X[:, 0], X[:, 2])[0]) > 0.9
    f = SpearmanFilter(0.9).fit(X, y)
    assert f.get_support().tolist() == [False, True, True]  # `weak` (column 0) dropped although it comes first
    # same decision whatever the column order
    f2 = SpearmanFilter(0.9).fit(X[:, ::-1], y)
    assert f2.get_support().tolist() == [True, True, False]
    # threshold above the pair's |rho|: both kept
    assert SpearmanFilter(0.999).fit(X, y).get_support().all()


def test_spearman_filter_tie_break_is_column_order():
    X, y = _pair_data()
    dup = np.column_stack([X[:, 2], np.exp(X[:, 2])])  # rho = 1, identical relevance (same ranks)
    assert SpearmanFilter(0.9).fit(dup, y).get_support().tolist() == [True, False]
    assert SpearmanFilter(0.9).fit(dup[:, ::-1], y).get_support().tolist() == [True, False]


def test_lasso_selector_finds_signal_and_falls_back():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 30))
    y = (X[:, 0] - X[:, 1] + 0.5 * rng.normal(size=200) > 0).astype(int)
    sel = LassoSelector(cv=5, random_state=0).fit(X, y)
    assert sel.get_support()[:2].all() and not sel.fallback_
    sel = LassoSelector(cv=3, Cs=[1e-6]).fit(X, y)  # penalty so strong nothing survives: top-1 fallback
    assert sel.fallback_ and sel.get_support().sum() == 1 and sel.get_support()[np.argmax(
        np.abs(univariable_auc(X, y) - 0.5))]


def test_fast_log_loss_scorer_equals_sklearns_and_picks_the_same_penalty():
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import get_scorer

    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 12))
    y = np.where(X[:, 0] + rng.normal(size=150) > 0, 3, 7)  # labels that are not 0/1, classes_ = [3, 7]
    lr = LogisticRegression(C=1e4).fit(X[:, :1] * 40, y)  # near-separating: probabilities reach the clipping
    for est, XX in ((lr, X[:, :1] * 40), (LogisticRegression().fit(X, y), X)):
        assert neg_log_loss(est, XX, y) == pytest.approx(get_scorer("neg_log_loss")(est, XX, y), rel=1e-12)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    fits = [LogisticRegressionCV(Cs=np.logspace(-2.5, 1, 15), l1_ratios=(1.0,), solver="liblinear", cv=folds,
                                 scoring=sc, random_state=0, use_legacy_attributes=False).fit(X, y)
            for sc in ("neg_log_loss", neg_log_loss)]
    assert fits[0].C_ == fits[1].C_ and np.array_equal(fits[0].coef_, fits[1].coef_)


def _noise_cohort(seed=0, n=200, p=600):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    y = rng.permutation(np.repeat([0, 1], n // 2))  # labels unrelated to features (shuffled)
    return X, y


def test_null_cohort_auc_near_half_only_when_selection_is_inside_cv():
    cv = StratifiedKFold(5, shuffle=True, random_state=1)
    honest, leaky = [], []
    for seed in range(2):
        X, y = _noise_cohort(seed)
        model = make_radiomics_model(cv=3, Cs=np.logspace(-1, 0, 3))
        honest.append(roc_auc_score(y, cross_val_predict(model, X, y, cv=cv, method="predict_proba")[:, 1]))
        # the leak: select on ALL patients, then cross-validate only the final LR
        model.fit(X, y)
        Xs = model[:-1].transform(X)
        leaky.append(cross_val_score(LogisticRegression(C=10.0), Xs, y, cv=cv, scoring="roc_auc").mean())
    print("null-cohort AUC honest", honest, "leaky", leaky)
    assert abs(np.mean(honest) - 0.5) < 0.1, honest
    assert np.mean(leaky) > 0.7, leaky


def test_radiomics_model_learns_signal_and_reports_table():
    rng = np.random.default_rng(5)
    n, p = 300, 120
    X = rng.normal(size=(n, p))
    X[:, 10] = X[:, 0] + 0.1 * rng.normal(size=n)  # redundant copy of a true feature
    X[:, 20] = 7.0  # constant
    y = (X[:, 0] + X[:, 1] + rng.normal(size=n) > 0).astype(int)
    names = [f"ap_f{j}" for j in range(p)]
    df = pd.DataFrame(X, columns=names)
    tr, va = np.arange(200), np.arange(200, n)
    model = make_radiomics_model(cv=5).fit(df.iloc[tr], y[tr])
    score = rad_score(model, df.iloc[va])
    assert roc_auc_score(y[va], score["rad_score"]) > 0.75
    assert np.allclose(1 / (1 + np.exp(-score["linear_predictor"])), score["rad_score"])
    tab = selected_features_table(model, names)
    assert {"ap_f0", "ap_f1"} <= set(tab["feature"]) and not {"ap_f10", "ap_f20"} & set(tab["feature"])
    assert list(tab.columns) == ["feature", "coefficient"] and np.isfinite(tab.attrs["intercept"])
