"""The statistics API as users call it from notebooks: one alignment rule (by patient id for labelled inputs,
integer ids included; duplicates refused), the confidence level checked everywhere, NaN with a reason where a
statistic is undefined, and a clear error for every input no statistic can use."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from p53hcc.fusion.models.clinical import stepwise_aic
from p53hcc.fusion.models.nomogram import Nomogram
from p53hcc.fusion.report.tables import compare_categorical
from p53hcc.fusion.stats.auc import auc_ci, delong_test, pairwise_delong
from p53hcc.fusion.stats.calibration import calibration_slope_intercept, hosmer_lemeshow, smooth_calibration
from p53hcc.fusion.stats.decision import net_benefit, threshold_grid
from p53hcc.fusion.stats.federated import auc_from_bins
from p53hcc.fusion.stats.metric_rows import crossfit_auc, model_metrics
from p53hcc.fusion.stats.odds import odds_ratio_table, profile_ci
from p53hcc.tools.errors import InputError


@pytest.fixture(scope="module")
def cohort():
    """60 patients with integer ids (not in row order), a score with signal, 3 folds, one predictor."""
    rng = np.random.default_rng(3)
    n = 60
    ids = rng.permutation(np.arange(1001, 1001 + n))
    x = rng.normal(size=n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-1.5 * x))).astype(int)
    score = 1 / (1 + np.exp(-(x + rng.normal(0, 0.8, n))))
    fold = np.arange(n) % 3
    return pd.DataFrame({"y": y, "score": score, "x": x, "fold": fold, "other": rng.uniform(size=n)}, index=ids)


def _shuffled(s: pd.Series, seed: int = 1) -> pd.Series:
    return s.iloc[np.random.default_rng(seed).permutation(len(s))]


# ----------------------------------------------------------------------------------------- one alignment rule
@pytest.mark.parametrize("as_text", [False, True])
def test_labelled_inputs_are_matched_by_id_integer_ids_included(cohort, as_text):
    df = cohort.set_axis(cohort.index.astype(str)) if as_text else cohort
    ref = auc_ci(df["y"].to_numpy(), df["score"].to_numpy())
    assert auc_ci(df["y"], _shuffled(df["score"])).auc == pytest.approx(ref.auc)
    t = delong_test(df["y"], _shuffled(df["score"]), _shuffled(df["other"], 2))
    assert t.auc_a == pytest.approx(ref.auc)
    assert model_metrics(df["y"], _shuffled(df["score"]), 0.5, "m", "validation")["estimate"].iloc[0] == \
        pytest.approx(ref.auc)


def test_odds_ratio_table_matches_a_labelled_y_by_id(cohort):
    X, y = cohort[["x"]], cohort["y"]
    ref = odds_ratio_table(X, y.to_numpy())
    got = odds_ratio_table(X, _shuffled(y))
    pd.testing.assert_frame_equal(got, ref)
    with pytest.raises(ValueError, match="no value for patient"):
        odds_ratio_table(X, _shuffled(y).iloc[1:])
    with pytest.raises(ValueError, match="row numbers"):  # ids cannot be matched to X's row numbers
        odds_ratio_table(X.reset_index(drop=True), y.set_axis(y.index.astype(str)))


def test_a_duplicated_id_is_refused(cohort):
    y, s = cohort["y"], cohort["score"]
    dup_y = pd.concat([y, y.iloc[:1]])
    with pytest.raises(ValueError, match="duplicate patient id"):
        auc_ci(dup_y, pd.concat([s, s.iloc[:1]]).to_numpy())
    with pytest.raises(ValueError, match="duplicate patient id"):
        auc_ci(y, pd.concat([s, s.iloc[:1]]))


def test_crossfit_auc_aligns_the_folds_like_the_scores(cohort):
    y, s, fold = cohort["y"], cohort["score"], cohort["fold"]
    ref = crossfit_auc(y.to_numpy(), s.to_numpy(), fold.to_numpy())
    got = crossfit_auc(y, _shuffled(s), _shuffled(fold, 5))
    assert (got.auc, got.ci_low, got.ci_high) == pytest.approx((ref.auc, ref.ci_low, ref.ci_high))
    rows = model_metrics(y, _shuffled(s), 0.5, "m", "train", fold=_shuffled(fold, 7))
    assert rows.set_index("metric").loc["auc", "estimate"] == pytest.approx(ref.auc)


def test_net_benefit_aligns_labelled_scores(cohort):
    y, s = cohort["y"], cohort["score"]
    ref = net_benefit(y.to_numpy(), {"m": s.to_numpy()}, thresholds=[0.2, 0.5])
    pd.testing.assert_frame_equal(net_benefit(y, {"m": _shuffled(s)}, thresholds=[0.2, 0.5]), ref)


# ------------------------------------------------------------------------------------------- confidence level
@pytest.mark.parametrize("alpha", [0, 1, -0.05, 1.5, float("nan"), "x"])
def test_alpha_outside_0_1_is_refused_everywhere(cohort, alpha):
    y, s, o, fold = (cohort[c].to_numpy() for c in ("y", "score", "other", "fold"))
    calls = [lambda: auc_ci(y, s, alpha=alpha), lambda: delong_test(y, s, o, alpha=alpha),
             lambda: pairwise_delong(y, {"a": s, "b": o}, alpha=alpha),
             lambda: crossfit_auc(y, s, fold, alpha=alpha),
             lambda: calibration_slope_intercept(y, s, alpha=alpha),
             lambda: odds_ratio_table(cohort[["x"]], y, alpha=alpha),
             lambda: odds_ratio_table(cohort[["x"]], y, ci="profile", alpha=alpha),
             lambda: model_metrics(y, s, 0.5, "m", "validation", alpha=alpha),
             lambda: smooth_calibration(y, s, n_boot=5, alpha=alpha),
             lambda: auc_from_bins(np.array([1, 2, 3]), np.array([3, 2, 1]), alpha=alpha),
             lambda: profile_ci(y, pd.DataFrame({"const": 1.0, "x": cohort["x"].to_numpy()}), alpha=alpha)]
    for call in calls:
        with pytest.raises(ValueError, match="alpha must be"):
            call()


# ------------------------------------------------------------------------------------------------ calibration
def test_constant_prediction_has_no_slope(cohort):
    y = cohort["y"].to_numpy()
    cal = calibration_slope_intercept(y, np.full(y.size, 0.3))
    assert np.isnan([cal["slope"], cal["slope_ci_low"], cal["slope_ci_high"]]).all()
    assert "constant prediction" in cal["slope_note"]
    assert cal["intercept"] == pytest.approx(np.log(y.mean() / (1 - y.mean())) - np.log(0.3 / 0.7), abs=1e-6)


def test_predictions_of_exactly_0_and_1_give_nan_with_the_reason_in_metrics(cohort):
    y = cohort["y"].to_numpy()
    p = np.where(np.arange(y.size) % 4 == 0, 1 - y, y).astype(float)  # saturated and partly wrong
    cal = calibration_slope_intercept(y, p)
    assert np.isnan([cal[k] for k in ("slope", "intercept", "intercept_ci_low", "intercept_ci_high")]).all()
    assert "exactly 0 or 1" in cal["intercept_note"]
    p2 = np.clip(cohort["score"].to_numpy(), 0.05, 0.95)
    p2[:3] = [0.0, 1.0, 1.0]
    rows = model_metrics(y, p2, 0.5, "m", "validation").set_index("metric")
    assert np.isnan(rows.loc["calibration_intercept", "estimate"])
    assert "exactly 0 or 1" in rows.loc["calibration_intercept", "note"]
    assert rows.loc["auc", "note"] == ""


def test_a_fit_that_is_not_a_maximum_of_its_likelihood_is_not_reported(cohort, monkeypatch):
    """A fit that claims convergence at an absurd estimate (as statsmodels did for saturated predictions:
    intercept 2e15 with a zero-width CI) is checked against its own likelihood and score."""
    import statsmodels.api as sm

    real = sm.GLM.fit

    def claims_convergence(self, *a, **k):
        res = real(self, *a, **k)
        res.params = np.asarray(res.params) + 2e15
        return res

    monkeypatch.setattr(sm.GLM, "fit", claims_convergence)
    cal = calibration_slope_intercept(cohort["y"].to_numpy(), cohort["score"].to_numpy())
    assert np.isnan([cal["slope"], cal["intercept"]]).all()
    assert "not a maximum of its likelihood" in cal["intercept_note"]


def test_hosmer_lemeshow_warns_on_small_expected_counts(cohort):
    rng = np.random.default_rng(0)
    p = rng.uniform(0.001, 0.02, 300)
    y = np.zeros(300, int)
    y[[10, 200]] = 1  # 2 events in 300
    with pytest.warns(RuntimeWarning, match="expected counts below 5"):
        hl = hosmer_lemeshow(y, p)
    assert "unreliable" in hl.note
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # model_metrics carries it as the rows' note instead
        rows = model_metrics(y, p, 0.01, "m", "validation").set_index("metric")
    assert "Hosmer-Lemeshow p unreliable" in rows.loc["hl_p", "note"]
    assert rows.loc["auc", "note"] == ""
    big = rng.uniform(0.2, 0.8, 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hosmer_lemeshow((rng.uniform(size=2000) < big).astype(int), big).note == ""


# ---------------------------------------------------------------------------------- models and report tables
@pytest.mark.parametrize("position", [0, 1, 2])
def test_nomogram_refuses_a_nan_coefficient_wherever_it_is(position):
    coefs = {"a": 1.0, "b": -0.5, "c": 2.0}
    coefs[list(coefs)[position]] = float("nan")
    with pytest.raises(InputError, match="is nan"):
        Nomogram.from_logistic(coefs, 0.1, {"a": (0, 1), "b": (0, 2), "c": (1, 3)})


@pytest.mark.parametrize("bad", [{"intercept": float("inf")}, {"range": (0, float("nan"))}, {"range": (1,)}])
def test_nomogram_refuses_other_unusable_inputs(bad):
    ranges = {"a": (0, 1), "b": bad.get("range", (0, 2))}
    with pytest.raises(InputError, match="nomogram"):
        Nomogram.from_logistic({"a": 1.0, "b": 0.5}, bad.get("intercept", 0.0), ranges)


def test_stepwise_aic_needs_both_classes(cohort):
    with pytest.raises(InputError, match="both classes"):
        stepwise_aic(cohort[["x", "other"]], np.zeros(len(cohort), int))


@pytest.mark.parametrize("counts, match", [([[3, np.nan], [2, 5]], "NaN"), ([[3.5, 2], [2, 5]], "whole numbers"),
                                           ([[3, -1], [2, 5]], "whole numbers"), ([1, 2, 3], "2-D")])
def test_compare_categorical_refuses_counts_that_are_not_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        compare_categorical(np.array(counts, dtype=float))


@pytest.mark.parametrize("args", [(0.01, 0.99, 0), (0.01, 0.99, -0.01), (0.5, 0.2, 0.01), (0.0, 1.0, 0.1),
                                  (0.01, float("nan"), 0.01)])
def test_threshold_grid_refuses_an_impossible_grid(args):
    with pytest.raises(ValueError, match="threshold grid"):
        threshold_grid(*args)
    assert threshold_grid(0.01, 0.99, 0.01).size == 99
