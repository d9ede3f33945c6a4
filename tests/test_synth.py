"""Synthetic cohort: Table 1 marginals, exact Bayes posterior, AUC targets, images, masks, determinism."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import statsmodels.api as sm
from scipy import stats
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist
from sklearn.metrics import roc_auc_score

from p53hcc.tools.cohort.synth import cohort as synth
from p53hcc.tools.cohort.synth import images as synth_images
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import file_sha256

# Table 1, training cohort, typed again from the paper (independent of p53hcc.tools.cohort.synth): level -> (P53-, P53+).
TABLE1 = {
    "sex": {"M": (75, 111), "F": (21, 17)},
    "ca199_band": {"<37": (85, 111), ">=37": (11, 17)},
    "afp_band": {"<20": (56, 56), "20-400": (23, 34), ">=400": (17, 38)},
    "cea_band": {"<5": (88, 118), ">=5": (8, 10)},
    "grade": {2: (85, 75), 3: (11, 53)},
    "mvi": {0: (65, 75), 1: (31, 53)},
    "rim_aphe": {0: (87, 87), 1: (9, 41)},
    "washout": {"nonperipheral": (74, 102), "peripheral": (4, 6), "none": (18, 20)},
    "delayed_central": {0: (87, 121), 1: (9, 7)},
    "capsule": {0: (13, 9), 1: (83, 119)},
}
TABLE1_CONT = {"age": ((59.50, 12.27), (56.13, 11.70), (18, 90)), "ltd_mm": ((35.64, 17.22), (48.98, 23.47), (10, 100))}
# Population Bayes AUCs of this generative model (5 x 100,000 patients, SD < 0.002); see docs/synthetic_cohort.md.
AUC_ALL, AUC_CLINICAL, AUC_CLIN_PATH, AUC_PREOP = 0.857, 0.772, 0.821, 0.822


@pytest.fixture(scope="module")
def big():
    return synth.sample_patients(2000, seed=11)


def _bands(c: pd.DataFrame) -> pd.DataFrame:
    """Lab bands cut from the numeric values with the paper's cut-offs."""
    return pd.DataFrame({
        "afp_band": pd.cut(c["afp"], [-np.inf, 20, 400, np.inf], right=False, labels=["<20", "20-400", ">=400"]),
        "cea_band": np.where(c["cea"] < 5, "<5", ">=5"), "ca199_band": np.where(c["ca199"] < 37, "<37", ">=37"),
    }).astype(object)


def test_categorical_marginals_match_table1(big):
    cohort, _ = big
    data = pd.concat([cohort, _bands(cohort)], axis=1)
    for var, levels in TABLE1.items():
        for cls in (0, 1):
            sub = data.loc[data.p53 == cls, var]
            total = sum(v[cls] for v in levels.values())
            for level, counts in levels.items():
                p = counts[cls] / total
                se = np.sqrt(p * (1 - p) / len(sub))
                assert abs((sub == level).mean() - p) < 4 * se + 1e-9, (var, cls, level, (sub == level).mean(), p)
    assert set(data["washout"]) <= {"none", "nonperipheral", "peripheral"} and set(data["sex"]) == {"M", "F"}


def test_continuous_marginals_match_table1(big):
    cohort, _ = big
    for var, (m0, m1, (lo, hi)) in TABLE1_CONT.items():
        assert cohort[var].between(lo, hi).all() and (cohort[var] == cohort[var].round()).all()
        for cls, (mean, sd) in enumerate((m0, m1)):
            x = cohort.loc[cohort.p53 == cls, var]
            assert abs(x.mean() - mean) < 4 * sd / np.sqrt(len(x)), (var, cls, x.mean())
            assert abs(x.std() - sd) < 4 * sd / np.sqrt(2 * len(x)), (var, cls, x.std())


def test_truncnorm_moments_are_table1():
    for m0, m1, (lo, hi) in TABLE1_CONT.values():
        for mean, sd in (m0, m1):
            mu, sigma = synth.truncnorm_params(mean, sd, lo - 0.5, hi + 0.5)
            m, v = stats.truncnorm.stats((lo - 0.5 - mu) / sigma, (hi + 0.5 - mu) / sigma, mu, sigma, moments="mv")
            assert m == pytest.approx(mean, abs=1e-6) and np.sqrt(v) == pytest.approx(sd, abs=1e-6)


def test_prevalence_and_split():
    cohort, _ = synth.sample_patients(320, seed=3)
    counts = cohort.groupby(["split", "p53"]).size().to_dict()
    assert counts == {("train", 0): 96, ("train", 1): 128, ("validation", 0): 41, ("validation", 1): 55}
    assert cohort.patient_id.iloc[0] == "SYN0001" and cohort.patient_id.is_unique
    ext, _ = synth.sample_patients(50, seed=3, profile="external")
    assert (ext.split == "external").all() and ext.patient_id.str.startswith("EXT").all()
    assert not np.array_equal(ext.age.to_numpy(), cohort.age.to_numpy()[:50])  # different random stream
    with pytest.raises(P53hccError, match="profile"):
        synth.sample_patients(10, profile="bogus")


def test_posterior_is_the_exact_bayes_posterior(big):
    """Recompute the log-odds from Table 1 directly and check the posterior is calibrated on the labels."""
    cohort, truth = big
    data = pd.concat([cohort, _bands(cohort), truth[["latent_heterogeneity"]]], axis=1)
    logit = np.full(len(data), np.log(128 / 96))
    for var, levels in TABLE1.items():
        n0, n1 = sum(v[0] for v in levels.values()), sum(v[1] for v in levels.values())
        logit += np.log(data[var].map({k: v[1] / n1 for k, v in levels.items()}).astype(float))
        logit -= np.log(data[var].map({k: v[0] / n0 for k, v in levels.items()}).astype(float))
    for var, (m0, m1, (lo, hi)) in TABLE1_CONT.items():
        for sign, (mean, sd) in ((-1, m0), (1, m1)):
            mu, sigma = synth.truncnorm_params(mean, sd, lo - 0.5, hi + 0.5)
            dist = stats.truncnorm((lo - 0.5 - mu) / sigma, (hi + 0.5 - mu) / sigma, mu, sigma)
            logit += sign * np.log(dist.cdf(data[var] + 0.5) - dist.cdf(data[var] - 0.5))
    h = data["latent_heterogeneity"]
    logit += stats.norm.logpdf(h, 0.75, 1) - stats.norm.logpdf(h, 0, 1)
    np.testing.assert_allclose(truth["bayes_logit"], logit, atol=1e-8)
    # calibration: regressing the labels on the Bayes logit gives slope ~1, intercept ~0
    fit = sm.Logit(truth["p53"], sm.add_constant(truth["bayes_logit"].to_numpy())).fit(disp=0)
    lo_ci, hi_ci = np.asarray(fit.conf_int()).T
    assert lo_ci[1] < 1 < hi_ci[1] and lo_ci[0] < 0 < hi_ci[0], fit.params


def test_bayes_aucs(big):
    _, truth = big
    y = truth["p53"]
    assert roc_auc_score(y, truth["bayes_prob"]) == pytest.approx(AUC_ALL, abs=0.03)
    assert roc_auc_score(y, truth["clinical_bayes_prob"]) == pytest.approx(AUC_CLINICAL, abs=0.03)
    assert roc_auc_score(y, truth["clinical_pathology_bayes_prob"]) == pytest.approx(AUC_CLIN_PATH, abs=0.03)
    assert roc_auc_score(y, truth["preop_bayes_prob"]) == pytest.approx(AUC_PREOP, abs=0.03)
    # the latent is class-shifted by d' = 0.75 and adds to the clinical information
    h = truth["latent_heterogeneity"]
    assert h[y == 1].mean() - h[y == 0].mean() == pytest.approx(0.75, abs=4 * np.sqrt(2 / 900))
    assert roc_auc_score(y, truth["preop_bayes_prob"]) > roc_auc_score(y, truth["clinical_bayes_prob"]) + 0.02


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    a = synth.make_cohort(6, root / "a", seed=0)
    b = synth.make_cohort(6, root / "b", seed=0)
    c = synth.make_cohort(6, root / "c", seed=1)
    return a, b, c


def _files(csv):
    root = csv.parent
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_files_different_seed_differs(tiny):
    a, b, c = tiny
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) == 2 + 6 * 9 and fa == fb
    assert all(fa[k] != fc[k] for k in fa if k.startswith("images/"))


def test_identical_across_processes(tiny, tmp_path):
    """A fresh interpreter with another hash seed writes the same bytes (no set/dict-order or time dependence)."""
    code = f"from p53hcc.tools.cohort.synth.cohort import make_cohort; make_cohort(6, {str(tmp_path / 'd')!r}, seed=0)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, timeout=120)
    assert _files(tmp_path / "d" / "cohort.csv") == _files(tiny[0])


def test_cohort_columns_and_volumes(tiny):
    csv = tiny[0]
    cohort = pd.read_csv(csv, keep_default_na=False)
    assert list(cohort.columns) == (synth.COHORT_COLUMNS + synth.R2_COLUMNS + synth.TABULAR_COLUMNS)
    assert cohort.scanner.isin(list(synth_images.INTERNAL_SCANNERS)).all()
    for _, row in cohort.iterrows():
        ref = sitk.ReadImage(str(csv.parent / row.ap))
        sp = synth_images.INTERNAL_SCANNERS[row.scanner]
        assert ref.GetSpacing() == pytest.approx((sp["inplane"], sp["inplane"], sp["slice"]))
        n_vox_1mm = np.prod(np.array(ref.GetSize()) * np.array(ref.GetSpacing()))
        assert n_vox_1mm < 3e6
        for col in ("pvp", "dp", "ap_mask", "pvp_mask", "dp_mask", "ap_mask_r2", "pvp_mask_r2", "dp_mask_r2"):
            img = sitk.ReadImage(str(csv.parent / row[col]))
            assert img.GetSize() == ref.GetSize() and img.GetOrigin() == pytest.approx(ref.GetOrigin())
            assert img.GetDirection() == pytest.approx(ref.GetDirection())
            assert img.GetSpacing() == pytest.approx(ref.GetSpacing())
        for col in ("ap_mask", "pvp_mask", "dp_mask", "ap_mask_r2"):
            m = sitk.GetArrayFromImage(sitk.ReadImage(str(csv.parent / row[col])))
            assert set(np.unique(m)) == {0, 1}
            pts = np.argwhere(m > 0)[:, ::-1] * np.array(ref.GetSpacing())
            diameter = pdist(pts[ConvexHull(pts).vertices]).max()
            assert abs(diameter - row.ltd_mm) < 5.0, (row.patient_id, col, diameter, row.ltd_mm)
        masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(csv.parent / row[c]))) > 0
                 for c in ("ap_mask", "pvp_mask", "dp_mask", "ap_mask_r2")]
        dice = [2 * (masks[0] & m).sum() / (masks[0].sum() + m.sum()) for m in masks[1:]]
        assert all(0.6 < d <= 1.0 for d in dice), dice
    truth = pd.read_csv(csv.parent / "truth.csv")
    assert list(truth.patient_id) == list(cohort.patient_id)
    assert {"bayes_prob", "bayes_logit", "clinical_bayes_prob", "latent_heterogeneity"} <= set(truth.columns)


def test_external_profile_without_second_reader(tmp_path):
    csv = synth.make_cohort(2, tmp_path, seed=0, profile="external", second_reader=False)
    cohort = pd.read_csv(csv)
    assert "ap_mask_r2" not in cohort and (cohort.split == "external").all()
    assert cohort.scanner.isin(list(synth_images.EXTERNAL_SCANNERS)).all()


def _ratio(rec: dict, phase: str, h: float = 0.0, seed: int = 0, centre: bool = False) -> tuple[float, ...]:
    """(tumour inner/liver, tumour outer shell/inner, tumour SD/liver, 2-voxel ring outside the mask/liver)
    signal ratios of one rendered phase.

    "inner" is the part of the mask deeper than 25 % (``centre``: 60 %) of its largest depth."""
    from scipy import ndimage

    scanner = dict(synth_images.INTERNAL_SCANNERS["S1_Aera_1.5T"], bias=0.0)
    images, masks, _, _ = synth_images.render_patient(rec, h, scanner, "demo", np.random.default_rng(seed), False)
    img, m = images[phase].astype(float), masks["ap"] > 0
    depth = ndimage.distance_transform_edt(m, sampling=(scanner["inplane"], scanner["inplane"], scanner["slice"]))
    inner = depth > (0.6 if centre else 0.25) * depth.max()
    shell = m & ~ndimage.binary_erosion(m, iterations=1)
    ring = ndimage.binary_dilation(m, iterations=8) & ~ndimage.binary_dilation(m, iterations=4)
    outside = ndimage.binary_dilation(m, iterations=2) & ~m
    liver = np.median(img[ring])
    return (np.median(img[inner]) / liver, np.median(img[shell]) / np.median(img[inner]), img[inner].std() / liver,
            np.median(img[outside]) / liver)


def test_findings_are_visible():
    base = {"patient_id": "T", "ltd_mm": 50, "rim_aphe": 0, "washout": "none", "delayed_central": 0, "capsule": 0}
    aphe = _ratio(base, "ap")[0]
    assert aphe > 1.3  # non-rim arterial hyper-enhancement
    rim_inner, rim_shell = _ratio({**base, "rim_aphe": 1}, "ap", centre=True)[:2]
    assert rim_inner < 1.0 and rim_shell > 1.3  # rim APHE: bright periphery, hypo-enhancing centre
    iso, washed = _ratio(base, "pvp")[0], _ratio({**base, "washout": "nonperipheral"}, "pvp")[0]
    assert iso > 0.85 and washed < 0.8 and washed < iso - 0.2  # portal-venous washout: darker than liver
    assert _ratio({**base, "delayed_central": 1}, "dp", centre=True)[0] > _ratio(base, "dp", centre=True)[0] + 0.15
    assert _ratio({**base, "capsule": 1}, "pvp")[3] > _ratio(base, "pvp")[3] + 0.1  # enhancing capsule
    # the imaging-only latent: heterogeneity inside the tumour grows with it
    assert _ratio(base, "pvp", h=2.0)[2] > 1.5 * _ratio(base, "pvp", h=-1.0)[2]
