"""Unit tests of p53hcc.fusion.stats on hand-computable and simulated data (reference checks against pROC,
dcurves, blorr, performance and UCLA are in tests/test_reference_stats.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import brier_score_loss, roc_auc_score

from p53hcc.fusion.stats.auc import auc_ci, delong_roc_variance, delong_test, pairwise_delong
from p53hcc.fusion.stats.calibration import (
    brier_score,
    calibration_curve,
    calibration_slope_intercept,
    hosmer_lemeshow,
)
from p53hcc.fusion.stats.decision import net_benefit
from p53hcc.fusion.stats.metric_rows import model_metrics
from p53hcc.fusion.stats.odds import odds_ratio_table
from p53hcc.fusion.stats.thresholds import confusion_frame, threshold_metrics, youden_threshold


# ------------------------------------------------------------------------------------------- AUC / DeLong
def test_delong_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # many ties
    auc, var = delong_roc_variance(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert 0 < var < 0.01


def test_delong_hand_computed_variance():
    """2 cases, 2 controls: placements by hand. cases {0.6, 0.9}, controls {0.1, 0.6} -> AUC (1.5+2)/4."""
    y, s = [1, 1, 0, 0], [0.6, 0.9, 0.1, 0.6]
    auc, var = delong_roc_variance(y, s)
    v_case, v_ctrl = np.array([0.75, 1.0]), np.array([1.0, 0.75])  # tie counts 1/2
    assert auc == pytest.approx(0.875)
    assert var == pytest.approx(v_case.var(ddof=1) / 2 + v_ctrl.var(ddof=1) / 2)


def test_auc_reverses_and_identical_scores_test():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    s = rng.normal(y, 1.0)
    assert delong_roc_variance(y, -s)[0] == pytest.approx(1 - delong_roc_variance(y, s)[0])
    t = delong_test(y, s, 2 * s + 1)  # same ranking -> no difference
    assert (t.z, t.p_value) == (0.0, 1.0)
    t2 = delong_test(y, s, rng.normal(size=100))
    assert t2.z > 2 and t2.p_value < 0.05
    noise = rng.normal(size=100)
    assert delong_test(y, noise, s).z == pytest.approx(-delong_test(y, s, noise).z)  # sign: a - b


def test_auc_ci_options_and_errors():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(40), np.ones(40)]
    s = rng.normal(y * 3, 1.0)
    res = auc_ci(y, s)
    assert res.ci_high <= 1.0 and res.ci_low < res.auc < res.ci_high
    assert auc_ci(y, s, alpha=0.01).ci_low < auc_ci(y, s, alpha=0.1).ci_low
    with pytest.raises(ValueError, match="method"):
        auc_ci(y, s, method="hanley")
    with pytest.raises(ValueError, match="at least 2"):
        pairwise_delong(y, {"a": s})


@pytest.mark.parametrize("y,s,match", [
    ([0, 1, 1], [0.1, 0.2], "has 2 values but y_true has 3"),
    ([1, 1, 1], [0.1, 0.2, 0.3], "only class 1"),
    ([0, 1, 2], [0.1, 0.2, 0.3], "0/1 labels"),
    ([0, 1, np.nan], [0.1, 0.2, 0.3], "missing"),
    ([0, 1, 1], [0.1, np.nan, 0.3], "NaN"),
])
def test_input_validation(y, s, match):
    with pytest.raises(ValueError, match=match):
        auc_ci(y, s)


def test_probability_range_checked_for_calibration():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier_score([0, 1, 1], [0.1, 1.2, 0.3])


# ------------------------------------------------------------------------------------------- thresholds
def test_youden_threshold_hand_example():
    # cut-offs (midpoints) .15 .25 .35 .45 .65 .85; J = .25 .5 .75 .4167 .6667 .3333 -> best .35
    y = [0, 0, 0, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.5, 0.4, 0.8, 0.9]
    assert youden_threshold(y, s) == pytest.approx(0.35)
    m = threshold_metrics(y, s, 0.35)
    assert (m["sensitivity"], m["specificity"]) == (1.0, 0.75)


def test_youden_tie_goes_to_lowest_cutoff():
    # J = 2/3 at both 0.3 and 0.65
    assert youden_threshold([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.6, 0.4, 0.7, 0.9]) == pytest.approx(0.3)


def test_threshold_metrics_hand_confusion():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.5, 0.2, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]  # 0.5 == threshold counts as positive
    m = threshold_metrics(y, s, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 2, 4)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(4 / 6)
    assert m["ppv"] == pytest.approx(3 / 5) and m["npv"] == pytest.approx(4 / 5)
    assert np.isnan(threshold_metrics(y, s, 2.0)["ppv"])  # nobody positive
    cf = confusion_frame(y, s, 0.5)
    assert list(cf.columns) == ["actual", "predicted", "n"]
    assert cf.set_index(["actual", "predicted"])["n"].to_dict() == {(1, 1): 3, (1, 0): 1, (0, 1): 2, (0, 0): 4}


# ------------------------------------------------------------------------------------------- calibration
@pytest.fixture(scope="module")
def simulated():
    rng = np.random.default_rng(2026)
    lp = rng.normal(0, 1.5, 20000)
    p = expit(lp)
    return rng.binomial(1, p), p


def test_calibration_slope_intercept_simulated(simulated):
    y, p = simulated
    good = calibration_slope_intercept(y, p)
    assert good["slope"] == pytest.approx(1.0, abs=0.05) and good["slope_ci_low"] < 1 < good["slope_ci_high"]
    assert good["intercept"] == pytest.approx(0.0, abs=0.05)
    over = calibration_slope_intercept(y, expit(2 * logit(p)))  # too extreme
    assert over["slope"] == pytest.approx(0.5, abs=0.05) and over["slope_ci_high"] < 1
    under = calibration_slope_intercept(y, expit(logit(p) - 1))  # risks too low on average
    assert under["intercept"] > 0.8 and under["intercept_ci_low"] > 0


def test_brier_and_calibration_curve(simulated):
    y, p = simulated
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    for strategy in ("quantile", "uniform"):
        c = calibration_curve(y, p, n_bins=10, strategy=strategy)
        assert {"bin", "mean_predicted", "observed", "n", "ci_low", "ci_high"} <= set(c.columns)
        assert c["n"].sum() == y.size and len(c) == 10
        assert np.all(np.abs(c["observed"] - c["mean_predicted"]) < 0.03)  # well calibrated
        assert np.all((c["ci_low"] <= c["observed"]) & (c["observed"] <= c["ci_high"]))
    q = calibration_curve(y, p, strategy="quantile")
    assert q["n"].max() - q["n"].min() <= 1  # deciles of risk


def test_hosmer_lemeshow_detects_miscalibration(simulated):
    y, p = simulated
    assert hosmer_lemeshow(y, expit(2 * logit(p))).p_value < 1e-6
    with pytest.raises(ValueError, match="3 distinct"):
        hosmer_lemeshow([0, 1, 0, 1], [0.2, 0.2, 0.7, 0.7])


# ------------------------------------------------------------------------------------------- decision curves
def test_net_benefit_reference_strategies_and_errors():
    y = np.array([1, 0, 0, 1, 0])
    nb = net_benefit(y, {"m": [0.9, 0.1, 0.4, 0.6, 0.0]}, thresholds=[0.2, 0.5])
    assert list(nb.columns[:5]) == ["model", "threshold", "net_benefit", "tp_rate", "fp_rate"]
    allr = nb[nb.model == "all"].set_index("threshold")["net_benefit"]
    assert allr[0.5] == pytest.approx(0.4 - 0.6 * 1.0) and allr[0.2] == pytest.approx(0.4 - 0.6 * 0.25)
    assert (nb[nb.model == "none"]["net_benefit"] == 0).all()
    m = nb[nb.model == "m"].set_index("threshold")
    assert m.loc[0.5, "net_benefit"] == pytest.approx(2 / 5)  # both cases, no control >= 0.5
    assert m.loc[0.2, "net_benefit"] == pytest.approx(2 / 5 - 1 / 5 * 0.25)
    with pytest.raises(ValueError, match="reserved"):
        net_benefit(y, {"all": [0.5] * 5})
    with pytest.raises(ValueError, match="within"):
        net_benefit(y, {"m": [0.5] * 5}, thresholds=[0.5, 1.0])


# ------------------------------------------------------------------------------------------- odds ratios
def test_odds_ratio_table_errors():
    X = pd.DataFrame({"x": [0, 1, 2, 3, 4, 5]})
    with pytest.raises(ValueError, match="separation"):
        odds_ratio_table(X, [0, 0, 0, 1, 1, 1])  # x separates perfectly
    with pytest.raises(ValueError, match="rows"):
        odds_ratio_table(X, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="missing"):
        odds_ratio_table(X.assign(z=[1, np.nan, 0, 1, 0, 1]), [0, 1, 0, 1, 1, 0])


# ------------------------------------------------------------------------------------------- metrics.csv rows
def test_model_metrics_rows(simulated):
    y, p = simulated
    y, p = y[:300], p[:300]
    thr = 0.5
    mm = model_metrics(y, p, thr, model="combined", split="validation")
    assert list(mm.columns) == ["model", "split", "metric", "estimate", "ci_low", "ci_high", "note"]
    assert (mm["model"] == "combined").all() and (mm["split"] == "validation").all()
    need = {"auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "brier", "calibration_slope",
            "calibration_intercept", "hl_p", "threshold"}
    assert need <= set(mm["metric"])
    row = mm.set_index("metric")
    auc = auc_ci(y, p)
    assert tuple(row.loc["auc", ["estimate", "ci_low", "ci_high"]]) == pytest.approx(
        (auc.auc, auc.ci_low, auc.ci_high))
    tm = threshold_metrics(y, p, thr)
    for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):
        assert row.loc[k, "estimate"] == pytest.approx(tm[k])
        assert row.loc[k, "ci_low"] <= tm[k] <= row.loc[k, "ci_high"]
    assert row.loc["threshold", "estimate"] == thr


def test_calibration_slope_nan_under_separation():
    y = np.r_[np.zeros(20), np.ones(20)]
    p = np.r_[np.linspace(0.01, 0.4, 20), np.linspace(0.6, 0.99, 20)]  # perfectly separating score
    cal = calibration_slope_intercept(y, p)
    assert np.isnan(cal["slope"]) and np.isnan(cal["slope_ci_low"])
    assert np.isfinite(cal["intercept"])
    wide = model_metrics(y, p, 0.5, "m", "train", alpha=0.01).set_index("metric")
    narrow = model_metrics(y, p, 0.5, "m", "train", alpha=0.2).set_index("metric")
    assert wide.loc["sensitivity", "ci_low"] < narrow.loc["sensitivity", "ci_low"]
