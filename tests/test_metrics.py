"""Statistics that never invent a number: undefined CIs and tests are NaN with a warning, every CI follows the
configured level, labelled inputs are aligned by patient id, degenerate models are named, and the training-cohort
AUC of cross-fitted scores has the Nadeau-Bengio interval. Each test here failed on the code before issue 14."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from p53hcc.fusion.stats.auc import auc_ci, delong_roc_variance, delong_test, pairwise_delong
from p53hcc.fusion.stats.calibration import smooth_calibration
from p53hcc.fusion.stats.metric_rows import crossfit_auc, degenerate_reason, model_metrics


def _sim(n=200, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-(signal * (y - 0.5) * 2 + rng.normal(size=n))))


# ------------------------------------------------------------------------------------------ undefined -> NaN
def test_auc_ci_with_one_case_is_nan_not_zero_to_one():
    y = np.array([1, 0, 0, 0, 0, 0])
    with pytest.warns(RuntimeWarning, match="2 cases and 2 controls"):
        res = auc_ci(y, [0.9, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert res.auc == 1.0 and np.isnan(res.ci_low) and np.isnan(res.ci_high) and np.isnan(res.se)


def test_delong_test_with_zero_variance_difference_is_undefined_not_p_one():
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect, constant = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.full(6, 0.5)
    with pytest.warns(RuntimeWarning, match="undefined"):
        res = delong_test(y, perfect, constant)
    assert (res.auc_a, res.auc_b) == (1.0, 0.5) and np.isnan(res.p_value) and np.isnan(res.z)
    same = delong_test(y, perfect, perfect * 0.5)  # identical rankings: genuinely no difference
    assert same.z == 0.0 and same.p_value == 1.0


# ------------------------------------------------------------------------------------------ configured level
def test_every_ci_follows_alpha():
    y, p = _sim()
    z90, z95 = sps.norm.ppf(0.95), sps.norm.ppf(0.975)
    m90 = model_metrics(y, p, 0.5, "m", "validation", alpha=0.10).set_index("metric")
    m95 = model_metrics(y, p, 0.5, "m", "validation").set_index("metric")
    _, var = delong_roc_variance(y, p)
    for m, z in ((m90, z90), (m95, z95)):
        assert m.loc["auc", "ci_high"] - m.loc["auc", "estimate"] == pytest.approx(z * np.sqrt(var), rel=1e-9)
    rng = np.random.default_rng(1)
    other = p + rng.normal(0, 0.3, p.size)
    d90, d95 = (pairwise_delong(y, {"a": p, "b": other}, alpha=a).iloc[0] for a in (0.10, 0.05))
    assert (d90.diff_ci_high - d90.diff_ci_low) / (d95.diff_ci_high - d95.diff_ci_low) == pytest.approx(z90 / z95)


# ------------------------------------------------------------------------------------------ alignment rule
def test_labelled_series_are_matched_by_patient_id_everywhere():
    y, p = _sim(80, seed=2)
    ids = [f"P{i:03d}" for i in range(80)]
    ys, ps = pd.Series(y, index=ids), pd.Series(p, index=ids)
    shuffled = ps.sample(frac=1.0, random_state=0)  # same patients, another order
    assert auc_ci(ys, shuffled).auc == pytest.approx(roc_auc_score(y, p))
    assert delong_test(ys, shuffled, ps).z == 0.0
    with pytest.raises(ValueError, match="no value for patient"):
        auc_ci(ys, shuffled.iloc[1:])


# ------------------------------------------------------------------------------------------ degenerate models
def test_constant_model_is_named_and_not_scored():
    y, _ = _sim(60)
    m = model_metrics(y, np.full(60, 0.3), 0.3, "ff_resnet18", "validation").set_index("metric")
    assert m.drop(index=["n", "n_events"])["estimate"].isna().all()
    assert (m["note"].str.contains("constant model")).all()
    fold = np.repeat([0, 1, 2], 20)
    s = np.where(fold == 1, 0.4, np.linspace(0, 1, 60))  # the fold-1 model kept no feature
    assert "fold(s) 1 of 3" in degenerate_reason(s, fold)
    rows = model_metrics(y, s, 0.5, "m", "train", fold=fold).set_index("metric")
    assert np.isnan(rows.loc["auc", "estimate"]) and "fold(s) 1" in rows.loc["auc", "note"]
    assert degenerate_reason(np.linspace(0, 1, 60), fold) is None


# ------------------------------------------------------------------------------------------ training-cohort AUC
def test_crossfit_auc_is_fold_mean_with_nadeau_bengio_interval():
    y, p = _sim(150, seed=3)
    fold = np.tile(np.arange(5), 30)
    res = crossfit_auc(y, p, fold, alpha=0.10)
    aucs = np.array([roc_auc_score(y[fold == k], p[fold == k]) for k in range(5)])
    n_test, n_train = 30, 120
    se = np.sqrt((1 / 5 + n_test / n_train) * aucs.var(ddof=1))  # Nadeau & Bengio (2003), corrected resampled t
    assert res.auc == pytest.approx(aucs.mean())
    assert res.se == pytest.approx(se)
    assert res.ci_high - res.auc == pytest.approx(sps.t.ppf(0.95, 4) * se)
    rows = model_metrics(y, p, 0.5, "m", "train", fold=fold).set_index("metric")
    assert rows.loc["auc", "estimate"] == pytest.approx(aucs.mean())
    assert rows.loc["auc_pooled", "estimate"] == pytest.approx(roc_auc_score(y, p))
    one_class = np.where(fold == 2, 0, y)
    with pytest.warns(RuntimeWarning, match="fold 2 has one class"):
        assert np.isnan(crossfit_auc(one_class, p, fold).auc)


# ------------------------------------------------------------------------------------------ calibration curve
def _lowess_at(x0, x, y, frac):
    """Locally linear tricube-weighted least squares at x0 over the q = floor(frac * n) nearest points (Cleveland
    1979, no robustness iterations): the textbook definition the smoothed calibration curve must follow."""
    k = int(np.floor(frac * x.size))
    d = np.abs(x - x0)
    h = np.sort(d)[k - 1]
    w = np.clip(1 - (d / h) ** 3, 0, None) ** 3
    X = np.column_stack([np.ones_like(x), x - x0])
    beta = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * y))
    return beta[0]


def test_smooth_calibration_is_lowess_and_tracks_the_truth():
    rng = np.random.default_rng(4)
    p = rng.uniform(0.05, 0.95, 400)
    y = rng.binomial(1, p)
    cal = smooth_calibration(y, p, n_boot=50)
    for i in (5, 25, 44):
        x0 = cal["predicted"].iloc[i]
        assert cal["observed"].iloc[i] == pytest.approx(_lowess_at(x0, p, y.astype(float), 2 / 3), abs=1e-6)
    assert (cal["ci_low"] <= cal["observed"]).all() and (cal["observed"] <= cal["ci_high"]).all()
    p = rng.uniform(0.05, 0.95, 4000)
    y = rng.binomial(1, p)
    calibrated, overconfident = smooth_calibration(y, p, n_boot=50), smooth_calibration(y, p**0.3, n_boot=50)
    assert (calibrated["observed"] - calibrated["predicted"]).abs().max() < 0.05  # on the diagonal
    assert (overconfident["observed"] < overconfident["predicted"] - 0.1).mean() > 0.5  # below it
    assert (calibrated["ci_high"] - calibrated["ci_low"]).mean() < (cal["ci_high"] - cal["ci_low"]).mean() / 2
