"""Odds ratios of an unpenalised logistic regression (statsmodels ``Logit``, as R ``glm(family=binomial)``) with
Wald or profile-likelihood CIs: the odds-ratio tables of the paper.

Checked against R (``glm``, ``confint.default``, ``MASS::confint``) output in ``tests/test_reference_stats.py``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import optimize, special
from scipy import stats as sps

from p53hcc.fusion.inputs import align, as_labels, check_alpha, indexed_by_id

__all__ = ["odds_ratio_table", "profile_ci"]


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
    alpha = check_alpha(alpha)
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
        y: 0/1 outcome: a Series indexed like X is matched by patient id (X indexed by patient id; integer ids
            are ids), an array or a Series with row numbers by position (:mod:`p53hcc.fusion.inputs`).
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
    alpha = check_alpha(alpha)
    yv = as_labels_aligned(y, X.index)
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


def as_labels_aligned(y, index: pd.Index) -> np.ndarray:
    """0/1 labels on the rows ``index`` of X (validated; the alignment rule of :mod:`p53hcc.fusion.inputs`)."""
    if not indexed_by_id(y) and np.asarray(y).size != len(index):
        raise ValueError(f"y has {np.asarray(y).size} values but X has {len(index)} rows")
    yv = align(y, index, "y")
    return as_labels(yv.to_numpy())
