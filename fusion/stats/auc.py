"""Discrimination statistics of the paper: ROC AUC with DeLong CI, paired DeLong test, Youden threshold,
threshold metrics, odds-ratio tables and the tidy ``metrics.csv`` rows.

Calibration (binned curve, slope/intercept, Brier, Hosmer-Lemeshow) lives in :mod:`p53hcc.fusion.calibration` and
decision-curve net benefit in :mod:`p53hcc.fusion.decision`; both are re-exported here so callers need one import.

Every statistic is checked in ``tests/test_stats.py`` against a reference (pROC, R dcurves, blorr,
performance, UCLA glm output) stored in ``shared/reference-data``.

Conventions: ``y_true`` is 0/1 (1 = P53 mutated, the "case"); a higher score means more likely a case
(pROC direction ``"<"``); a patient is called positive when ``score >= threshold``.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize, special
from scipy import stats as sps

from p53hcc.fusion.inputs import as_labels, check_binary
from p53hcc.fusion.stats.calibration import (
    HosmerLemeshow,
    adaptive_bins,
    brier_score,
    calibration_curve,
    calibration_slope_intercept,
    hosmer_lemeshow,
    smooth_calibration,
)
from p53hcc.fusion.stats.decision import net_benefit

__all__ = [
    "AUCResult",
    "DeLongTest",
    "HosmerLemeshow",
    "adaptive_bins",
    "auc_ci",
    "brier_score",
    "calibration_curve",
    "calibration_slope_intercept",
    "confusion_frame",
    "delong_roc_variance",
    "delong_test",
    "hosmer_lemeshow",
    "net_benefit",
    "odds_ratio_table",
    "pairwise_delong",
    "profile_ci",
    "smooth_calibration",
    "threshold_metrics",
    "youden_threshold",
]


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
    y, (s,) = check_binary(y_true, y_score)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
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
    if len(scores) < 2:
        raise ValueError(f"pairwise_delong needs at least 2 models, got {list(scores)}")
    rows = []
    for name_a, name_b in combinations(scores, 2):
        res = delong_test(y_true, scores[name_a], scores[name_b], alpha=alpha)
        rows.append({"model_a": name_a, "model_b": name_b, **asdict(res)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- thresholds
def youden_threshold(y_true, y_score) -> float:
    """Cut-off maximising Youden's J = sensitivity + specificity - 1 (positive when score >= cut-off).

    Fit it on the training cohort only and apply the returned value unchanged to validation/external
    cohorts: a cut-off re-optimised on the cohort being evaluated overstates sensitivity and specificity
    (Leeflang et al., Clin Chem 2008;54:729-37).

    Candidate cut-offs are midpoints between consecutive distinct scores (as pROC's ``coords(..., "best")``),
    so the cut-off does not sit on a training patient's score. Ties in J go to the lowest cut-off (higher
    sensitivity).
    """
    y, (s,) = check_binary(y_true, y_score)
    u = np.unique(s)
    if u.size == 1:
        return float(u[0])
    cuts = (u[:-1] + u[1:]) / 2
    pos, neg = np.sort(s[y == 1]), np.sort(s[y == 0])
    sens = 1 - np.searchsorted(pos, cuts, side="left") / pos.size   # fraction of cases >= cut
    spec = np.searchsorted(neg, cuts, side="left") / neg.size       # fraction of controls < cut
    j = sens + spec - 1
    return float(cuts[int(np.argmax(j >= j.max() - 1e-12))])


def _confusion(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, int]:
    pred = s >= threshold
    return {"tp": int(np.sum(pred & (y == 1))), "fp": int(np.sum(pred & (y == 0))),
            "tn": int(np.sum(~pred & (y == 0))), "fn": int(np.sum(~pred & (y == 1)))}


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def threshold_metrics(y_true, y_score, threshold: float) -> dict:
    """Accuracy, sensitivity, specificity, PPV, NPV and the confusion counts at a fixed cut-off.

    A patient is positive when ``score >= threshold``. PPV (NPV) is NaN when nobody is called positive
    (negative).
    """
    y, (s,) = check_binary(y_true, y_score)
    c = _confusion(y, s, float(threshold))
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    return {"accuracy": (tp + tn) / y.size, "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn), **c}


def confusion_frame(y_true, y_score, threshold: float) -> pd.DataFrame:
    """Confusion matrix as a tidy frame (actual, predicted, n) with all four cells, for plotting."""
    y, (s,) = check_binary(y_true, y_score)
    c = _confusion(y, s, float(threshold))
    return pd.DataFrame({"actual": [1, 1, 0, 0], "predicted": [1, 0, 1, 0],
                         "n": [c["tp"], c["fn"], c["fp"], c["tn"]]})


# ---------------------------------------------------------------- odds ratios (unpenalised logistic regression)
def _logit_fit(y: np.ndarray, X: pd.DataFrame):
    """Unpenalised ML logistic fit (statsmodels Logit, Newton); clear error on separation/non-convergence."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = sm.Logit(y, X).fit(method="newton", maxiter=100, disp=0)
        except np.linalg.LinAlgError as err:
            raise ValueError(f"logistic fit failed (collinear predictors among {list(X.columns)}): {err}") from err
    if not res.mle_retvals.get("converged", False) or not np.all(np.isfinite(res.bse)):
        raise ValueError(f"logistic fit of {list(X.columns)} did not converge (complete or quasi-complete "
                         "separation?); odds ratios would be infinite")
    return res


def _profile_llf(y: np.ndarray, X: np.ndarray, j: int, b: float) -> float:
    """Max log-likelihood with coefficient j fixed at b (the others re-fitted; X[:, j] * b as offset)."""
    offset = X[:, j] * b
    rest = np.delete(X, j, axis=1)
    if rest.shape[1] == 0:
        p = special.expit(offset)
        return float(np.sum(special.xlogy(y, p) + special.xlogy(1 - y, 1 - p)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # IRLS from its default start: warm starts at the MLE diverge far out on the profile
        res = sm.GLM(y, rest, family=sm.families.Binomial(), offset=offset).fit(tol=1e-12, maxiter=200)
    return float(res.llf)


def profile_ci(y: np.ndarray, X: pd.DataFrame, alpha: float = 0.05, result=None) -> pd.DataFrame:
    """Profile-likelihood (1 - alpha) CIs of every logistic coefficient (on the logit scale).

    For each coefficient the exact roots of 2 * (llf_max - llf_profile(b)) = chi2_1(1 - alpha) are found
    with Brent's method (R ``MASS::confint.glm`` interpolates a grid of the same profile; they agree to
    ~1e-4). Profile CIs are preferable to Wald CIs in small samples and for skewed likelihoods.

    Returns:
        DataFrame indexed by term with columns ci_low, ci_high.
    """
    res = result if result is not None else _logit_fit(y, X)
    Xa, beta, se = np.asarray(X, dtype=float), np.asarray(res.params), np.asarray(res.bse)
    crit, llf = sps.chi2.ppf(1 - alpha, 1), float(res.llf)
    rows = []
    for j in range(Xa.shape[1]):
        def dev(b: float, j: int = j) -> float:
            return 2 * (llf - _profile_llf(y, Xa, j, b)) - crit
        bounds = []
        for sign in (-1, 1):
            step = sign * se[j]
            far = beta[j] + 2 * step
            for _ in range(30):  # expand until the profile deviance exceeds the cut-off
                if dev(far) > 0:
                    break
                step *= 2
                far = beta[j] + 2 * step
            else:
                bounds.append(sign * np.inf)
                continue
            bounds.append(optimize.brentq(dev, beta[j], far, xtol=1e-10))
        rows.append(bounds)
    return pd.DataFrame(rows, index=X.columns, columns=["ci_low", "ci_high"])


def odds_ratio_table(X: pd.DataFrame, y, ci: str = "wald", alpha: float = 0.05) -> pd.DataFrame:
    """Odds ratios with (1 - alpha) CIs and Wald p-values from an unpenalised logistic regression.

    The model is statsmodels ``Logit(y, [const, X])`` (ML, no penalty), as R ``glm(family=binomial)``.

    Args:
        X: numeric predictors, one column per term (encode categoricals as dummies first); no NaN.
        y: 0/1 outcome aligned with X.
        ci: ``"wald"`` (coef +- z * SE, R ``confint.default``) or ``"profile"`` (profile likelihood, R
            ``confint``/MASS).
        alpha: 1 - confidence level.

    Returns:
        One row per term, intercept first as ``const``: variable, coef, se, odds_ratio, ci_low, ci_high
        (CI of the odds ratio), p_value (Wald z test).
    """
    if not isinstance(X, pd.DataFrame):
        raise TypeError("X must be a pandas DataFrame with named predictor columns")
    if ci not in ("wald", "profile"):
        raise ValueError(f"ci must be 'wald' or 'profile', got {ci!r}")
    yv = as_labels_aligned(y, len(X))
    Xn = X.apply(pd.to_numeric, errors="coerce").astype(float)
    bad = [c for c in Xn.columns if Xn[c].isna().any() or not np.isfinite(Xn[c]).all()]
    if bad:
        raise ValueError(f"predictor column(s) {bad} contain missing or non-numeric values")
    Xc = sm.add_constant(Xn.reset_index(drop=True), prepend=True, has_constant="add")
    res = _logit_fit(yv, Xc)
    if ci == "wald":
        bounds = res.conf_int(alpha=alpha)
        bounds.columns = ["ci_low", "ci_high"]
    else:
        bounds = profile_ci(yv, Xc, alpha=alpha, result=res)
    return pd.DataFrame({
        "variable": Xc.columns, "coef": res.params.to_numpy(), "se": res.bse.to_numpy(),
        "odds_ratio": np.exp(res.params.to_numpy()), "ci_low": np.exp(bounds["ci_low"].to_numpy()),
        "ci_high": np.exp(bounds["ci_high"].to_numpy()), "p_value": res.pvalues.to_numpy()})


def as_labels_aligned(y, n: int) -> np.ndarray:
    """0/1 labels of length n (validated)."""
    yv = as_labels(y)
    if yv.size != n:
        raise ValueError(f"y has {yv.size} values but X has {n} rows")
    return yv
