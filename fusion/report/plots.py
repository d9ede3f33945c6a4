"""Report figures: ROC, calibration, decision curves, confusion matrices (paper Figure 3 and S3/S4/S6/S7).

Each function takes the tidy score table (``patient_id, model, fold, split, score`` plus a 0/1 ``label`` column,
or labels passed separately) and returns a :class:`matplotlib.figure.Figure` built without ``pyplot``, so no
global figure state leaks between calls and the Agg canvas is used for saving (``fig.savefig(path)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from p53hcc.fusion.stats.auc import auc_ci
from p53hcc.fusion.stats.calibration import adaptive_bins, calibration_curve, smooth_calibration
from p53hcc.fusion.stats.decision import net_benefit
from p53hcc.fusion.stats.thresholds import confusion_frame
from p53hcc.tools.errors import InputError
from p53hcc.tools.schema import SPLIT_TITLES

REPORT_SIZE = (5.5, 5.0)  # inches; saved at 150 dpi in the report


def _scores_by_model(scores_long: pd.DataFrame, split: str, labels: pd.Series | None = None,
                     models: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{model: (y, score)} for the patients of ``split`` (labels from a ``label`` column or ``labels``)."""
    df = scores_long[scores_long["split"] == split].copy()
    if labels is not None:
        lab = labels.copy()
        lab.index = lab.index.astype(str)
        df["label"] = df["patient_id"].astype(str).map(lab)
    if "label" not in df.columns:
        raise InputError(None, "plots need a 'label' column or labels= (P53 status per patient)")
    df = df[df["label"].notna()]
    models = list(dict.fromkeys(df["model"])) if models is None else list(models)
    out = {}
    for m in models:
        sub = df[df["model"] == m]
        if sub.empty:
            raise InputError(None, f"no scores for model {m!r} in split {split!r}")
        out[m] = (sub["label"].to_numpy(int), sub["score"].to_numpy(float))
    return out


def _title(split: str) -> str:
    return SPLIT_TITLES.get(split, split)


def roc_figure(scores_long: pd.DataFrame, split: str, labels: pd.Series | None = None,
               models: Sequence[str] | None = None, names: Mapping[str, str] | None = None,
               figsize: tuple[float, float] = REPORT_SIZE) -> Figure:
    """ROC curves of several models on one cohort.

    Validation-type cohorts: the legend gives "name: AUC (95% CI)" (DeLong). The training cohort's scores are
    cross-fitted: the curve is that of the pooled out-of-fold scores and its legend gives their AUC without a CI
    (DeLong's would ignore the variability of the fitted models; the tables give the honest estimate).
    """
    data = _scores_by_model(scores_long, split, labels, models)
    names = dict(names or {})
    pooled = split == "train"
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot(1, 1, 1)
    for m, (y, s) in data.items():
        fpr, tpr, _ = roc_curve(y, s)
        a = auc_ci(y, s)
        ci = "" if pooled or not np.isfinite(a.ci_low) else f" ({a.ci_low:.3f}\u2013{a.ci_high:.3f})"
        ax.plot(fpr, tpr, lw=1.6, label=f"{names.get(m, m)}: {a.auc:.3f}{ci}")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    title = f"{_title(split)} (pooled out-of-fold)" if pooled else _title(split)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 \u2212 Specificity", ylabel="Sensitivity", title=title)
    ax.set_aspect("equal")
    ax.legend(title="AUC" if pooled else "AUC (95% CI)", loc="lower right", fontsize=8, title_fontsize=8,
              frameon=False)
    fig.tight_layout()
    return fig


def calibration_figure(scores_long: pd.DataFrame, split: str, labels: pd.Series | None = None,
                       models: Sequence[str] | None = None, names: Mapping[str, str] | None = None,
                       n_bins: int = 10, figsize: tuple[float, float] = REPORT_SIZE) -> Figure:
    """Calibration per model: LOWESS curve with its bootstrap 95% band, and binned observed rates (Wilson CIs) as
    points without connecting lines; the number of bins adapts to the cohort (about 10 patients per bin, at most
    ``n_bins``), so a small validation cohort does not draw a zig-zag of noise."""
    data = _scores_by_model(scores_long, split, labels, models)
    names = dict(names or {})
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="Ideal")
    for i, (m, (y, s)) in enumerate(data.items()):
        color = f"C{i}"
        if np.ptp(s) > 0:
            c = smooth_calibration(y, s)
            ax.plot(c["predicted"], c["observed"], color=color, lw=1.6, label=names.get(m, m))
            ax.fill_between(c["predicted"], c["ci_low"], c["ci_high"], color=color, alpha=0.15, lw=0)
        b = calibration_curve(y, s, n_bins=adaptive_bins(len(y), n_bins))
        err = np.vstack([b["observed"] - b["ci_low"], b["ci_high"] - b["observed"]])
        ax.errorbar(b["mean_predicted"], b["observed"], yerr=err, fmt="o", ms=4, color=color, capsize=2,
                    label=None if np.ptp(s) > 0 else f"{names.get(m, m)} (constant)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Predicted probability of P53 mutation",
           ylabel="Observed proportion of P53 mutation", title=_title(split))
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.text(0.98, 0.02, "lines: LOWESS with bootstrap 95% band; points: risk groups", transform=ax.transAxes,
            ha="right", va="bottom", fontsize=7, color="grey")
    fig.tight_layout()
    return fig


def decision_curve_figure(scores_long: pd.DataFrame, split: str, labels: pd.Series | None = None,
                          models: Sequence[str] | None = None, names: Mapping[str, str] | None = None,
                          thresholds=None, figsize: tuple[float, float] = REPORT_SIZE
                          ) -> Figure:
    """Net benefit vs threshold probability for each model and the treat-all / treat-none strategies."""
    data = _scores_by_model(scores_long, split, labels, models)
    names = dict(names or {})
    thresholds = np.arange(0.01, 1.0, 0.01) if thresholds is None else thresholds
    y = next(iter(data.values()))[0]
    if any(not np.array_equal(v[0], y) for v in data.values()):
        raise InputError(None, "decision curves need every model scored on the same patients in the same order")
    nb = net_benefit(y, {m: s for m, (_, s) in data.items()}, thresholds=thresholds)
    fig = Figure(figsize=figsize)
    ax = fig.add_subplot(1, 1, 1)
    styles = {"all": {"color": "grey", "lw": 1, "label": "Treat all"},
              "none": {"color": "black", "lw": 1, "label": "Treat none"}}
    for m, sub in nb.groupby("model", sort=False):
        ax.plot(sub["threshold"], sub["net_benefit"], **styles.get(m, {"lw": 1.6, "label": names.get(m, m)}))
    prevalence = float(np.mean(y))
    ax.set(xlim=(0, 1), ylim=(-0.05, max(prevalence, 0.05) * 1.1), xlabel="Threshold probability",
           ylabel="Net benefit", title=_title(split))
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def confusion_figure(scores_long: pd.DataFrame, split: str, thresholds: Mapping[str, float],
                     labels: pd.Series | None = None, models: Sequence[str] | None = None,
                     names: Mapping[str, str] | None = None) -> Figure:
    """One confusion matrix per model at its training-cohort (Youden) threshold."""
    data = _scores_by_model(scores_long, split, labels, models if models is not None else list(thresholds))
    names = dict(names or {})
    n = len(data)
    fig = Figure(figsize=(2.8 * n + 0.4, 3.2))
    for i, (m, (y, s)) in enumerate(data.items()):
        if m not in thresholds:
            raise InputError(None, f"no threshold for model {m!r} (use the training-cohort Youden cut-off)")
        cf = confusion_frame(y, s, thresholds[m])
        mat = cf.pivot(index="actual", columns="predicted", values="n").reindex(index=[0, 1], columns=[0, 1])
        mat = mat.fillna(0).to_numpy(int)
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(int(mat.max()), 1))
        for a in (0, 1):
            for p in (0, 1):
                ax.text(p, a, str(mat[a, p]), ha="center", va="center", fontsize=11,
                        color="white" if mat[a, p] > mat.max() / 2 else "black")
        ax.set_xticks([0, 1], ["P53\u2212", "P53+"])
        ax.set_yticks([0, 1], ["P53\u2212", "P53+"])
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Actual" if i == 0 else "")
        ax.set_title(f"{names.get(m, m)}\n(threshold {thresholds[m]:.3f})", fontsize=9)
    fig.suptitle(_title(split), fontsize=10)
    fig.tight_layout()
    return fig
