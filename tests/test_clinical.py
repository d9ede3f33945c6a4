"""Clinical model: encoding, OR tables (vs UCLA glm output), stepwise AIC, ClinicalModel, synthetic cohort."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.base import clone

from p53hcc.fusion.models.clinical import (
    ClinicalModel,
    encode_clinical,
    multivariable_table,
    stepwise_aic,
    univariable_table,
)
from p53hcc.tools.errors import InputError
from tests.conftest import REFERENCE_DATA

REF = REFERENCE_DATA


def raw_cohort(n: int = 300, seed: int = 0, beta_ltd: float = 0.03, beta_rim: float = 1.4) -> pd.DataFrame:
    """Cohort-like frame with P53 driven by LTD and rim-APHE only (everything else is noise)."""
    r = np.random.default_rng(seed)
    df = pd.DataFrame({
        "patient_id": [f"P{i:04d}" for i in range(n)],
        "age": r.normal(58, 11, n).round(), "sex": r.choice(["M", "F"], n, p=[0.8, 0.2]),
        "afp": np.exp(r.normal(3, 2.5, n)), "cea": np.exp(r.normal(1, 0.8, n)), "ca199": np.exp(r.normal(2.5, 1, n)),
        "ltd_mm": r.uniform(10, 100, n).round(), "rim_aphe": r.binomial(1, 0.25, n),
        "washout": r.choice(["none", "nonperipheral", "peripheral"], n, p=[0.2, 0.7, 0.1]),
        "delayed_central": r.binomial(1, 0.1, n), "capsule": r.binomial(1, 0.85, n),
        "grade": r.choice([1, 2, 3, 4], n), "mvi": r.binomial(1, 0.35, n)})
    lp = -1.8 + beta_ltd * df["ltd_mm"] + beta_rim * df["rim_aphe"]
    df["p53"] = r.binomial(1, 1 / (1 + np.exp(-lp)))
    return df


def test_encoding_bands_and_indicators():
    df = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "age": [50, 60, 70, 80], "sex": ["M", "F", "m", "F"],
                       "afp": [19.99, 20.0, 399.9, 400.0], "cea": [4.99, 5.0, 1, 1], "ca199": [36.9, 37, 1, 1],
                       "ltd_mm": [10, 20, 30, 40], "rim_aphe": [0, 1, 0, 1],
                       "washout": ["none", "nonperipheral", "peripheral", "NonPeripheral"],
                       "delayed_central": [0, 0, 1, 0], "capsule": [1, 1, 0, 1], "grade": [2, 3, 4, 1],
                       "mvi": [0, 1, 0, 1]})
    pre = encode_clinical(df)
    assert "grade_high" not in pre and "mvi" not in pre  # pathology is unknown before surgery
    full = encode_clinical(df, preoperative_only=False)
    assert list(full.index) == ["a", "b", "c", "d"]
    assert full["afp_band"].tolist() == [0, 1, 1, 2]
    assert full["cea_high"].tolist() == [0, 1, 0, 0]
    assert full["ca199_high"].tolist() == [0, 1, 0, 0]
    assert full["sex_male"].tolist() == [1, 0, 1, 0]
    assert full["washout_nonperipheral"].tolist() == [0, 1, 0, 1]
    assert full["washout_peripheral"].tolist() == [0, 0, 1, 0]
    assert full["grade_high"].tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("column,value,match", [("washout", "maybe", "washout"), ("rim_aphe", 2, "0/1"),
                                                ("ltd_mm", np.nan, "missing"), ("sex", "X", "M or F")])
def test_encoding_errors_name_patient_and_column(column, value, match):
    df = raw_cohort(20)
    df[column] = df[column].astype(object)
    df.loc[7, column] = value
    with pytest.raises(InputError, match=match) as err:
        encode_clinical(df)
    assert err.value.patient_id == "P0007" and err.value.column == column


def test_odds_ratios_reproduce_ucla_glm():
    """Multivariable OR table == R glm(admit ~ gre + gpa + factor(rank)) as printed by UCLA (Wald CIs)."""
    data = pd.read_csv(REF / "ucla_binary" / "binary.csv")
    exp = json.loads((REF / "ucla_binary" / "expected.json").read_text(encoding="utf-8"))["ucla_admission"]
    X = pd.DataFrame({"gre": data.gre, "gpa": data.gpa, **{f"rank{k}": (data["rank"] == k).astype(float)
                                                            for k in (2, 3, 4)}})
    tab = multivariable_table(X, data.admit, p_enter=1.0).set_index("variable")
    for term, coef, ci in zip(exp["terms"][1:], exp["coef"][1:], exp["wald_ci_logit (confint.default)"][1:]):
        assert tab.loc[term, "coef"] == pytest.approx(coef, abs=5e-6)
        assert np.log(tab.loc[term, "ci_low"]) == pytest.approx(ci[0], abs=5e-6)
        assert np.log(tab.loc[term, "ci_high"]) == pytest.approx(ci[1], abs=5e-6)
    assert tab.loc["gre", "p_value"] == pytest.approx(exp["p"][1], abs=5e-6)


def test_univariable_matches_single_logit_and_handles_constant():
    df = raw_cohort(200, seed=3)
    X = encode_clinical(df)
    X["const_col"] = 1.0
    uni = univariable_table(X, df.p53).set_index("variable")
    ref = sm.Logit(df.p53.to_numpy(), sm.add_constant(X[["ltd_mm"]])).fit(disp=0)
    assert uni.loc["ltd_mm", "odds_ratio"] == pytest.approx(np.exp(ref.params["ltd_mm"]), rel=1e-8)
    assert uni.loc["ltd_mm", "p_value"] == pytest.approx(ref.pvalues["ltd_mm"], rel=1e-6)
    assert np.isnan(uni.loc["const_col", "odds_ratio"]) and np.isnan(uni.loc["const_col", "p_value"])
    assert "constant" in uni.loc["const_col", "note"]  # no invented p = 1


def test_stepwise_recovers_true_signal_and_is_deterministic():
    r = np.random.default_rng(1)
    n = 600
    X = pd.DataFrame(r.normal(size=(n, 8)), columns=[f"x{i}" for i in range(8)])
    lp = 1.0 * X["x2"] - 0.8 * X["x5"] + 0.6 * X["x7"]
    y = r.binomial(1, 1 / (1 + np.exp(-lp)))
    assert stepwise_aic(X, y) == ["x2", "x5", "x7"]
    assert stepwise_aic(X, y, direction="backward") == ["x2", "x5", "x7"]
    assert stepwise_aic(X, y) == stepwise_aic(X, y)
    # the chosen set really has the lowest AIC among its one-step neighbours
    aic = lambda cols: sm.Logit(y, sm.add_constant(X[cols])).fit(disp=0).aic
    best = aic(["x2", "x5", "x7"])
    assert all(aic([c for c in ["x2", "x5", "x7"] if c != d]) > best for d in ["x2", "x5", "x7"])
    assert all(aic(["x2", "x5", "x7", a]) > best for a in ["x0", "x1", "x3", "x4", "x6"])


def test_clinical_model_estimator():
    df = raw_cohort(400, seed=2)
    model = ClinicalModel().fit(df.drop(columns='p53'), df.p53)
    assert model.selected_ == ["ltd_mm", "rim_aphe"]
    assert set(model.selected_) <= set(model.screened_)
    # predict_proba equals a direct statsmodels fit on the selected variables
    X = encode_clinical(df)[model.selected_]
    ref = sm.Logit(df.p53.to_numpy(), sm.add_constant(X)).fit(disp=0)
    np.testing.assert_allclose(model.predict_proba(df)[:, 1], ref.predict(sm.add_constant(X)), atol=1e-8)
    assert not hasattr(clone(model), "selected_")
    full = ClinicalModel(preoperative_only=False).fit(df.drop(columns='p53'), df.p53)
    assert "mvi" in full.univariable_["variable"].tolist()
    assert "mvi" not in model.univariable_["variable"].tolist()


def test_synthetic_cohort_multivariable_like_paper():
    synth = pytest.importorskip("p53hcc.tools.cohort.synth.cohort", reason="p53hcc.tools.cohort.synth.cohort (synthetic cohort generator) not available")
    cohort, _ = synth.sample_patients(320, seed=0)
    train = cohort[cohort.split == "train"]
    tab = multivariable_table(encode_clinical(train, preoperative_only=False), train.p53).set_index("variable")
    assert {"ltd_mm", "rim_aphe"} <= set(tab.index)
    assert tab.loc["ltd_mm", "p_value"] < 0.05 and tab.loc["rim_aphe", "p_value"] < 0.05
    assert 1.0 < tab.loc["ltd_mm", "odds_ratio"] < 1.1  # paper: 1.021 per mm
    assert tab.loc["rim_aphe", "odds_ratio"] > 1.5  # paper: 3.844
    model = ClinicalModel().fit(train.drop(columns='p53'), train.p53)
    assert {"ltd_mm", "rim_aphe"} <= set(model.selected_)


def test_no_signal_gives_intercept_only_model():
    df = raw_cohort(150, seed=11, beta_ltd=0.0, beta_rim=0.0)
    df["p53"] = np.random.default_rng(0).binomial(1, 0.4, len(df))
    model = ClinicalModel(p_enter=1e-6).fit(df.drop(columns='p53'), df.p53)
    assert model.selected_ == [] and model.coef_table_.empty
    np.testing.assert_allclose(model.predict_proba(df)[:, 1], df.p53.mean(), atol=1e-8)


def test_separating_predictor_keeps_an_exact_p_value():
    """A predictor that separates the classes has no finite odds ratio, but its association is still tested."""
    from scipy.stats import chi2

    from p53hcc.fusion.models.clinical import multivariable_table

    binary = pd.DataFrame({"x": [1, 1, 1, 0, 0, 0]}, index=[f"P{i}" for i in range(6)])
    uni = univariable_table(binary, [1, 1, 1, 0, 0, 0]).set_index("variable")
    assert np.isnan(uni.loc["x", "odds_ratio"]) and "separation" in uni.loc["x", "note"]
    assert uni.loc["x", "p_value"] == pytest.approx(0.1)  # R: fisher.test(matrix(c(3, 0, 0, 3), 2))$p.value
    cont = pd.DataFrame({"x": np.arange(8.0)}, index=[f"P{i}" for i in range(8)])
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    uni = univariable_table(cont, y).set_index("variable")
    null_deviance = -2 * 8 * np.log(0.5)  # complete separation: the supremum log-likelihood is 0
    assert uni.loc["x", "p_value"] == pytest.approx(chi2.sf(null_deviance, 1), rel=1e-3)
    # it passes the p < 0.05 screen (it used to get p = 1 and vanish), and the joint fit says why it is blank
    X = pd.DataFrame({"x": np.r_[np.zeros(10), np.ones(10)], "z": np.tile([0.0, 1.0], 10)},
                     index=[f"P{i}" for i in range(20)])
    multi = multivariable_table(X, np.r_[np.zeros(10), np.ones(10)].astype(int))
    assert list(multi["variable"]) == ["x"] and multi["note"].str.startswith("not estimable").all()


def test_separated_variable_is_never_selected():
    df = raw_cohort(200, seed=8)
    X = encode_clinical(df)
    X["leak"] = df["p53"].to_numpy(float)  # perfectly separates the outcome: no finite MLE
    uni = univariable_table(X, df.p53).set_index("variable")
    assert np.isnan(uni.loc["leak", "odds_ratio"])
    assert "leak" not in stepwise_aic(X[["ltd_mm", "rim_aphe", "leak"]], df.p53)
