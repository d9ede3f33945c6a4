"""The cut-off of a score and what it gives: Youden's threshold (fitted on training patients), accuracy,
sensitivity, specificity, PPV, NPV and the confusion matrix at a fixed cut-off.

A patient is called positive when ``score >= threshold`` (conventions of :mod:`p53hcc.fusion.stats.auc`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from p53hcc.fusion.inputs import check_binary

__all__ = ["confusion_frame", "threshold_metrics", "youden_threshold"]


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
