"""Reference checks of fusion.stats against published software output in shared/reference-data.

pROC (DeLong AUC/variance/CI/paired test), R dcurves (net benefit), blorr + performance (Hosmer-Lemeshow),
UCLA glm output (odds ratios, Wald and profile CIs). Each folder's README states source and conventions.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.metrics import roc_auc_score

from fusion import stats


def _reference_dir() -> Path:
    env = os.environ.get("P53HCC_REFERENCE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "reference-data"


REF = _reference_dir()
pytestmark = pytest.mark.skipif(not (REF / "pROC").is_dir(),
                                reason=f"reference data not found at {REF} (set P53HCC_REFERENCE_DATA)")


# ------------------------------------------------------------------------------------------- pROC / DeLong
@pytest.fixture(scope="module")
def asah():
    d = pd.read_csv(REF / "pROC" / "aSAH.csv")
    y = (d["outcome"] == "Poor").astype(int).to_numpy()  # case = "Poor" (pROC's 2nd level)
    exp = {k: v["value"] for k, v in json.loads((REF / "pROC" / "expected.json").read_text())["values"].items()}
    return d, y, exp


@pytest.mark.parametrize("marker", ["wfns", "ndka", "s100b"])
def test_delong_auc_variance_ci_match_proc(asah, marker):
    d, y, exp = asah
    auc, var = stats.delong_roc_variance(y, d[marker])
    assert auc == pytest.approx(exp[f"auc_{marker}"], abs=1e-10)
    assert var == pytest.approx(exp[f"var_{marker}"], rel=1e-8)
    assert auc == pytest.approx(roc_auc_score(y, d[marker]), abs=1e-12)  # sklearn cross-check
    res = stats.auc_ci(y, d[marker])
    assert res.method == "delong" and res.se == pytest.approx(np.sqrt(exp[f"var_{marker}"]), rel=1e-8)
    assert (res.ci_low, res.ci_high) == pytest.approx((exp[f"ci_{marker}_lower"], exp[f"ci_{marker}_upper"]),
                                                      abs=1e-4)


def test_delong_ci_subset_matches_proc(asah):
    d, y, exp = asah
    female = (d["gender"] == "Female").to_numpy()
    res = stats.auc_ci(y[female], d.loc[female, "ndka"])
    assert (res.ci_low, res.auc, res.ci_high) == pytest.approx(
        (exp["ci_ndka_female_lower"], exp["auc_ndka_female"], exp["ci_ndka_female_upper"]), abs=1e-4)


@pytest.mark.parametrize("a,b", [("wfns", "s100b"), ("wfns", "ndka"), ("ndka", "s100b")])
def test_paired_delong_matches_proc(asah, a, b):
    d, y, exp = asah
    t = stats.delong_test(y, d[a], d[b])
    key = f"paired_{a}_{b}"
    assert t.z == pytest.approx(exp[f"{key}_Z"], abs=1e-4)
    assert t.p_value == pytest.approx(exp[f"{key}_p"], abs=1e-4)
    assert (t.diff_ci_low, t.diff_ci_high) == pytest.approx((exp[f"{key}_ci_lower"], exp[f"{key}_ci_upper"]),
                                                            abs=1e-4)
    assert (t.auc_a, t.auc_b) == pytest.approx((exp[f"auc_{a}"], exp[f"auc_{b}"]), abs=1e-10)


def test_pairwise_delong_covariance_consistent_with_proc(asah):
    """The DeLong covariances behind the paired tests reproduce pROC's cov(): var(a-b) = va + vb - 2 cov."""
    d, y, exp = asah
    table = stats.pairwise_delong(y, {m: d[m] for m in ("wfns", "ndka", "s100b")})
    assert list(table.columns[:6]) == ["model_a", "model_b", "auc_a", "auc_b", "z", "p_value"]
    for (a, b), cov_key in {("wfns", "ndka"): "cov_wfns_ndka", ("ndka", "s100b"): "cov_ndka_s100b",
                            ("wfns", "s100b"): "cov_s100b_wfns"}.items():
        row = table[(table.model_a == a) & (table.model_b == b)].iloc[0]
        sd = np.sqrt(exp[f"var_{a}"] + exp[f"var_{b}"] - 2 * exp[cov_key])
        assert row.z == pytest.approx((exp[f"auc_{a}"] - exp[f"auc_{b}"]) / sd, rel=1e-7)


def test_bootstrap_ci_close_to_delong(asah):
    d, y, _ = asah
    for marker in ("wfns", "ndka", "s100b"):
        dl = stats.auc_ci(y, d[marker])
        bs = stats.auc_ci(y, d[marker], method="bootstrap", n_boot=2000, seed=1)
        assert bs.method == "bootstrap" and bs.auc == dl.auc
        assert bs.ci_low < dl.auc < bs.ci_high
        assert abs(bs.ci_low - dl.ci_low) < 0.03 and abs(bs.ci_high - dl.ci_high) < 0.03
        assert bs.se == pytest.approx(dl.se, rel=0.15)
    again = stats.auc_ci(y, d["ndka"], method="bootstrap", n_boot=2000, seed=1)
    assert again == stats.auc_ci(y, d["ndka"], method="bootstrap", n_boot=2000, seed=1)  # seeded
