"""Federated fitting and evaluation maths (fusion.federated*): the server sees only sums of the sites' answers,
and the fits equal the pooled ones where the maths allows it (checked against statsmodels / scikit-learn / the
study's own pooled models on the same patients)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from sklearn.linear_model import LogisticRegression

from p53hcc.fusion.models.clinical import ClinicalModel, encode_clinical
from p53hcc.fusion.models.combined import CombinedModel
from p53hcc.fusion.models.federated import (
    SiteTables,
    bin_of,
    binned_terms,
    lasso_logit,
    local_transport,
    lockstep,
    newton_logit,
)
from p53hcc.fusion.models.federated_fits import clinical_protocol, combined_protocol, radiomics_protocol
from p53hcc.fusion.models.radiomics import SpearmanFilter
from p53hcc.fusion.stats.auc import auc_ci
from p53hcc.fusion.stats.federated import auc_from_bins, brier_from_bins


def _sites(frames: dict[str, pd.DataFrame], y: pd.Series, site_of: np.ndarray, fold=None) -> list[SiteTables]:
    out = []
    for s in np.unique(site_of):
        ids = y.index[site_of == s]
        out.append(SiteTables({k: v.loc[ids] for k, v in frames.items()}, y.loc[ids],
                              pd.Series("train", index=ids),
                              pd.Series(0 if fold is None else fold[site_of == s], index=ids)))
    return out


def _data(n=300, p=4, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"x{j}" for j in range(p)],
                     index=[f"P{i:04d}" for i in range(n)])
    eta = -0.3 + X.to_numpy() @ np.linspace(1.0, -0.5, p)
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float), index=X.index)
    return X, y, rng.integers(0, 3, n)


def test_federated_logistic_regression_equals_the_pooled_mle():
    X, y, site = _data()
    sites = _sites({"t": X}, y, site)
    res, _ = lockstep({"f": newton_logit("t", {"split": "train"}, [{"op": "select", "columns": list(X)}],
                                         X.shape[1])}, local_transport(sites))
    fit = res["f"]
    ref = sm.Logit(y.to_numpy(), sm.add_constant(X.to_numpy())).fit(disp=0, method="newton", tol=1e-12)
    assert fit.converged and fit.n == len(y)
    np.testing.assert_allclose(fit.beta, ref.params, atol=1e-6)
    np.testing.assert_allclose(fit.bse, ref.bse, atol=1e-6)
    assert fit.llf == pytest.approx(ref.llf, abs=1e-6)


def test_federated_l2_and_nonnegative_fits_equal_scikit_learn_and_the_combined_model():
    X, y, site = _data(seed=1)
    sites = _sites({"t": X}, y, site)
    res, _ = lockstep({"l2": newton_logit("t", {}, [{"op": "select", "columns": list(X)}], X.shape[1], l2=0.1)},
                      local_transport(sites))
    ref = LogisticRegression(C=10.0, tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(res["l2"].beta, np.r_[ref.intercept_, ref.coef_[0]], atol=1e-6)
    # the combined model: non-negative weights on standardised logits of probabilities
    rng = np.random.default_rng(2)
    P = pd.DataFrame(rng.uniform(0.02, 0.98, size=(len(y), 3)), index=y.index, columns=["clinical", "radiomics", "dl"])
    P["radiomics"] = np.clip(1 - P["radiomics"] * 0.5 - 0.4 * y, 0.01, 0.99)  # anti-correlated: weight 0
    P["dl"] = np.clip(0.6 * P["dl"] + 0.2 * y, 0.01, 0.99)  # informative, not separating
    res, _ = lockstep({"c": combined_protocol({}, list(P))}, local_transport(_sites({"scores": P}, y, site)))
    pooled = CombinedModel(inputs=list(P)).fit(P, y.to_numpy())
    assert pooled.coefficients_["radiomics"] == 0.0
    for k, v in pooled.coefficients_.items():
        assert res["c"]["coefficients"][k] == pytest.approx(v, abs=1e-6)
    assert res["c"]["intercept"] == pytest.approx(pooled.intercept_, abs=1e-6)


def test_federated_clinical_model_equals_the_pooled_clinical_model():
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    cohort, _ = sample_patients(160, seed=3)
    cohort = cohort.set_index("patient_id", drop=False)
    enc = encode_clinical(cohort)
    y = pd.to_numeric(cohort["p53"]).astype(float)
    site = np.arange(len(y)) % 3
    res, rounds = lockstep({"c": clinical_protocol({"split": "train"}, list(enc.columns))},
                           local_transport(_sites({"clinical": enc}, y, site)))
    pooled = ClinicalModel().fit(cohort.drop(columns="p53"), y)
    spec = res["c"]
    assert spec["selected"] == pooled.selected_ and pooled.selected_
    assert spec["screened"] == pooled.screened_
    np.testing.assert_allclose(spec["beta"], pooled.params_.to_numpy(), atol=1e-6)
    uni = pooled.univariable_.set_index("variable")["p_value"]
    np.testing.assert_allclose([spec["p_values"][v] for v in uni.index], uni.to_numpy(), atol=1e-6)
    assert rounds < 120  # the candidates of each stepwise step share rounds


def test_federated_lasso_satisfies_the_pooled_optimality_conditions():
    X, y, site = _data(n=200, p=8, seed=4)
    C = 0.05
    res, _ = lockstep({"l": lasso_logit("t", {}, [{"op": "select", "columns": list(X)}], X.shape[1], C)},
                      local_transport(_sites({"t": X}, y, site)))
    beta = res["l"]
    X1 = np.column_stack([np.ones(len(y)), X.to_numpy()])
    g = X1.T @ (y.to_numpy() - 1 / (1 + np.exp(-X1 @ beta)))  # gradient of the pooled log-likelihood
    assert abs(g[0]) < 1e-6
    on = beta[1:] != 0
    assert on.any() and (~on).any()
    np.testing.assert_allclose(g[1:][on], np.sign(beta[1:][on]) / C, atol=1e-6)
    assert np.all(np.abs(g[1:][~on]) <= 1 / C + 1e-6)
    ref = LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", tol=1e-10, max_iter=10000).fit(X, y)
    assert set(np.flatnonzero(ref.coef_[0])) == set(np.flatnonzero(on))


def test_radiomics_protocol_on_one_site_keeps_the_pooled_spearman_filter_set():
    X, y, _ = _data(n=120, p=12, seed=5)
    X["x12"] = X["x0"] * 2 + 0.01 * np.random.default_rng(0).normal(size=len(X))  # redundant with x0
    fold = np.arange(len(y)) % 3
    site = np.zeros(len(y), int)
    res, _ = lockstep({"r": radiomics_protocol({"split": "train"}, list(X), [0, 1, 2])},
                      local_transport(_sites({"radiomics": X}, y, site, fold)))
    Z = (X - X.mean()) / X.std(ddof=0)
    keep = SpearmanFilter(0.9).fit(Z.to_numpy(), y.to_numpy()).get_support()
    assert res["r"]["n_spearman"] == int(keep.sum()) == X.shape[1] - 1
    assert set(res["r"]["selected"]) <= {c for c, k in zip(X.columns, keep) if k}


def test_auc_and_delong_from_bins_equal_the_pooled_delong_of_binned_scores():
    rng = np.random.default_rng(6)
    y = (rng.random(150) < 0.4).astype(float)
    s = np.clip(0.35 + 0.25 * y + rng.normal(0, 0.2, 150), 0, 1)
    parts = [binned_terms(s[i::3], y[i::3], 50) for i in range(3)]  # three sites
    total = {k: sum(p[k] for p in parts) for k in parts[0]}
    got = auc_from_bins(total["cases"], total["controls"])
    ref = auc_ci(y, bin_of(s, 50))
    assert got.auc == pytest.approx(ref.auc, abs=1e-12)
    assert got.se == pytest.approx(ref.se, abs=1e-12)
    assert (got.ci_low, got.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), abs=1e-12)
    assert abs(got.auc - auc_ci(y, s).auc) < 0.02  # the binning costs little at 50 bins
    assert brier_from_bins(total) == pytest.approx(np.mean((s - y) ** 2), abs=1e-12)
    constant = binned_terms(np.full(150, 0.3), y, 50)  # a constant model: no AUC, not 0.5 with a zero-width CI
    assert np.isnan(auc_from_bins(constant["cases"], constant["controls"]).auc)


def test_federated_settings_are_typed_and_reject_unknown_keys(tmp_path):
    import yaml

    from p53hcc.tools.errors import P53hccError
    from p53hcc.tools.federated.job import study_config

    user = tmp_path / "fed.yaml"
    user.write_text(yaml.safe_dump({"fl": {"rounds": 3}, "dl": {"epochs": 4}}), encoding="utf-8")
    cfg, fl = study_config(user, "demo", source="command line", **{"fl.arms": "mc", "fl.nonnegative": "false"})
    assert (fl.rounds, fl.arms, fl.nonnegative) == (3, ["mc"], False) and cfg["dl"]["epochs"] == 4
    assert "fl" not in cfg  # the study's own settings travel to the sites without the federation's
    for bad, said in (({"fl.roundz": 1}, "unknown study setting --fl.roundz; did you mean --fl.rounds?"),
                      ({"fl.folds": 2}, "fl.folds = 2: Input should be greater than or equal to 3"),
                      ({"fl.bins": 15}, "fl.bins = 15: must be a multiple of calibration_groups (10)"),
                      ({"fl.arms": ["cnn"]}, "fl.arms = 'cnn': Input should be 'mc' or 'ff'"),
                      ({"fl.rounds": "many"}, "fl.rounds = 'many': Input should be a valid integer")):
        with pytest.raises(P53hccError) as err:
            study_config(None, "demo", source="command line", **bad)
        assert said in str(err.value)


def test_split_cohort_gives_each_site_its_own_rows_with_absolute_paths(tmp_path):
    from p53hcc.tools.errors import InputError
    from p53hcc.tools.federated.job import split_cohort

    (tmp_path / "img").mkdir()
    rows = []
    for i in range(6):
        rows.append({"patient_id": f"P{i}", "split": "train", "p53": i % 2, **{p: f"img/P{i}_{p}.nii.gz" for p in
                     ("ap", "pvp", "dp")}, "mask": f"img/P{i}_mask.nii.gz", "centre": "North" if i < 4 else "South b"})
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    out = split_cohort(tmp_path / "cohort.csv", "centre", tmp_path / "sites")
    assert set(out) == {"site-North", "site-South-b"}
    north = pd.read_csv(out["site-North"])
    assert list(north["patient_id"]) == ["P0", "P1", "P2", "P3"]
    for col in ("ap", "mask"):
        assert north[col].str.startswith(str(tmp_path.resolve())).all()
    with pytest.raises(InputError, match="site column"):
        split_cohort(tmp_path / "cohort.csv", "hospital", tmp_path / "other")
    pd.DataFrame([{**rows[0], "centre": ""}, *rows[1:]]).to_csv(tmp_path / "blank.csv", index=False)
    with pytest.raises(InputError, match="P0"):
        split_cohort(tmp_path / "blank.csv", "centre", tmp_path / "blank")


def test_demo_centres_cover_every_internal_scanner_with_enough_patients_per_site():
    from p53hcc.tools.cohort.synth.cohort import sample_patients
    from p53hcc.tools.cohort.synth.images import INTERNAL_SCANNERS
    from p53hcc.tools.federated.job import DEMO_CENTRES

    assert set(DEMO_CENTRES) == set(INTERNAL_SCANNERS)
    cohort, _ = sample_patients(120, seed=0)  # the demo's size (scanners drawn by their weights, as make_cohort)
    weights = np.array([INTERNAL_SCANNERS[s]["weight"] for s in DEMO_CENTRES], float)
    share = pd.Series(weights / weights.sum(), index=list(DEMO_CENTRES)).groupby(DEMO_CENTRES).sum()
    assert (share * (cohort["split"] == "train").sum() >= 20).all()  # each centre ~20+ training patients


def test_exported_job_is_portable_to_provisioned_sites(tmp_path):
    """The job for a real deployment: the server runs StudyController by import path, each site the script its
    app ships (not this checkout's path), and no site's cohort path is written into it."""
    import json

    from p53hcc.tools.federated.job import run_federated, study_config

    rows = [{"patient_id": f"P{i}", "split": "train", "p53": i % 2, **{p: f"img/P{i}_{p}.nii.gz" for p in
             ("ap", "pvp", "dp")}, "mask": f"img/P{i}_mask.nii.gz", "centre": "N" if i < 4 else "S"} for i in range(8)]
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)
    cfg, fl = study_config(None, "demo", **{"fl.site_column": "centre"})
    job = run_federated(tmp_path / "cohort.csv", tmp_path / "out", cfg, fl, export_only=True)
    server = json.loads((job / "app_server" / "config" / "config_fed_server.json").read_text())
    assert server["workflows"][0]["path"] == "p53hcc.tools.federated.controller.StudyController"
    assert server["workflows"][0]["args"]["sites"] == ["site-N", "site-S"]
    for site in ("site-N", "site-S"):
        text = (job / f"app_{site}" / "config" / "config_fed_client.json").read_text()
        assert json.loads(text)["executors"][0]["executor"]["args"]["task_script_path"] == "client.py"
        assert "cohort.csv" not in text
        assert list((job / f"app_{site}" / "custom").rglob("client.py"))  # found there by name (FLARE's rule)
