"""The rows of ``metrics.csv``: every per-model statistic of one cohort split, honest about what it can say.

* Validation / external cohorts: one fitted model scores every patient, so the AUC gets DeLong's CI.
* The training cohort: its scores are cross-fitted (each fold's patients scored by a different model). Their
  pooled AUC is biased below 0.5 under the null and DeLong's CI ignores the variability of the fitted models (in
  simulation it covers 0.5 in ~85 % of null cohorts, ``docs/validation.md``). The training AUC is therefore the
  mean of the per-fold AUCs (unbiased under the null) with the Nadeau-Bengio corrected t interval over folds,
  which accounts for the overlap of the training sets (Nadeau & Bengio, Machine Learning 2003; Bouckaert & Frank,
  PAKDD 2004). The pooled AUC (the ROC curve's) is kept as ``auc_pooled``, without a CI.
* A model whose scores are constant (on a fold or on a whole cohort) ranks nobody: it is flagged, its statistics
  are NaN and the ``note`` column says why (:func:`degenerate_reason`).
* Every metric that cannot be computed is NaN with a note, never a made-up value.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.proportion import proportion_confint

from p53hcc.fusion.inputs import aligned_inputs, check_alpha, check_binary, check_probability
from p53hcc.fusion.stats.auc import AUCResult, auc_ci, delong_roc_variance
from p53hcc.fusion.stats.calibration import brier_score, calibration_slope_intercept, hosmer_lemeshow
from p53hcc.fusion.stats.thresholds import threshold_metrics
from p53hcc.tools.schema import METRIC_COLUMNS

NAN = float("nan")
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
#: Every metric a model gets per split (in this order), NaN where it cannot be computed.
METRICS = ("auc", "auc_pooled", *THRESHOLD_METRICS, "brier", "calibration_slope", "calibration_intercept",
           "hl_statistic", "hl_p", "threshold", "n", "n_events")


def degenerate_reason(score, fold=None) -> str | None:
    """Why a model's scores cannot rank patients (constant overall, or on some folds), or None when they can."""
    s = np.asarray(score, dtype=float)
    if s.size and np.ptp(s) == 0:
        return "constant model: every patient gets the same score"
    if fold is None:
        return None
    fold = np.asarray(fold)
    flat = [int(k) for k in np.unique(fold) if np.ptp(s[fold == k]) == 0]
    if flat:
        return (f"constant on fold(s) {', '.join(map(str, flat))} of {len(np.unique(fold))}: those fold models rank "
                "nobody (e.g. no variable or feature was kept)")
    return None


def crossfit_auc(y_true, y_score, fold, alpha: float = 0.05) -> AUCResult:
    """AUC of cross-fitted scores: the mean of the per-fold AUCs with the Nadeau-Bengio corrected t interval.

    ``var = (1/K + n_test/n_train) * s^2`` with ``s^2`` the sample variance of the K fold AUCs and
    ``n_test/n_train`` the mean ratio of held-out to training patients (1/(K-1) for equal folds); the interval
    uses Student's t with K - 1 degrees of freedom, clipped to [0, 1]. NaN (with a warning) when a fold lacks a
    class or fewer than 2 folds remain. ``y_score`` and ``fold`` are matched to ``y_true``'s patients by the
    alignment rule of :mod:`p53hcc.fusion.inputs` (by patient id when labelled).
    """
    alpha = check_alpha(alpha)
    y, (s,) = check_binary(y_true, y_score)
    fold = np.asarray(aligned_inputs(y_true, fold, names=("fold",))[1])
    if fold.shape != y.shape:
        raise ValueError(f"fold has {fold.size} values for {y.size} patients")
    if pd.isna(fold).any():
        raise ValueError(f"fold has {int(pd.isna(fold).sum())} missing value(s)")
    ks = np.unique(fold)
    if len(ks) < 2:
        warnings.warn("cross-fitted AUC: a single fold, no between-fold variance: CI undefined", RuntimeWarning,
                      stacklevel=2)
        return AUCResult(auc_ci(y, s).auc, NAN, NAN, NAN, "fold-mean")
    aucs, ratios = [], []
    for k in ks:
        yk = y[fold == k]
        if len(np.unique(yk)) < 2:
            warnings.warn(f"cross-fitted AUC undefined: fold {k} has one class only", RuntimeWarning, stacklevel=2)
            return AUCResult(NAN, NAN, NAN, NAN, "fold-mean")
        aucs.append(delong_roc_variance(yk, s[fold == k])[0])
        ratios.append(yk.size / (y.size - yk.size))
    aucs = np.asarray(aucs)
    se = float(np.sqrt((1 / len(aucs) + np.mean(ratios)) * aucs.var(ddof=1)))
    half = sps.t.ppf(1 - alpha / 2, len(aucs) - 1) * se
    mean = float(aucs.mean())
    return AUCResult(mean, float(max(0.0, mean - half)), float(min(1.0, mean + half)), se,
                     "fold-mean, Nadeau-Bengio")


def _frame(model: str, split: str, rows: list[tuple], note: str = "") -> pd.DataFrame:
    """Tidy rows ``(metric, estimate, ci_low, ci_high[, why])``; a row's own ``why`` follows the model's ``note``."""
    out = pd.DataFrame([r[:4] for r in rows], columns=["metric", "estimate", "ci_low", "ci_high"])
    out.insert(0, "split", split)
    out.insert(0, "model", model)
    out["note"] = ["; ".join(x for x in (note, r[4] if len(r) > 4 else "") if x) for r in rows]
    return out[METRIC_COLUMNS]


def nan_metrics(model: str, split: str, reason: str, n: int = 0, n_events: int = 0) -> pd.DataFrame:
    """The metric rows of a model that cannot be assessed: NaN everywhere, the reason in ``note``."""
    rows = [(m, NAN, NAN, NAN) for m in METRICS if m not in ("n", "n_events")]
    return _frame(model, split, [*rows, ("n", float(n), NAN, NAN), ("n_events", float(n_events), NAN, NAN)],
                  reason)


def model_metrics(y_true, y_score, threshold: float, model: str, split: str, fold=None, alpha: float = 0.05,
                  note: str = "") -> pd.DataFrame:
    """All per-model statistics of one cohort split as tidy long rows (the ``metrics.csv`` contract).

    Metrics: ``auc`` (DeLong CI; with ``fold``, the cross-fitted estimate of :func:`crossfit_auc`),
    ``auc_pooled`` (with ``fold`` only: the AUC of the pooled scores, no CI), ``accuracy``, ``sensitivity``,
    ``specificity``, ``ppv``, ``npv`` (Wilson CIs) at the given cut-off (positive when score >= threshold; pass
    the Youden cut-off fitted on the training cohort for every split), ``brier``, ``calibration_slope``,
    ``calibration_intercept`` (Wald CIs), ``hl_statistic`` and ``hl_p`` (Hosmer-Lemeshow, 10 groups), and for
    provenance ``threshold``, ``n`` and ``n_events``. CIs are NaN where none is defined. A degenerate model
    (:func:`degenerate_reason`) gets :func:`nan_metrics`.

    Args:
        y_true: 0/1 outcomes of the patients of this split.
        y_score: predicted probabilities in [0, 1].
        threshold: classification cut-off, fixed beforehand (not re-optimised on this split).
        model: model name written into the ``model`` column.
        split: split name (``train``/``validation``/``external``) written into ``split``.
        fold: the fold that scored each patient (cross-fitted training scores), or None.
        alpha: 1 - confidence level of every CI (0.05 -> 95%).
        note: written into the ``note`` column of every row (e.g. "apparent").
    """
    alpha = check_alpha(alpha)
    y, p = check_probability(y_true, y_score, name="y_score")
    if fold is not None:
        fold = aligned_inputs(y_true, fold, names=("fold",))[1]
    reason = degenerate_reason(p, fold)
    if reason:
        return nan_metrics(model, split, "; ".join(x for x in (reason, note) if x), y.size, int(y.sum()))
    if fold is not None:
        auc = crossfit_auc(y, p, fold, alpha=alpha)
        rows = [("auc", auc.auc, auc.ci_low, auc.ci_high), ("auc_pooled", auc_ci(y, p).auc, NAN, NAN)]
    else:
        auc = auc_ci(y, p, alpha=alpha)
        rows = [("auc", auc.auc, auc.ci_low, auc.ci_high), ("auc_pooled", NAN, NAN, NAN)]
    tm = threshold_metrics(y, p, threshold)
    counts = {"accuracy": (tm["tp"] + tm["tn"], y.size), "sensitivity": (tm["tp"], tm["tp"] + tm["fn"]),
              "specificity": (tm["tn"], tm["tn"] + tm["fp"]), "ppv": (tm["tp"], tm["tp"] + tm["fp"]),
              "npv": (tm["tn"], tm["tn"] + tm["fn"])}
    for name, (k, n) in counts.items():
        lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson") if n else (NAN, NAN)
        rows.append((name, tm[name], float(lo), float(hi)))
    rows.append(("brier", brier_score(y, p), NAN, NAN))
    cal = calibration_slope_intercept(y, p, alpha=alpha)
    for key in ("slope", "intercept"):
        rows.append((f"calibration_{key}", cal[key], cal[f"{key}_ci_low"], cal[f"{key}_ci_high"], cal[f"{key}_note"]))
    try:
        with warnings.catch_warnings():  # the note carries it
            warnings.simplefilter("ignore", RuntimeWarning)
            hl = hosmer_lemeshow(y, p)
        rows += [("hl_statistic", hl.statistic, NAN, NAN, hl.note), ("hl_p", hl.p_value, NAN, NAN, hl.note)]
    except ValueError:  # fewer than 3 distinct risk groups (e.g. a 0/1 score)
        rows += [("hl_statistic", NAN, NAN, NAN), ("hl_p", NAN, NAN, NAN)]
    rows += [("threshold", float(threshold), NAN, NAN), ("n", float(y.size), NAN, NAN),
             ("n_events", float(y.sum()), NAN, NAN)]
    return _frame(model, split, rows, note)


def reference_metrics(y_true, reference, model: str, split: str, name: str, alpha: float = 0.05) -> pd.DataFrame:
    """``reference_auc``: the AUC of a known population posterior (a synthetic cohort's truth) on the same
    patients, with DeLong's CI; ``note`` names the posterior (which inputs it conditions on)."""
    auc = auc_ci(y_true, reference, alpha=alpha)
    return _frame(model, split, [("reference_auc", auc.auc, auc.ci_low, auc.ci_high)], name)
