"""Tables 1, 2 and metric tables: test choice, p values vs scipy and the paper's own counts, rendering."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from p53hcc.fusion.models.clinical import encode_clinical
from p53hcc.fusion.report.tables import (
    TABLE1_VARIABLES,
    compare_categorical,
    compare_continuous,
    format_p,
    metric_table,
    permutation_chi2,
    render_table1,
    render_table2,
    table1,
    table2,
)
from p53hcc.fusion.stats.odds import odds_ratio_table
from tests.test_clinical import raw_cohort


def exact_sample(mean: float, sd: float, n: int, seed: int) -> np.ndarray:
    """Normal draws rescaled to have exactly the given sample mean and SD."""
    z = np.random.default_rng(seed).normal(size=n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


def paper_tc() -> pd.DataFrame:
    """The paper's training cohort rebuilt from Table 1 (age, LTD mean/SD, gender, rim-APHE, CEA counts)."""
    def block(p53: int, n: int, male: int, rim: int, cea_high: int, age: tuple, ltd: tuple, seed: int):
        return pd.DataFrame({"p53": p53, "split": "train",
                             "sex": ["M"] * male + ["F"] * (n - male),
                             "rim_aphe": [1] * rim + [0] * (n - rim),
                             "cea": [9.0] * cea_high + [1.0] * (n - cea_high),
                             "age": exact_sample(*age, n, seed), "ltd_mm": exact_sample(*ltd, n, seed + 1)})
    return pd.concat([block(0, 96, 75, 9, 8, (59.50, 12.27), (35.64, 17.22), 0),
                      block(1, 128, 111, 41, 10, (56.13, 11.70), (48.98, 23.47), 2)], ignore_index=True)


def test_paper_table1_p_values_reproduced():
    tidy = table1(paper_tc(), variables=[v for v in TABLE1_VARIABLES
                                         if v.name in ("age", "sex", "cea", "ltd_mm", "rim_aphe")])
    p = tidy[tidy.cohort == "train"].groupby("variable")[["p_value", "test"]].first()
    assert format_p(p.loc["rim_aphe", "p_value"]) == "<0.001"  # paper "<0.001"
    assert format_p(p.loc["cea", "p_value"]) == ">0.99"  # paper ">0.99"
    # paper gender 0.13 is chi-square WITH Yates' correction (0.1295); without it, 0.0899
    assert p.loc["sex", "test"] == "chi2_yates" and format_p(p.loc["sex", "p_value"]) == "0.13"
    assert sps.chi2_contingency([[75, 21], [111, 17]], correction=False).pvalue == pytest.approx(0.0899, abs=1e-4)
    # Age: Student's t on the paper's means/SDs gives 0.038 -> "0.04" as printed
    assert p.loc["age", "test"] == "student_t"  # the rebuilt ages are normal draws: Shapiro-Wilk passes
    ref = sps.ttest_ind_from_stats(59.50, 12.27, 96, 56.13, 11.70, 128, equal_var=True).pvalue
    assert p.loc["age", "p_value"] == pytest.approx(ref, rel=1e-9)
    assert format_p(p.loc["age", "p_value"]) == "0.04"
    assert format_p(p.loc["ltd_mm", "p_value"]) == "<0.001"
    rendered = render_table1(tidy)
    assert "59.50\u00b112.27" in rendered.values
    assert "75 (78.12)" in rendered.values and "41 (32.03)" in rendered.values


@pytest.mark.parametrize("table,paper", [([[65, 31], [75, 53]], "0.21"), ([[13, 83], [9, 119]], "0.16"),
                                         ([[85, 11], [111, 17]], "0.84"), ([[87, 9], [121, 7]], "0.39")])
def test_more_paper_2x2_values_with_yates(table, paper):
    p, test = compare_categorical(table)
    assert test == "chi2_yates" and format_p(p) == paper


def test_small_expected_rule_fisher_vs_paper_chi2():
    # VC CA19-9: 33/8 vs 53/2, expected count 4.27 < 5 -> Fisher (0.017); the paper printed the Yates chi2 0.03
    p, test = compare_categorical([[33, 8], [53, 2]])
    assert test == "fisher_exact" and p == pytest.approx(sps.fisher_exact([[33, 8], [53, 2]]).pvalue)
    p2, test2 = compare_categorical([[33, 8], [53, 2]], small_expected="chi2")
    assert test2 == "chi2_yates" and format_p(p2) == "0.03"


def test_rxc_tables():
    # AFP TC: all expected >= 5 -> plain chi-square, the paper's 0.06
    p, test = compare_categorical([[56, 23, 17], [56, 34, 38]])
    assert test == "chi2" and format_p(p) == "0.06"
    # washout TC has expected counts < 5 -> permutation chi-square, close to scipy's permutation method
    table = np.array([[74, 4, 18], [102, 6, 20]])
    p, test = compare_categorical(table)
    ref = sps.chi2_contingency(table, correction=False,
                               method=sps.PermutationMethod(n_resamples=9999, rng=1)).pvalue
    assert test == "chi2_permutation" and p == pytest.approx(ref, abs=0.02)
    assert permutation_chi2(table, seed=5) == pytest.approx(p, abs=0.02)


def test_continuous_rule_and_scipy():
    r = np.random.default_rng(0)
    a, b = r.normal(0, 1, 60), r.normal(0.5, 1, 70)
    p, test = compare_continuous(a, b)
    assert test == "student_t" and p == pytest.approx(sps.ttest_ind(a, b).pvalue)
    a, b = r.lognormal(0, 1.2, 60), r.lognormal(0.5, 1.2, 70)
    p, test = compare_continuous(a, b)
    assert test == "mann_whitney_u"
    assert p == pytest.approx(sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def test_table1_structure_and_split_comparison():
    df = raw_cohort(200, seed=4)
    df["split"] = np.where(np.arange(200) < 140, "train", "validation")
    tidy = table1(df)
    assert set(tidy.cohort) == {"train", "validation"}
    assert set(tidy.group) == {"0", "1", "all"}
    # the split comparison reuses the same rule: LTD between cohorts
    ltd = tidy[(tidy.variable == "ltd_mm") & (tidy.group == "all")]
    tr, va = df.loc[df.split == "train", "ltd_mm"], df.loc[df.split == "validation", "ltd_mm"]
    assert ltd["p_value"].iloc[0] == pytest.approx(compare_continuous(tr, va)[0])
    # counts add up and no formatted strings in the tidy table
    sex = tidy[(tidy.variable == "sex") & (tidy.cohort == "train") & (tidy.group != "all")]
    assert sex["n"].sum() == 140
    assert tidy["n"].dtype.kind == "i" and tidy["pct"].dtype.kind == "f"
    rendered = render_table1(tidy)
    assert rendered.columns[-1] == "TC vs VC P value"
    assert rendered["Characteristics"].iloc[0] == "Age, years"


def test_table2_equals_odds_ratio_table():
    df = raw_cohort(260, seed=5)
    tab = table2(df)
    X = encode_clinical(df, preoperative_only=False)
    uni = tab[tab.analysis == "univariable"].set_index("variable")
    for var in ["ltd_mm", "rim_aphe", "age", "afp_band"]:
        ref = odds_ratio_table(X[[var]], df.p53).set_index("variable").loc[var]
        for col in ("odds_ratio", "ci_low", "ci_high", "p_value"):
            assert uni.loc[var, col] == pytest.approx(ref[col], rel=1e-6)
    multi = tab[tab.analysis == "multivariable"].set_index("variable")
    ref = odds_ratio_table(X[list(multi.index)], df.p53).set_index("variable")
    for var in multi.index:
        assert multi.loc[var, "odds_ratio"] == pytest.approx(ref.loc[var, "odds_ratio"], rel=1e-6)
        assert multi.loc[var, "ci_high"] == pytest.approx(ref.loc[var, "ci_high"], rel=1e-6)
    assert set(multi.index) == set(uni.index[uni.p_value < 0.05])
    rendered = render_table2(tab)
    assert rendered.loc[rendered.Characteristics == "Rim-APHE", "Multivariable OR"].iloc[0] != ""


def test_metric_table_format():
    long = pd.DataFrame([
        ("clinical", "train", "auc", 0.7161, 0.648, 0.7832), ("clinical", "train", "accuracy", 0.6875, np.nan, np.nan),
        ("clinical", "train", "sensitivity", 0.727, np.nan, np.nan),
        ("clinical", "train", "specificity", 0.635, np.nan, np.nan),
        ("clinical", "validation", "auc", 0.688, 0.581, 0.795)],
        columns=["model", "split", "metric", "estimate", "ci_low", "ci_high"])
    tab = metric_table(long, labels={"clinical": "Clinical model"})
    assert tab.iloc[0].tolist() == ["Clinical model", "TC", "0.688", "0.716 (0.648\u20130.783)", "0.727", "0.635"]
    assert tab.iloc[1]["Cohort"] == "VC" and tab.iloc[1]["Accuracy"] == ""


def test_format_p():
    assert [format_p(x) for x in (0.0004, 0.007, 0.0449, 0.995, np.nan)] == ["<0.001", "0.007", "0.04", ">0.99", ""]
