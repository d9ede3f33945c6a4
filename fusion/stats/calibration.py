"""Calibration of predicted probabilities: binned calibration curve, calibration slope and intercept,
Brier score and the Hosmer-Lemeshow goodness-of-fit test.

Grouping used by both :func:`calibration_curve` (``strategy="quantile"``) and :func:`hosmer_lemeshow` is
the "deciles of risk" convention of R ``ResourceSelection::hoslem.test``, ``blorr`` and
``performance::performance_hosmer``: break points are the type-7 quantiles (numpy's default ``linear``)
of the predicted probabilities at 0, 1/g, ..., 1, duplicates dropped, and groups are right-closed
intervals with the lowest value included (R ``cut(..., include.lowest=TRUE)``). Checked against blorr
(hsb2) and performance (mtcars) in ``tests/test_stats.py``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import special
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint
from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

from p53hcc.fusion.inputs import check_alpha, check_probability

_EPS = 1e-10  # probabilities are clipped to [eps, 1 - eps] before taking logits
#: Hosmer-Lemeshow's chi-square approximation needs expected counts of at least 5 in most cells and none below 1
#: (Cochran's rule; Hosmer, Lemeshow & Sturdivant, Applied Logistic Regression, 3rd ed., section 5.2.2).
HL_SMALL, HL_TINY, HL_SMALL_SHARE = 5.0, 1.0, 0.2


@dataclass(frozen=True)
class HosmerLemeshow:
    """Hosmer-Lemeshow statistic, degrees of freedom (non-empty groups - 2) and p-value (chi-square).

    ``table`` holds the partition: group, n, obs_1, exp_1, obs_0, exp_0. ``note`` says when expected counts are
    too small for the chi-square approximation (:func:`small_expected_note`), else it is empty.
    """

    statistic: float
    df: int
    p_value: float
    table: pd.DataFrame | None = None
    note: str = ""


def small_expected_note(expected: np.ndarray) -> str:
    """Why a chi-square p value from these expected counts is unreliable (Cochran's rule: none below
    :data:`HL_TINY`, at most :data:`HL_SMALL_SHARE` below :data:`HL_SMALL`), or ``""`` when it is not."""
    e = np.asarray(expected, dtype=float).ravel()
    small = int((e < HL_SMALL).sum())
    if e.size == 0 or (e.min() >= HL_TINY and small <= HL_SMALL_SHARE * e.size):
        return ""
    return (f"Hosmer-Lemeshow p unreliable: {small} of {e.size} expected counts below {HL_SMALL:g} (smallest "
            f"{e.min():.2g}); the chi-square approximation needs none below {HL_TINY:g} and at most "
            f"{100 * HL_SMALL_SHARE:.0f}% below {HL_SMALL:g} (too few events or non-events)")


def risk_groups(y_prob: np.ndarray, n_groups: int = 10) -> np.ndarray:
    """0-based group of each probability, deciles-of-risk convention (see module docstring)."""
    if n_groups < 3:
        raise ValueError(f"n_groups must be >= 3, got {n_groups}")
    breaks = np.unique(np.quantile(y_prob, np.linspace(0, 1, n_groups + 1)))
    return np.maximum(np.searchsorted(breaks, y_prob, side="left") - 1, 0)


def _uniform_groups(y_prob: np.ndarray, n_bins: int) -> np.ndarray:
    """0-based equal-width bin on [0, 1], right-closed with 0 in the first bin."""
    return np.maximum(np.searchsorted(np.linspace(0, 1, n_bins + 1), y_prob, side="left") - 1, 0)


def calibration_curve(y_true, y_prob, n_bins: int = 10, strategy: str = "quantile") -> pd.DataFrame:
    """Observed event rate vs mean predicted probability per bin, with a Wilson 95% CI of the rate.

    Args:
        y_true: 0/1 outcomes.
        y_prob: predicted probabilities in [0, 1].
        n_bins: number of bins (fewer when quantiles coincide; empty bins are dropped).
        strategy: ``"quantile"`` (deciles of risk, same groups as Hosmer-Lemeshow) or ``"uniform"``
            (equal-width bins on [0, 1]).

    Returns:
        DataFrame with bin (1-based), mean_predicted, observed, n, n_events, ci_low, ci_high.
    """
    y, p = check_probability(y_true, y_prob)
    if strategy == "quantile" and n_bins < 3:  # too few for deciles-of-risk breaks: equal-count groups
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        g = np.empty(p.size, int)
        for k, part in enumerate(np.array_split(np.argsort(p, kind="stable"), n_bins)):
            g[part] = k
    elif strategy == "quantile":
        g = risk_groups(p, n_bins)
    elif strategy == "uniform":
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        g = _uniform_groups(p, n_bins)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    df = pd.DataFrame({"g": g, "y": y, "p": p}).groupby("g", sort=True)
    out = pd.DataFrame({"mean_predicted": df["p"].mean(), "n": df["y"].size(), "n_events": df["y"].sum()})
    out["observed"] = out["n_events"] / out["n"]
    lo, hi = proportion_confint(out["n_events"], out["n"], alpha=0.05, method="wilson")
    out["ci_low"], out["ci_high"] = np.clip(np.asarray(lo), 0, 1), np.clip(np.asarray(hi), 0, 1)
    out = out.reset_index(drop=True)
    out.insert(0, "bin", np.arange(1, len(out) + 1))
    return out[["bin", "mean_predicted", "observed", "n", "n_events", "ci_low", "ci_high"]]


def hosmer_lemeshow(y_true, y_prob, n_groups: int = 10) -> HosmerLemeshow:
    """Hosmer-Lemeshow test: sum over groups and both outcome columns of (O - E)^2 / E, chi-square with
    (non-empty groups - 2) df, as ResourceSelection >= 0.3-6 / blorr / performance.

    Small p means the predicted probabilities disagree with observed rates. Low power at n < ~100 and
    sensitive to the grouping; report it with the calibration plot, not alone. With small expected counts (few
    events or non-events) the chi-square approximation fails: a ``RuntimeWarning`` and ``note`` say so.
    """
    y, p = check_probability(y_true, y_prob)
    g = risk_groups(p, n_groups)
    df = pd.DataFrame({"g": g, "y": y, "p": p}).groupby("g", sort=True)
    t = pd.DataFrame({"n": df["y"].size(), "obs_1": df["y"].sum(), "exp_1": df["p"].sum()})
    t["obs_0"], t["exp_0"] = t["n"] - t["obs_1"], t["n"] - t["exp_1"]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = (t["obs_1"] - t["exp_1"]) ** 2 / t["exp_1"] + (t["obs_0"] - t["exp_0"]) ** 2 / t["exp_0"]
    stat = float(np.nansum(terms.to_numpy()))  # a group with E = 0 and O = 0 contributes nothing
    dof = len(t) - 2
    if dof < 1:
        raise ValueError(f"Hosmer-Lemeshow needs >= 3 distinct risk groups, got {len(t)}")
    t = t.reset_index(drop=True)
    t.insert(0, "group", np.arange(1, len(t) + 1))
    note = small_expected_note(t[["exp_1", "exp_0"]].to_numpy())
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return HosmerLemeshow(stat, dof, float(sps.chi2.sf(stat, dof)), t, note)


def brier_score(y_true, y_prob) -> float:
    """Mean squared difference between predicted probability and 0/1 outcome (lower is better)."""
    y, p = check_probability(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


def _fit(y: np.ndarray, exog: np.ndarray, offset: np.ndarray | None = None) -> tuple[object | None, str]:
    """Binomial GLM fit and ``""``, or None and why it is not a maximum-likelihood estimate: no convergence,
    perfect separation, or a solution whose own likelihood says otherwise (a log-likelihood that is not finite or
    is below the start's, a score that is not zero, standard errors that are not finite and positive)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = sm.GLM(y, exog, family=sm.families.Binomial(), offset=offset).fit()
        except (ValueError, np.linalg.LinAlgError) as err:
            return None, f"the logistic fit failed ({err})"
    if any(issubclass(w.category, PerfectSeparationWarning) for w in caught):
        return None, "the score separates the classes perfectly (the estimate is infinite)"
    if not res.converged:
        return None, "the logistic fit did not converge"
    beta, se = np.asarray(res.params, float), np.asarray(res.bse, float)
    eta = exog @ beta + (0 if offset is None else offset)
    mu = special.expit(eta)
    llf = float(np.sum(y * special.log_expit(eta) + (1 - y) * special.log_expit(-eta)))
    start = np.zeros_like(beta)
    eta0 = exog @ start + (0 if offset is None else offset)
    llf0 = float(np.sum(y * special.log_expit(eta0) + (1 - y) * special.log_expit(-eta0)))
    score = exog.T @ (y - mu)
    if not (np.isfinite(llf) and llf >= llf0 - 1e-8 * max(1.0, abs(llf0)) and np.all(np.abs(score) <= 1e-6 * y.size)
            and np.all(np.isfinite(se)) and np.all(se > 0)):
        return None, "the logistic fit is not a maximum of its likelihood (degenerate predictions)"
    return res, ""


def calibration_slope_intercept(y_true, y_prob, alpha: float = 0.05) -> dict:
    """Calibration slope and calibration-in-the-large, each with a Wald (1 - alpha) CI.

    * slope: coefficient b of logit P(y=1) = a + b * logit(p) (logistic recalibration; Cox 1958). 1 is
      ideal; < 1 means predictions are too extreme (overfitting), > 1 too timid.
    * intercept: a of logit P(y=1) = a + 1 * logit(p), i.e. logit(p) as offset (calibration-in-the-large;
      Steyerberg, Clinical Prediction Models). 0 is ideal; > 0 means risks are underestimated on average.

    NaN (estimate and CI), with the reason in ``slope_note`` / ``intercept_note`` (``""`` when estimated), when it
    is not defined: a constant prediction has no slope; a prediction of exactly 0 or 1 (within 1e-10) has an
    infinite logit, so neither is defined; a fit that does not converge, separates the classes perfectly or is not
    a maximum of its own likelihood (:func:`_fit`) gives no estimate.
    """
    alpha = check_alpha(alpha)
    y, p = check_probability(y_true, y_prob)
    z = sps.norm.ppf(1 - alpha / 2)
    saturated = int(((p <= _EPS) | (p >= 1 - _EPS)).sum())
    reasons = {"slope": "", "intercept": ""}
    if saturated:
        why = (f"{saturated} prediction(s) of exactly 0 or 1: their logit is infinite, so the calibration slope and "
               "intercept are undefined")
        reasons = {"slope": why, "intercept": why}
    elif np.ptp(p) == 0:
        reasons["slope"] = "constant prediction: the calibration slope is undefined (logit(p) does not vary)"
    lp = special.logit(np.clip(p, _EPS, 1 - _EPS))
    out: dict = {}
    designs = {"slope": (sm.add_constant(lp, has_constant="add"), None, 1), "intercept": (np.ones((y.size, 1)), lp, 0)}
    for key, (exog, offset, j) in designs.items():
        res = None
        if not reasons[key]:
            res, reasons[key] = _fit(y, exog, offset)
        est, se = (float(res.params[j]), float(res.bse[j])) if res is not None else (np.nan, np.nan)
        out[key] = est
        out[f"{key}_ci_low"] = est - z * se if res is not None else float("nan")
        out[f"{key}_ci_high"] = est + z * se if res is not None else float("nan")
    out.update(slope_note=reasons["slope"], intercept_note=reasons["intercept"])
    return out


def adaptive_bins(n: int, max_bins: int = 10, per_bin: int = 10) -> int:
    """Number of risk groups for binned calibration points: about ``per_bin`` patients each, at most ``max_bins``
    (10 quantile bins on 7 patients would draw noise)."""
    return int(max(1, min(max_bins, n // per_bin)))


def smooth_calibration(y_true, y_prob, frac: float = 2 / 3, n_boot: int = 200, alpha: float = 0.05,
                       seed: int = 0, n_grid: int = 50) -> pd.DataFrame:
    """Smoothed calibration curve (observed rate vs predicted probability) with a bootstrap confidence band.

    The curve is LOWESS of the 0/1 outcomes on the predicted probabilities (statsmodels' ``lowess``, no
    robustifying iterations, span ``frac``), as R's ``rms::val.prob`` draws its nonparametric calibration curve;
    the band is the pointwise percentile interval of the curve over ``n_boot`` resamples of the patients
    (stratified by outcome, seeded). Evaluated on a grid spanning the observed predictions (no extrapolation).

    Returns:
        DataFrame with predicted, observed, ci_low, ci_high.
    """
    from statsmodels.nonparametric.smoothers_lowess import lowess

    alpha = check_alpha(alpha)
    y, p = check_probability(y_true, y_prob)
    grid = np.linspace(p.min(), p.max(), n_grid)

    def curve(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
        return np.clip(lowess(yy, pp, frac=frac, it=0, xvals=grid), 0.0, 1.0)

    observed = curve(y, p)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boots = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        with np.errstate(all="ignore"):
            boots.append(curve(y[idx], p[idx]))
    lo, hi = np.nanquantile(np.vstack(boots), [alpha / 2, 1 - alpha / 2], axis=0)
    return pd.DataFrame({"predicted": grid, "observed": observed, "ci_low": lo, "ci_high": hi})
