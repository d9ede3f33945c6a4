"""How the DL arms learned: the report's learning curves.

* :func:`learning_curve_figure`: training loss and held-out-fold AUC per epoch of one arm's network, each fold
  network thin and their mean thick (FF: the three phase networks' own heads, averaged), read from the study's
  ``dl/<arm>/<net>/fold<k>/[<phase>/]history.csv``. The held-out AUC is monitored only: the network kept is the
  last epoch's, so the curve shows whether the arm learned, and whether it was still learning or already
  overfitting when training stopped.

The training choices the paper does not state (initialisation, optimiser, schedule, loss weighting, augmentation,
precision) are stated in the report's Methods from the recipe each network trained with
(:mod:`p53hcc.fusion.report.methods`).

Reads only the study folder (no import of the DL stage), as every ``p53hcc.fusion`` module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from p53hcc.tools.io import read_table
from p53hcc.tools.schema import NET_LABELS, PHASES


def fold_histories(study_dir: str | Path, arm: str, net: str) -> pd.DataFrame:
    """Every fold network's history of one arm: ``epoch, train_loss, val_auc, fold, phase`` (empty if none)."""
    root = Path(study_dir) / "dl" / arm / net
    frames = []
    for fold_dir in sorted(root.glob("fold*")):
        units = [(p, fold_dir / p) for p in PHASES] if arm == "ff" else [("", fold_dir)]
        for phase, unit in units:
            if (unit / "history.csv").is_file():
                frames.append(read_table(unit / "history.csv").assign(fold=fold_dir.name, phase=phase))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def learning_curve_figure(study_dir: str | Path, arm: str, net: str, figsize=(9.0, 3.6)) -> Figure:
    """Training loss and held-out-fold AUC per epoch of ``arm``'s ``net`` (see the module docstring).

    Raises:
        FileNotFoundError: no fold network of that arm has a ``history.csv``.
    """
    hist = fold_histories(study_dir, arm, net)
    if hist.empty:
        raise FileNotFoundError(f"no dl/{arm}/{net}/fold*/history.csv (DL stage not run)")
    fig = Figure(figsize=figsize)
    panels = [("train_loss", "training loss"), ("val_auc", "held-out-fold AUC")]
    for i, (col, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        if col not in hist:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
            continue
        per_fold = hist.groupby(["fold", "epoch"])[col].mean().unstack(0)
        for k, fold in enumerate(per_fold.columns):
            ax.plot(per_fold.index, per_fold[fold], lw=0.8, alpha=0.45, color="C0",
                    label="each fold" if k == 0 else None)
        ax.plot(per_fold.index, per_fold.mean(axis=1), lw=2.2, color="C3", label="mean over folds")
        if col == "val_auc":
            ax.axhline(0.5, color="grey", ls=":", lw=1)
            ax.set_ylim(min(0.3, float(np.nanmin(per_fold.to_numpy())) - 0.02), 1.0)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers (no 1.2, 1.4 ticks)
        ax.legend(fontsize=7, frameon=False, loc="upper right" if col == "train_loss" else "lower right")
    what = "three phase networks' own heads, averaged" if arm == "ff" else "three-channel network"
    fig.suptitle(f"{arm.upper()} arm, {NET_LABELS.get(net, net)} ({what})", fontsize=10)
    fig.tight_layout()
    return fig
