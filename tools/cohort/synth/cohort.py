"""Synthetic three-phase DCE-MRI cohort with known ground truth (the yardstick of every later stage).

The tabular part draws P53 status and every clinical, pathological and semantic MRI variable class-conditionally
from the paper's Table 1 training cohort (TC, n=224: 96 P53-, 128 P53+). Given the class, all variables (and the
imaging-only latent "heterogeneity") are drawn independently, so the Bayes posterior is exact:

    logit P(p53=1 | x) = log(pi / (1 - pi)) + sum_j log f_j(x_j | 1) / f_j(x_j | 0)

with each f_j the very distribution that was sampled (band probabilities, interval probabilities of the rounded
truncated normals, the latent's normal densities). ``truth.csv`` keeps that posterior and its parts, so any model's
AUC can be compared with the best achievable AUC on the same patients. The images are rendered by
:mod:`p53hcc.tools.cohort.synth.images`; see ``docs/synthetic_cohort.md`` for the whole generative model.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, special, stats
from tqdm import tqdm

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_table
from p53hcc.tools.schema import CLINICAL_COLUMNS, IMAGE_COLUMNS, R2_MASK_COLUMNS

#: P53+ prevalence of the training cohort (Table 1: 128 / 224; the whole study has 183 / 320).
PREVALENCE = 128 / 224
#: Class separation of the imaging-only latent: N(0, 1) in P53-, N(LATENT_SHIFT, 1) in P53+.
LATENT_SHIFT = 0.75
TRAIN_FRACTION = 0.7
N_SECOND_READER = 30  # the paper re-drew the ROIs of 30 randomly chosen cases

#: Categorical variables: level -> (count in P53- TC, count in P53+ TC), Table 1.
CATEGORICAL: dict[str, dict] = {
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
#: Continuous variables, integer-valued: (mean, SD) per class in Table 1 and the support [lo, hi] (inclusive).
CONTINUOUS: dict[str, dict] = {
    "age": {"moments": ((59.50, 12.27), (56.13, 11.70)), "support": (18, 90)},
    "ltd_mm": {"moments": ((35.64, 17.22), (48.98, 23.47)), "support": (10, 100)},  # inclusion: 10-100 mm
}
#: Which block each variable belongs to (for the partial posteriors in truth.csv).
GROUPS = {
    "age": "demographic_lab", "sex": "demographic_lab", "afp_band": "demographic_lab",
    "cea_band": "demographic_lab", "ca199_band": "demographic_lab",
    "grade": "pathology", "mvi": "pathology",
    "ltd_mm": "semantic", "rim_aphe": "semantic", "washout": "semantic", "delayed_central": "semantic",
    "capsule": "semantic",
}
#: Numeric lab values are drawn log-uniformly inside their band, identically in both classes (so only the band
#: carries information and the posterior stays exact): band -> (low, high) of the value.
LAB_RANGES = {
    "afp": ("afp_band", {"<20": (1.0, 20.0), "20-400": (20.0, 400.0), ">=400": (400.0, 20000.0)}),
    "cea": ("cea_band", {"<5": (0.5, 5.0), ">=5": (5.0, 100.0)}),
    "ca199": ("ca199_band", {"<37": (2.0, 37.0), ">=37": (37.0, 1000.0)}),
}
PROFILES = {"internal": ("SYN", 1), "external": ("EXT", 2)}


@functools.cache
def truncnorm_params(mean: float, sd: float, lo: float, hi: float) -> tuple[float, float]:
    """Underlying (mu, sigma) of a normal truncated to [lo, hi] whose truncated mean and SD are (mean, sd).

    Table 1 describes patients that already met the 10-100 mm inclusion rule, so its mean +- SD are moments of
    the truncated distribution, not of the normal before truncation.
    """

    def gap(p: np.ndarray) -> list[float]:
        mu, log_sigma = p
        sigma = np.exp(log_sigma)
        a, b = (lo - mu) / sigma, (hi - mu) / sigma
        m, v = stats.truncnorm.stats(a, b, loc=mu, scale=sigma, moments="mv")
        return [float(m) - mean, float(np.sqrt(v)) - sd]

    sol = optimize.fsolve(gap, x0=[mean, np.log(sd)], xtol=1e-12)
    return float(sol[0]), float(np.exp(sol[1]))


def _rounded_truncnorm(var: str, cls: int) -> stats.rv_continuous:
    """Frozen truncated normal of a continuous variable for one class, truncated to [lo - 0.5, hi + 0.5]."""
    (mean, sd), (lo, hi) = CONTINUOUS[var]["moments"][cls], CONTINUOUS[var]["support"]
    mu, sigma = truncnorm_params(mean, sd, lo - 0.5, hi + 0.5)
    return stats.truncnorm((lo - 0.5 - mu) / sigma, (hi + 0.5 - mu) / sigma, loc=mu, scale=sigma)


def _integer_logpmf(var: str, cls: int, x: np.ndarray) -> np.ndarray:
    """log P(round(X) = x | class) for the rounded truncated normal (an exact interval probability)."""
    dist = _rounded_truncnorm(var, cls)
    return np.log(dist.cdf(np.asarray(x, float) + 0.5) - dist.cdf(np.asarray(x, float) - 0.5))


def _level_probs(var: str) -> tuple[list, np.ndarray]:
    """Levels of a categorical variable and their probabilities per class (shape: levels x 2)."""
    levels = list(CATEGORICAL[var])
    counts = np.array([CATEGORICAL[var][lv] for lv in levels], float)
    return levels, counts / counts.sum(axis=0, keepdims=True)


def log_likelihood_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Per-variable log f(x | P53+) - log f(x | P53-) for every patient, plus the latent's term.

    ``df`` needs the raw variables (``afp_band`` etc. or the numeric labs, which are banded here).
    """
    bands = band_labs(df)
    out = pd.DataFrame(index=df.index)
    for var in CATEGORICAL:
        levels, probs = _level_probs(var)
        idx = pd.Index(levels).get_indexer(bands[var] if var in bands else df[var])
        if (idx < 0).any():
            raise P53hccError(f"synth: unknown level of {var}: {sorted(set(df[var][idx < 0]))}")
        out[var] = np.log(probs[idx, 1]) - np.log(probs[idx, 0])
    for var in CONTINUOUS:
        out[var] = _integer_logpmf(var, 1, df[var]) - _integer_logpmf(var, 0, df[var])
    if "latent_heterogeneity" in df:
        h = df["latent_heterogeneity"].to_numpy(float)
        out["latent"] = stats.norm.logpdf(h, LATENT_SHIFT, 1) - stats.norm.logpdf(h, 0, 1)
    return out


def band_labs(df: pd.DataFrame) -> pd.DataFrame:
    """Band columns (``afp_band`` ...) of a table: taken as given, or cut from the numeric lab values."""
    out = pd.DataFrame(index=df.index)
    for lab, (band, ranges) in LAB_RANGES.items():
        if band in df:
            out[band] = df[band]
        else:
            edges = [lo for lo, _ in ranges.values()][1:]
            out[band] = np.array(list(ranges))[np.searchsorted(edges, df[lab].to_numpy(float), side="right")]
    return out


def posterior_table(df: pd.DataFrame) -> pd.DataFrame:
    """Exact posteriors of P53+ from all variables and from subsets (``truth.csv`` columns).

    ``bayes_prob``: every generated variable (demographics, labs, pathology, MRI semantics, imaging latent).
    ``clinical_bayes_prob``: preoperative clinical + semantic variables (what ``p53hcc.fusion.models.clinical`` uses by default;
    no pathology, no latent). ``clinical_pathology_bayes_prob``: all cohort.csv variables (adds grade and MVI).
    ``preop_bayes_prob``: everything known before surgery (clinical + semantic + imaging latent): the ceiling of
    the paper's combined model. ``image_bayes_prob``: what the images carry (tumour size and enhancement findings,
    i.e. the semantic block, plus the latent heterogeneity): the reference of image-only models (radiomics, the
    DL arms). ``latent_bayes_prob``: the latent heterogeneity alone, the image signal the clinical table does not
    hold. ``llr_<block>``: each block's summed log-likelihood ratio.
    """
    llr = log_likelihood_ratios(df)
    prior = np.log(PREVALENCE / (1 - PREVALENCE))
    # fixed summation order (never a set: its order depends on PYTHONHASHSEED and would change the last bits)
    blocks = {g: llr[[v for v, gg in GROUPS.items() if gg == g]].sum(axis=1)
              for g in ("demographic_lab", "pathology", "semantic")}
    blocks["latent"] = llr["latent"]
    logit = prior + blocks["demographic_lab"] + blocks["pathology"] + blocks["semantic"] + blocks["latent"]
    clinical = prior + blocks["demographic_lab"] + blocks["semantic"]
    return pd.DataFrame({
        "bayes_logit": logit, "bayes_prob": special.expit(logit),
        "clinical_bayes_prob": special.expit(clinical),
        "clinical_pathology_bayes_prob": special.expit(clinical + blocks["pathology"]),
        "preop_bayes_prob": special.expit(clinical + blocks["latent"]),
        "image_bayes_prob": special.expit(prior + blocks["semantic"] + blocks["latent"]),
        "latent_bayes_prob": special.expit(prior + blocks["latent"]),
        "prior_logit": prior,
        **{f"llr_{g}": blocks[g] for g in ("demographic_lab", "pathology", "semantic", "latent")},
    }, index=df.index)


def _split(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """7:3 train/validation split stratified by label (224/96 with 128/96 P53+/- in train at n=320)."""
    n = len(y)
    n_train = round(TRAIN_FRACTION * n)
    n1_train = round(n_train * int(y.sum()) / n)
    split = np.full(n, "validation", dtype=object)
    for cls, k in ((1, n1_train), (0, n_train - n1_train)):
        members = np.flatnonzero(y == cls)
        split[rng.permutation(members)[:k]] = "train"
    return split


def _draw_lab(rng: np.random.Generator, band: np.ndarray, ranges: dict) -> np.ndarray:
    """Numeric lab values, log-uniform inside each patient's band, rounded to 0.1 and kept inside the band."""
    lo = np.array([ranges[b][0] for b in band])
    hi = np.array([ranges[b][1] for b in band])
    val = np.exp(rng.uniform(np.log(lo), np.log(hi)))
    return np.clip(np.round(val, 1), np.ceil(lo * 10) / 10, np.floor(hi * 10) / 10 - 0.1)


def sample_patients(n: int, seed: int = 0, profile: str = "internal") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the tabular part of a synthetic cohort (no images): fast enough for n in the thousands.

    Args:
        n: number of patients; round(n * 128/224) of them are P53+ (183 at n=320, as in the paper).
        seed: random seed; internal and external profiles use different streams for the same seed.
        profile: "internal" (ids SYN0001..., 7:3 train/validation) or "external" (ids EXT0001..., split external).

    Returns:
        ``(cohort, truth)``: cohort rows (contract columns except image/mask paths and scanner) and truth rows
        (``patient_id, p53, bayes_logit, bayes_prob, clinical_bayes_prob, ..., latent_heterogeneity``).
    """
    if profile not in PROFILES:
        raise P53hccError(f"synth: unknown profile {profile!r} (use internal or external)")
    if n < 2:
        raise P53hccError("synth: n must be at least 2")
    prefix, stream = PROFILES[profile]
    rng = np.random.default_rng([seed, stream, 0])
    n1 = round(n * PREVALENCE)
    y = rng.permutation(np.r_[np.ones(n1, int), np.zeros(n - n1, int)])
    df = pd.DataFrame({"patient_id": [f"{prefix}{i + 1:0{max(4, len(str(n)))}d}" for i in range(n)], "p53": y})
    df["split"] = _split(y, rng) if profile == "internal" else "external"
    for var in CONTINUOUS:
        draw = np.empty(n)
        for cls in (0, 1):
            m = y == cls
            draw[m] = _rounded_truncnorm(var, cls).rvs(size=m.sum(), random_state=rng)
        df[var] = np.round(draw).astype(int)
    for var in CATEGORICAL:
        levels, probs = _level_probs(var)
        u = rng.random(n)
        cum = np.cumsum(probs, axis=0)[:, y]  # levels x n
        idx = np.minimum((u[None, :] > cum).sum(axis=0), len(levels) - 1)
        df[var] = np.array(levels, dtype=object)[idx]
    for lab, (band, ranges) in LAB_RANGES.items():
        df[lab] = _draw_lab(rng, df[band].to_numpy(), ranges)
    df["latent_heterogeneity"] = rng.normal(LATENT_SHIFT * y, 1.0)
    for col in ("grade", "mvi", "rim_aphe", "delayed_central", "capsule"):
        df[col] = df[col].astype(int)
    truth = pd.concat([df[["patient_id", "p53", "split"]], posterior_table(df),
                       df[["latent_heterogeneity", "afp_band", "cea_band", "ca199_band"]]], axis=1)
    cohort = df[["patient_id", "split", "p53", *CLINICAL_COLUMNS]].copy()
    return cohort, truth


COHORT_COLUMNS = ["patient_id", "split", "p53", *IMAGE_COLUMNS]
R2_COLUMNS = list(R2_MASK_COLUMNS)
TABULAR_COLUMNS = ["scanner", *CLINICAL_COLUMNS]


def make_cohort(n: int, out: str | os.PathLike, seed: int = 0, size: str = "demo", second_reader: bool = True,
                profile: str = "internal", scanner_effect: float = 1.0,
                image_format: str = "nifti") -> Path:
    """Write a synthetic cohort: ``cohort.csv``, ``truth.csv``, ``images/`` and ``masks/`` under ``out``.

    Args:
        n: number of patients.
        out: output folder (created).
        seed: random seed; the same arguments give byte-identical files.
        size: "demo" (liver-centred 128x128x96 mm crop, ~0.1-1.3 M voxels) or "paper" (whole abdomen).
        second_reader: also write second-reader masks for 30 random patients (all if n < 30).
        profile: "internal" (7 scanners, train/validation) or "external" (3 other scanners, split external).
        scanner_effect: strength of the scanner effects (1: the tabulated profiles; 0: every scanner acquires like
            a neutral reference; 2: departures doubled), see :func:`~p53hcc.tools.cohort.synth.images.scanner_profiles`.
            The patients, labels and scanner assignment do not depend on it; only the acquisition does.
        image_format: "nifti" (``images/``, ``masks/``) or "dicom" (the same voxels as one DICOM study per patient
            under ``dicom/<patient>/``: an MR series per phase and a DICOM SEG per mask,
            :mod:`p53hcc.tools.cohort.synth.dicom`).

    Returns:
        Path of ``cohort.csv``.
    """
    from p53hcc.tools.cohort.synth import images as si  # numpy/nibabel heavy: only when images are written

    if size not in si.SIZES:
        raise P53hccError(f"synth: unknown size {size!r} (use demo or paper)")
    if image_format not in ("nifti", "dicom"):
        raise P53hccError(f"synth: unknown format {image_format!r} (use nifti or dicom)")
    out = Path(out)
    cohort, truth = sample_patients(n, seed=seed, profile=profile)
    rng = np.random.default_rng([seed, PROFILES[profile][1], 1])
    scanners = si.scanner_profiles(profile, effect=float(scanner_effect))
    names = list(scanners)
    weights = np.array([scanners[s]["weight"] for s in names], float)
    cohort["scanner"] = np.array(names)[rng.choice(len(names), size=n, p=weights / weights.sum())]
    r2 = np.zeros(n, bool)
    if second_reader:
        r2[rng.permutation(n)[:min(N_SECOND_READER, n)]] = True
    rows, extra = [], []
    for i, rec in enumerate(tqdm(cohort.to_dict("records"), desc="synth patients", unit="patient")):
        args = (truth.loc[i, "latent_heterogeneity"], scanners[rec["scanner"]])
        where = {"size": size, "seed": (seed, PROFILES[profile][1], i), "second_reader": bool(r2[i])}
        if image_format == "dicom":
            from p53hcc.tools.cohort.synth.dicom import write_patient

            paths, info = write_patient(rec, *args, rec["scanner"], out, **where)
        else:
            paths, info = si.write_patient(rec, *args, out, **where)
        rows.append(paths)
        extra.append(info)
    paths = pd.DataFrame(rows)
    cohort = pd.concat([cohort.reset_index(drop=True), paths], axis=1)
    cols = COHORT_COLUMNS + (R2_COLUMNS if second_reader else []) + TABULAR_COLUMNS
    for c in R2_COLUMNS if second_reader else []:
        cohort[c] = cohort[c].fillna("")
    truth = pd.concat([truth.drop(columns="split"), pd.DataFrame(extra)], axis=1)
    truth.insert(2, "scanner", cohort["scanner"])
    atomic_write_table(out / "truth.csv", truth)
    return atomic_write_table(out / "cohort.csv", cohort[cols])
