"""How the DL arms were trained: the report's learning curves and the training choices the paper does not give.

* :func:`learning_curve_figure`: training loss and held-out-fold AUC per epoch of one arm's network, each fold
  network thin and their mean thick (FF: the three phase networks' own heads, averaged), read from the study's
  ``dl/<arm>/<net>/fold<k>/[<phase>/]history.csv``. The held-out AUC is monitored only: the network kept is the
  last epoch's, so the curve shows whether the arm learned, and whether it was still learning or already
  overfitting when training stopped.
* :func:`training_assumptions`: the training choices of this run that the paper does not state (initialisation,
  optimiser, learning rate and schedule, batch size, epochs, class weights, augmentation, input), stated as
  assumptions in the report's Methods.

Reads only the study folder (no import of the DL stage), as every ``p53hcc.fusion`` module.
"""
from __future__ import annotations

import html
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


def training_assumptions(cfg: dict) -> list[str]:
    """The DL training choices of this run that the paper does not give, one sentence each (HTML-escaped)."""
    dl = cfg.get("dl", {})
    weights = dl.get("pretrained_path")
    init = (f"from the local weights <code>{html.escape(str(weights))}</code> (torchvision format, mapped onto "
            "each network; the two-class head freshly initialised)" if weights else
            "from scratch (MONAI's default initialisation, seeded; no pretrained weights: the paper does not say "
            "whether ImageNet weights were used, and none are downloaded)")
    return [
        f"Initialisation: {init}.",
        (f"Optimiser: AdamW, learning rate {dl.get('learning_rate')} (constant, no schedule), weight decay "
         f"{dl.get('weight_decay')}."),
        (f"Batch size {dl.get('batch_size')}; {dl.get('epochs')} epochs; the network kept is the last epoch's "
         "(no early stopping on a held-out fold, which would bias the out-of-fold scores)."),
        "Class imbalance: cross-entropy with inverse-frequency class weights of each network's training patients.",
        (f"Augmentation: random crop of {float(dl.get('min_scale', 0.8)):.0%}-100 % of the side, resized back, and "
         "random horizontal and vertical flips (p = 0.5 each); none at test time."),
        (f"Input: per phase the axial slice with the largest ROI, its bounding box + {dl.get('margin')} px, "
         f"resized to {dl.get('spatial_size')} x {dl.get('spatial_size')}, z-scored per phase crop; ResNet stem "
         "7x7 stride 2 + max-pool (torchvision topology)."),
    ]


def assumptions_html(cfg: dict) -> str:
    """:func:`training_assumptions` as the HTML list the report's Methods section appends to its DL item."""
    items = "".join(f"<li>{a}</li>" for a in training_assumptions(cfg))
    return f"<br>Training choices the paper does not give, stated here as assumptions:<ul>{items}</ul>"
