"""ROC AUC of the paper: the AUC with its DeLong (or bootstrap) CI and the paired DeLong test between models.

Checked in ``tests/test_stats.py`` and ``tests/test_reference_stats.py`` against pROC output.

Conventions (every module of :mod:`p53hcc.fusion.stats`): ``y_true`` is 0/1 (1 = P53 mutated, the "case"); a
higher score means more likely a case (pROC direction ``"<"``); a patient is called positive when
``score >= threshold``.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as sps

from p53hcc.fusion.inputs import check_alpha, check_binary

__all__ = ["AUCResult", "DeLongTest", "auc_ci", "delong_roc_variance", "delong_test", "pairwise_delong"]


@dataclass(frozen=True)
class AUCResult:
    """ROC AUC with a (1 - alpha) confidence interval; ``se`` is the DeLong or bootstrap standard error."""

    auc: float
    ci_low: float
    ci_high: float
    se: float
    method: str


@dataclass(frozen=True)
class DeLongTest:
    """Paired DeLong test of AUC_a == AUC_b on the same patients (two-sided), as pROC ``roc.test``.

    ``diff_ci_low``/``diff_ci_high`` are the (1 - alpha) CI of AUC_a - AUC_b.
    """

    auc_a: float
    auc_b: float
    z: float
    p_value: float
    diff_ci_low: float = float("nan")
    diff_ci_high: float = float("nan")


# ---------------------------------------------------------------- DeLong (Sun & Xu 2014, fast midrank form)
def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Structural components of DeLong's variance for k score vectors at once.

    Uses the midrank algorithm of Sun & Xu (IEEE SPL 2014): for each case the fraction of controls scored
    below it (ties count 1/2), for each control the fraction of cases scored above it. Ties get 1/2 exactly
    as in pROC's ``delongPlacements``, so results agree with pROC to floating-point precision.

    Args:
        y: (n,) 0/1 labels.
        scores: (k, n) scores, higher = case.

    Returns:
        auc (k,), v_case (k, m) case placements, v_ctrl (k, n0) control placements.
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n0 = pos.shape[1], neg.shape[1]
    r_pos = sps.rankdata(pos, axis=1)
    r_neg = sps.rankdata(neg, axis=1)
    r_all = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v_case = (r_all[:, :m] - r_pos) / n0           # P(control < case) + 0.5 P(tie), per case
    v_ctrl = 1.0 - (r_all[:, m:] - r_neg) / m      # P(case > control) + 0.5 P(tie), per control
    auc = v_case.mean(axis=1)
    return auc, v_case, v_ctrl


def _delong_cov(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k) for k score vectors on the same patients."""
    auc, v_case, v_ctrl = _delong_components(y, scores)
    k = scores.shape[0]
    if min(v_case.shape[1], v_ctrl.shape[1]) < 2:  # a sample covariance needs 2 cases and 2 controls
        return auc, np.full((k, k), np.nan)
    s_case = np.atleast_2d(np.cov(v_case))
    s_ctrl = np.atleast_2d(np.cov(v_ctrl))
    return auc, s_case / v_case.shape[1] + s_ctrl / v_ctrl.shape[1]


def delong_roc_variance(y_true, y_score) -> tuple[float, float]:
    """ROC AUC and its DeLong variance (pROC ``auc`` / ``var(method="delong")``).

    Args:
        y_true: 0/1 labels, both classes present.
        y_score: scores, higher = more likely 1.

    Returns:
        (auc, variance); the variance is NaN with fewer than 2 cases or 2 controls.
    """
    y, (s,) = check_binary(y_true, y_score)
    auc, cov = _delong_cov(y, s[None, :])
    return float(auc[0]), float(cov[0, 0])


def _auc_bootstrap(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """AUCs of ``n_boot`` stratified resamples (cases and controls resampled separately, sizes kept)."""
    rng = np.random.default_rng(seed)
    pos, neg = s[y == 1], s[y == 0]
    bp = pos[rng.integers(0, pos.size, (n_boot, pos.size))]
    bn = neg[rng.integers(0, neg.size, (n_boot, neg.size))]
    ranks = sps.rankdata(np.concatenate([bp, bn], axis=1), axis=1)[:, : pos.size]
    return (ranks.sum(axis=1) - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size)


def auc_ci(y_true, y_score, alpha: float = 0.05, method: str = "delong", n_boot: int = 2000,
           seed: int = 0) -> AUCResult:
    """ROC AUC with a (1 - alpha) CI.

    ``method="delong"``: AUC +- z * sqrt(DeLong variance), clipped to [0, 1] as pROC ``ci.auc`` does.
    ``method="bootstrap"``: stratified percentile bootstrap (pROC ``ci.auc(method="bootstrap",
    stratified=TRUE)``); ``se`` is the SD of the bootstrap AUCs. Bootstrap is seeded, hence reproducible.
    """
    alpha = check_alpha(alpha)
    y, (s,) = check_binary(y_true, y_score)
    auc, var = delong_roc_variance(y, s)
    if method == "delong":
        if not np.isfinite(var):  # fewer than 2 cases or 2 controls: no DeLong variance
            warnings.warn(f"AUC CI undefined: DeLong's variance needs at least 2 cases and 2 controls "
                          f"(have {int(y.sum())} and {int((1 - y).sum())})", RuntimeWarning, stacklevel=2)
            return AUCResult(auc, float("nan"), float("nan"), float("nan"), "delong")
        se = float(np.sqrt(var))
        half = sps.norm.ppf(1 - alpha / 2) * se
        return AUCResult(auc, float(max(0.0, auc - half)), float(min(1.0, auc + half)), se, "delong")
    if method == "bootstrap":
        if n_boot < 100:
            raise ValueError(f"n_boot must be >= 100 for a percentile CI, got {n_boot}")
        boot = _auc_bootstrap(y, s, n_boot, seed)
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        return AUCResult(auc, float(lo), float(hi), float(boot.std(ddof=1)), "bootstrap")
    raise ValueError(f"method must be 'delong' or 'bootstrap', got {method!r}")


def delong_test(y_true, score_a, score_b, alpha: float = 0.05) -> DeLongTest:
    """Paired two-sided DeLong test of two ROC AUCs on the same patients (pROC ``roc.test``, paired).

    z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab), with a (1 - alpha) CI of the difference. When the
    variance of the difference is 0: equal AUCs (identical rankings) give z = 0, p = 1; different AUCs (a model
    that separates the classes perfectly against a constant one, say) leave the test undefined: z, p and the CI
    are NaN, with a warning, rather than a certainty the data cannot give.
    """
    alpha = check_alpha(alpha)
    y, (a, b) = check_binary(y_true, score_a, score_b)
    auc, cov = _delong_cov(y, np.vstack([a, b]))
    diff = auc[0] - auc[1]
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if not np.isfinite(var) or var <= 1e-15:
        if np.isfinite(var) and abs(diff) <= 1e-12:  # identical rankings: no difference to test
            return DeLongTest(float(auc[0]), float(auc[1]), 0.0, 1.0, float(diff), float(diff))
        warnings.warn(f"DeLong test undefined: the variance of AUC {auc[0]:.3f} - AUC {auc[1]:.3f} is 0 (perfect "
                      "separation or constant scores, or too few cases/controls)", RuntimeWarning, stacklevel=2)
        nan = float("nan")
        return DeLongTest(float(auc[0]), float(auc[1]), nan, nan, nan, nan)
    sd = np.sqrt(var)
    z = diff / sd
    half = sps.norm.ppf(1 - alpha / 2) * sd
    return DeLongTest(float(auc[0]), float(auc[1]), float(z), float(2 * sps.norm.sf(abs(z))),
                      float(diff - half), float(diff + half))


def pairwise_delong(y_true, scores: dict[str, np.ndarray], alpha: float = 0.05) -> pd.DataFrame:
    """Paired DeLong tests for every pair of models (in dict order), one tidy row per pair.

    Returns:
        DataFrame with columns model_a, model_b, auc_a, auc_b, z, p_value, diff_ci_low, diff_ci_high.
        p-values are not adjusted for multiplicity (the paper reports raw DeLong p-values).
    """
    alpha = check_alpha(alpha)
    if len(scores) < 2:
        raise ValueError(f"pairwise_delong needs at least 2 models, got {list(scores)}")
    rows = []
    for name_a, name_b in combinations(scores, 2):
        res = delong_test(y_true, scores[name_a], scores[name_b], alpha=alpha)
        rows.append({"model_a": name_a, "model_b": name_b, **asdict(res)})
    return pd.DataFrame(rows)
