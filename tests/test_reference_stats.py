"""Reference checks of p53hcc.fusion.stats against published software output in tests/data.

pROC (DeLong AUC/variance/CI/paired test), R dcurves (net benefit), blorr + performance (Hosmer-Lemeshow),
UCLA glm output (odds ratios, Wald and profile CIs). Each folder's README states source and conventions.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.metrics import roc_auc_score

from p53hcc.fusion.stats.auc import auc_ci, delong_roc_variance, delong_test, pairwise_delong
from p53hcc.fusion.stats.calibration import calibration_curve, calibration_slope_intercept, hosmer_lemeshow
from p53hcc.fusion.stats.decision import net_benefit
from p53hcc.fusion.stats.odds import odds_ratio_table
from tests.conftest import REFERENCE_DATA

REF = REFERENCE_DATA


# ------------------------------------------------------------------------------------------- pROC / DeLong
@pytest.fixture(scope="module")
def asah():
    d = pd.read_csv(REF / "pROC" / "aSAH.csv")
    y = (d["outcome"] == "Poor").astype(int).to_numpy()  # case = "Poor" (pROC's 2nd level)
    exp = {k: v["value"] for k, v in json.loads((REF / "pROC" / "expected.json").read_text(encoding="utf-8"))["values"].items()}
    return d, y, exp


@pytest.mark.parametrize("marker", ["wfns", "ndka", "s100b"])
def test_delong_auc_variance_ci_match_proc(asah, marker):
    d, y, exp = asah
    auc, var = delong_roc_variance(y, d[marker])
    assert auc == pytest.approx(exp[f"auc_{marker}"], abs=1e-10)
    assert var == pytest.approx(exp[f"var_{marker}"], rel=1e-8)
    assert auc == pytest.approx(roc_auc_score(y, d[marker]), abs=1e-12)  # sklearn cross-check
    res = auc_ci(y, d[marker])
    assert res.method == "delong" and res.se == pytest.approx(np.sqrt(exp[f"var_{marker}"]), rel=1e-8)
    assert (res.ci_low, res.ci_high) == pytest.approx((exp[f"ci_{marker}_lower"], exp[f"ci_{marker}_upper"]),
                                                      abs=1e-4)


def test_delong_ci_subset_matches_proc(asah):
    d, y, exp = asah
    female = (d["gender"] == "Female").to_numpy()
    res = auc_ci(y[female], d.loc[female, "ndka"])
    assert (res.ci_low, res.auc, res.ci_high) == pytest.approx(
        (exp["ci_ndka_female_lower"], exp["auc_ndka_female"], exp["ci_ndka_female_upper"]), abs=1e-4)


@pytest.mark.parametrize("a,b", [("wfns", "s100b"), ("wfns", "ndka"), ("ndka", "s100b")])
def test_paired_delong_matches_proc(asah, a, b):
    d, y, exp = asah
    t = delong_test(y, d[a], d[b])
    key = f"paired_{a}_{b}"
    assert t.z == pytest.approx(exp[f"{key}_Z"], abs=1e-4)
    assert t.p_value == pytest.approx(exp[f"{key}_p"], abs=1e-4)
    assert (t.diff_ci_low, t.diff_ci_high) == pytest.approx((exp[f"{key}_ci_lower"], exp[f"{key}_ci_upper"]),
                                                            abs=1e-4)
    assert (t.auc_a, t.auc_b) == pytest.approx((exp[f"auc_{a}"], exp[f"auc_{b}"]), abs=1e-10)


def test_pairwise_delong_covariance_consistent_with_proc(asah):
    """The DeLong covariances behind the paired tests reproduce pROC's cov(): var(a-b) = va + vb - 2 cov."""
    d, y, exp = asah
    table = pairwise_delong(y, {m: d[m] for m in ("wfns", "ndka", "s100b")})
    assert list(table.columns[:6]) == ["model_a", "model_b", "auc_a", "auc_b", "z", "p_value"]
    for (a, b), cov_key in {("wfns", "ndka"): "cov_wfns_ndka", ("ndka", "s100b"): "cov_ndka_s100b",
                            ("wfns", "s100b"): "cov_s100b_wfns"}.items():
        row = table[(table.model_a == a) & (table.model_b == b)].iloc[0]
        sd = np.sqrt(exp[f"var_{a}"] + exp[f"var_{b}"] - 2 * exp[cov_key])
        assert row.z == pytest.approx((exp[f"auc_{a}"] - exp[f"auc_{b}"]) / sd, rel=1e-7)


def test_bootstrap_ci_close_to_delong(asah):
    d, y, _ = asah
    for marker in ("wfns", "ndka", "s100b"):
        dl = auc_ci(y, d[marker])
        bs = auc_ci(y, d[marker], method="bootstrap", n_boot=2000, seed=1)
        assert bs.method == "bootstrap" and bs.auc == dl.auc
        assert bs.ci_low < dl.auc < bs.ci_high
        assert abs(bs.ci_low - dl.ci_low) < 0.03 and abs(bs.ci_high - dl.ci_high) < 0.03
        assert bs.se == pytest.approx(dl.se, rel=0.15)
    again = auc_ci(y, d["ndka"], method="bootstrap", n_boot=2000, seed=1)
    assert again == auc_ci(y, d["ndka"], method="bootstrap", n_boot=2000, seed=1)  # seeded


# ------------------------------------------------------------------------------------------- R dcurves
def _glm_prob(y, x) -> np.ndarray:
    """dcurves' as_probability: fitted probability of glm(outcome ~ x, binomial) on the same data."""
    return sm.GLM(np.asarray(y, float), sm.add_constant(np.asarray(x, float)),
                  family=sm.families.Binomial()).fit().fittedvalues


def _compare_dca(ours: pd.DataFrame, ref: pd.DataFrame, nia: bool) -> None:
    ref = ref.assign(key=ref["threshold"].round(10))
    ours = ours.assign(key=ours["threshold"].round(10))
    m = ref.merge(ours, left_on=["variable", "key"], right_on=["model", "key"], suffixes=("_r", ""))
    assert len(m) == len(ref), "every R row (model, threshold) must have a counterpart"
    for col in ("net_benefit", "tp_rate", "fp_rate"):
        np.testing.assert_allclose(m[col], m[f"{col}_r"], rtol=0, atol=1e-10, err_msg=col)
    if "test_pos_rate_r" in m:
        np.testing.assert_allclose(m["test_pos_rate"], m["test_pos_rate_r"], atol=1e-10)
    if nia:  # NaN for "all" at pt=0, -inf for the others, as R
        np.testing.assert_allclose(m["net_intervention_avoided"].astype(float),
                                   m["net_intervention_avoided_r"].astype(float), atol=1e-10)


def test_net_benefit_matches_r_dcurves_binary_predictor():
    """cancer ~ famhistory (0/1): exercises the risk==0/1 convention (zeros never positive, even at pt=0)."""
    d = pd.read_csv(REF / "dcurves" / "df_binary.csv")
    ours = net_benefit(d["cancer"].astype(int), {"famhistory": d["famhistory"]},
                             thresholds=np.arange(0, 1.0, 0.01))
    assert list(ours["model"].unique()) == ["all", "none", "famhistory"]
    _compare_dca(ours, pd.read_csv(REF / "dcurves" / "r_case1_results.csv"), nia=True)
    _compare_dca(ours, pd.read_csv(REF / "dcurves" / "r_dca_famhistory.csv"), nia=False)


def test_net_benefit_matches_r_dcurves_with_harm():
    d = pd.read_csv(REF / "dcurves" / "df_cancer_dx.csv")
    ours = net_benefit(d["cancer"], {"marker": _glm_prob(d["cancer"], d["marker"])},
                             thresholds=np.arange(0, 36) / 100, harm={"marker": 0.0333})
    _compare_dca(ours, pd.read_csv(REF / "dcurves" / "r_case3_results.csv"), nia=True)


def test_net_benefit_matches_r_dcurves_continuous_probability():
    d = pd.read_csv(REF / "dcurves" / "df_binary.csv")
    y = d["cancer"].astype(int)
    ours = net_benefit(y, pd.DataFrame({"age": _glm_prob(y, d["age"])}))  # default thresholds .01-.99
    ref = pd.read_csv(REF / "dcurves" / "r_simple_binary_dca_result_df.csv")
    _compare_dca(ours, ref[ref["threshold"] > 0], nia=False)


# ------------------------------------------------------------------------------------------- Hosmer-Lemeshow
def _hl_case(name: str) -> dict:
    return json.loads((REF / "blorr" / "expected_hosmer_lemeshow.json").read_text(encoding="utf-8"))["cases"][name]


def test_hosmer_lemeshow_matches_blorr_hsb2():
    h = pd.read_csv(REF / "blorr" / "hsb2.csv")
    race = pd.get_dummies(h["race"].astype(str), prefix="race", drop_first=True).astype(float)  # ref level 1
    X = sm.add_constant(pd.concat([race, h[["read", "science"]]], axis=1))
    p = sm.Logit(h["honcomp"], X).fit(disp=0).predict(X)
    case = _hl_case("hsb2_blorr")
    res = hosmer_lemeshow(h["honcomp"], p)
    assert res.statistic == pytest.approx(case["expected"]["chi2"], abs=1e-4)
    assert res.df == case["expected"]["df"]
    assert res.p_value == pytest.approx(case["expected"]["p"], abs=1e-4)
    expected = pd.DataFrame(case["partition_table"]["rows"], columns=case["partition_table"]["columns"])
    np.testing.assert_array_equal(res.table["n"], expected["total"])
    np.testing.assert_array_equal(res.table["obs_1"], expected["obs_1"])
    np.testing.assert_allclose(res.table[["exp_1", "exp_0"]].round(2), expected[["exp_1", "exp_0"]], atol=1e-9)
    # the quantile calibration curve uses the same deciles of risk
    curve = calibration_curve(h["honcomp"], p, n_bins=10, strategy="quantile")
    np.testing.assert_array_equal(curve["n"], expected["total"])
    np.testing.assert_allclose(curve["observed"], expected["obs_1"] / expected["total"])
    np.testing.assert_allclose((curve["mean_predicted"] * curve["n"]).round(2), expected["exp_1"], atol=1e-9)


@pytest.mark.parametrize("case,formula,groups", [("mtcars_performance", ("vs", ["wt", "mpg"]), 10),
                                                 ("mtcars_g6_unattributed", ("am", ["wt", "hp"]), 6)])
def test_hosmer_lemeshow_matches_mtcars(case, formula, groups):
    m = pd.read_csv(REF / "mtcars" / "mtcars.csv")
    outcome, terms = formula
    X = sm.add_constant(m[terms])
    p = sm.Logit(m[outcome], X).fit(disp=0).predict(X)
    exp = _hl_case(case)["expected"]
    res = hosmer_lemeshow(m[outcome], p, n_groups=groups)
    digits = 3 if case == "mtcars_performance" else 4  # precision printed by the source
    assert res.statistic == pytest.approx(exp["chi2"], abs=0.6 * 10 ** -digits)
    assert res.df == exp["df"]
    assert res.p_value == pytest.approx(exp["p"], abs=0.6 * 10 ** -digits)


# ------------------------------------------------------------------------------------------- UCLA glm
@pytest.fixture(scope="module")
def ucla():
    d = pd.read_csv(REF / "ucla_binary" / "binary.csv")
    rank = pd.get_dummies(d["rank"], prefix="rank", drop_first=True).astype(float)
    X = pd.concat([d[["gre", "gpa"]], rank], axis=1)
    return X, d["admit"], json.loads((REF / "ucla_binary" / "expected.json").read_text(encoding="utf-8"))["ucla_admission"]


def test_odds_ratio_wald_matches_ucla(ucla):
    X, y, exp = ucla
    t = odds_ratio_table(X, y, ci="wald")
    assert list(t["variable"]) == ["const", "gre", "gpa", "rank_2", "rank_3", "rank_4"]
    np.testing.assert_allclose(t["coef"], exp["coef"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t["se"], exp["se"], rtol=1e-5)
    np.testing.assert_allclose(t["p_value"], exp["p"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(t["odds_ratio"], exp["OR"], rtol=1e-5)
    wald = np.array(exp["wald_ci_logit (confint.default)"])
    np.testing.assert_allclose(np.log(t[["ci_low", "ci_high"]].to_numpy()), wald, rtol=1e-5, atol=1e-7)


def test_odds_ratio_profile_ci_matches_mass_confint(ucla):
    X, y, exp = ucla
    t = odds_ratio_table(X, y, ci="profile")
    prof = np.array(exp["profile_ci_logit (confint, MASS)"])
    # MASS interpolates its profile grid; the exact roots agree to ~1e-4 relative
    np.testing.assert_allclose(np.log(t[["ci_low", "ci_high"]].to_numpy()), prof, rtol=2e-4)
    np.testing.assert_allclose(t[["ci_low", "ci_high"]].to_numpy(), np.array(exp["OR_profile_ci"]), rtol=2e-4)
    wald = odds_ratio_table(X, y, ci="wald")
    assert not np.allclose(t["ci_low"], wald["ci_low"], rtol=1e-3)  # really a different interval


def test_calibration_is_perfect_in_sample_for_ml_logistic(ucla):
    """An unpenalised logistic model's own fitted probabilities have slope 1 and intercept 0 exactly
    (score equations of the ML fit), a reference identity for calibration_slope_intercept."""
    X, y, _ = ucla
    Xc = sm.add_constant(X)
    p = sm.Logit(y, Xc).fit(disp=0).predict(Xc)
    cal = calibration_slope_intercept(y, p)
    assert cal["slope"] == pytest.approx(1.0, abs=1e-6)
    assert cal["intercept"] == pytest.approx(0.0, abs=1e-6)
    assert cal["slope_ci_low"] < 1 < cal["slope_ci_high"]
