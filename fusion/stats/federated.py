"""Federated evaluation: AUC with a DeLong CI and calibration from per-bin sums, never per-patient scores.

Each site scores its own patients and answers with, per bin of a fixed grid on [0, 1] (``bins`` equal-width
bins), the number of cases and of controls, the summed scores of each, and the summed squared error (Brier).
The server adds the sites' answers. From those counts:

* the ROC AUC and DeLong's variance are exactly those of the *binned* scores (every score replaced by its bin,
  ties counted 1/2): a case in bin b has placement (controls below b + half the controls in b) / n0, and
  DeLong's variance is the variance of those placements (tests/test_federated.py checks this against
  :func:`p53hcc.fusion.stats.auc.auc_ci` on the binned scores). The binning moves the AUC by at most the share of
  case-control pairs that share a bin;
* the calibration curve (mean predicted vs observed rate per bin, Wilson CI), the Brier score (exact) and, by
  federated Newton on the logit of the scores, the calibration slope and intercept (exact).

What a site reveals: for each bin, its count of cases and controls and their summed scores. With fine bins and a
small site a non-empty bin can be one patient (its score to 1/bins and its outcome, without identity); choose
``bins`` accordingly (docs/federated.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from p53hcc.fusion.inputs import check_alpha
from p53hcc.fusion.stats.auc import AUCResult


def auc_from_bins(cases: np.ndarray, controls: np.ndarray, alpha: float = 0.05) -> AUCResult:
    """ROC AUC and DeLong CI of binned scores from the pooled per-bin counts (see the module docstring)."""
    alpha = check_alpha(alpha)
    c1, c0 = np.asarray(cases, float), np.asarray(controls, float)
    n1, n0 = c1.sum(), c0.sum()
    nan = float("nan")
    if n1 == 0 or n0 == 0:
        return AUCResult(nan, nan, nan, nan, "delong (binned, federated): needs cases and controls")
    if np.count_nonzero(c1 + c0) == 1:  # every score in one bin: a constant model ranks nobody
        return AUCResult(nan, nan, nan, nan, "delong (binned, federated): every score in one bin (constant model)")
    below0 = np.cumsum(c0) - c0
    above1 = c1.sum() - np.cumsum(c1)
    v10 = (below0 + 0.5 * c0) / n0  # placement of a case in each bin
    v01 = (above1 + 0.5 * c1) / n1  # placement of a control in each bin
    auc = float((c1 * v10).sum() / n1)
    if n1 < 2 or n0 < 2:
        return AUCResult(auc, nan, nan, nan, "delong (binned, federated)")
    s10 = float((c1 * (v10 - auc) ** 2).sum() / (n1 - 1))
    s01 = float((c0 * (v01 - auc) ** 2).sum() / (n0 - 1))
    se = float(np.sqrt(s10 / n1 + s01 / n0))
    half = sps.norm.ppf(1 - alpha / 2) * se
    return AUCResult(auc, max(0.0, auc - half), min(1.0, auc + half), se, "delong (binned, federated)")


def calibration_from_bins(total: dict[str, np.ndarray], groups: int = 10) -> pd.DataFrame:
    """Calibration curve on ``groups`` equal-width risk groups (the fine ROC bins merged), Wilson 95% CI.

    Columns as :func:`p53hcc.fusion.stats.calibration.calibration_curve` (``strategy="uniform"``): bin, mean_predicted,
    observed, n, n_events, ci_low, ci_high; empty groups dropped.
    """
    bins = len(total["cases"])
    if bins % groups:
        raise ValueError(f"{bins} bins cannot be merged into {groups} equal risk groups")
    k = bins // groups

    def merged(name: str) -> np.ndarray:
        return np.asarray(total[name], float).reshape(groups, k).sum(axis=1)

    events, n = merged("cases"), merged("cases") + merged("controls")
    keep = n > 0
    out = pd.DataFrame({"mean_predicted": (merged("case_sum") + merged("control_sum"))[keep] / n[keep],
                        "observed": events[keep] / n[keep], "n": n[keep].astype(int),
                        "n_events": events[keep].astype(int)})
    lo, hi = proportion_confint(out["n_events"], out["n"], alpha=0.05, method="wilson")
    out["ci_low"], out["ci_high"] = np.clip(np.asarray(lo), 0, 1), np.clip(np.asarray(hi), 0, 1)
    out.insert(0, "bin", np.arange(1, len(out) + 1))
    return out


def brier_from_bins(total: dict[str, np.ndarray]) -> float:
    """Brier score (exact) from the summed squared errors and the patient count."""
    n = float(np.sum(total["cases"]) + np.sum(total["controls"]))
    return float(total["sq_err"]) / n if n else float("nan")
