"""ICC(2,1) against pingouin.intraclass_corr (reference implementation) and its use as a feature filter."""
import numpy as np
import pandas as pd
import pingouin as pg
import pytest

from p53hcc.tools.radiomics.icc import icc_a1, icc_table, reliable_features


def _readers(n=30, p=6, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(n, p)) * 3.0
    noise = np.linspace(0.05, 3.0, p)  # feature j: increasingly unreliable
    r1 = truth + rng.normal(size=(n, p)) * noise
    r2 = truth + 0.4 + rng.normal(size=(n, p)) * noise  # reader 2 biased: absolute agreement penalises it
    ids = [f"p{i:02d}" for i in range(n)]
    cols = [f"f{j}" for j in range(p)]
    return (pd.DataFrame(r1, columns=cols).assign(patient_id=ids),
            pd.DataFrame(r2, columns=cols).assign(patient_id=ids))


def test_icc_matches_pingouin():
    r1, r2 = _readers()
    ours = icc_table(r1, r2).set_index("feature")
    for feat in ours.index:
        long = pd.concat([r1[["patient_id", feat]].assign(rater="r1"), r2[["patient_id", feat]].assign(rater="r2")])
        ref = pg.intraclass_corr(long, targets="patient_id", raters="rater", ratings=feat).set_index("Type")
        ref = ref.loc["ICC2"] if "ICC2" in ref.index else ref.loc["ICC(A,1)"]
        assert ours.loc[feat, "icc"] == pytest.approx(ref["ICC"], abs=1e-10)
        lo, hi = ref["CI95%"] if "CI95%" in ref.index else ref["CI95"]
        # pingouin rounds its interval to 2 decimals
        assert ours.loc[feat, "ci_low"] == pytest.approx(lo, abs=0.006)
        assert ours.loc[feat, "ci_high"] == pytest.approx(hi, abs=0.006)
    assert ours.loc["f0", "icc"] > 0.9 and ours.loc["f5", "icc"] < 0.75  # noisier features are less reliable


def test_absolute_agreement_penalises_bias_and_constant_is_nan():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 1))
    y = np.stack([x, x + 1.0], axis=1)  # perfect consistency, constant offset
    icc, lo, hi = icc_a1(y)
    assert icc[0] < 0.7 and lo[0] < icc[0] < hi[0]
    icc, _, _ = icc_a1(np.ones((10, 2, 1)))
    assert np.isnan(icc[0])


def test_reliable_features_threshold():
    r1, r2 = _readers()
    tab = icc_table(r1, r2)
    keep = reliable_features(tab, 0.75)
    assert keep and set(keep) == set(tab.loc[tab.icc >= 0.75, "feature"]) and "f5" not in keep
