"""Every figure of the report, drawn into ``STUDY_DIR/figures/`` from the study's tidy tables.

Per cohort: ROC of the MC arm, the FF arm (paper Figs S4, S6) and the final models (S7); calibration (Fig 3B/C)
and decision curves (Fig 3D/E) of the final models; their confusion matrices at the training Youden threshold
(S3); the combined model's nomogram (Fig 3A); and the learning curves of each arm's chosen network. A figure
that cannot be drawn is recorded with its reason in ``figures/missing.json`` (the report shows it) instead of
failing the study.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from p53hcc.fusion.report import plots
from p53hcc.fusion.report.labels import model_label
from p53hcc.fusion.report.learning_curves import learning_curve_figure
from p53hcc.fusion.report.nomogram_figure import nomogram_figure
from p53hcc.fusion.stats.decision import threshold_grid
from p53hcc.tools.io import atomic_path, atomic_write_json, read_table
from p53hcc.tools.schema import SPLIT_LABELS

FINAL_MODELS = ("clinical", "radiomics", "dl", "combined")


def make_figures(study_dir: str | Path, labels: pd.Series, dpi: int = 110) -> Path:
    """Draw every figure of the report into ``figures/`` (see the module docstring); returns that folder.

    Args:
        study_dir: the study folder (reads ``study.yaml``, ``scores.parquet``, ``metrics.csv``,
            ``selection.json``, ``fusion/combined*``).
        labels: P53 label per patient (index ``patient_id``; NaN when unknown), given by the pipeline.
        dpi: resolution of the PNG files.
    """
    study_dir = Path(study_dir)
    out = study_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((study_dir / "study.yaml").read_text())
    labels = pd.to_numeric(labels, errors="coerce").set_axis(labels.index.astype(str))
    scores = read_table(study_dir / "scores.parquet")
    metrics = read_table(study_dir / "metrics.csv")
    sel_path = study_dir / "selection.json"
    selection = json.loads(sel_path.read_text()) if sel_path.exists() else None
    chosen = ((selection or {}).get("chosen") or {}).get("model")
    thresholds = metrics[metrics["metric"] == "threshold"].groupby("model")["estimate"].first().to_dict()
    names = {m: model_label(m) for m in scores["model"].unique()}
    if chosen:
        names["dl"] = f"DL model ({model_label(chosen)})"
    present = set(scores["model"])
    final = [m for m in FINAL_MODELS if m in present]
    nets = list(cfg.get("dl", {}).get("nets") or [])
    arm_models = {arm: [f"{arm}_{n}" for n in nets if f"{arm}_{n}" in present] for arm in ("mc", "ff")}
    start, stop, step = (float(v) for v in cfg.get("statistics", {}).get("dca_thresholds", (0.01, 0.99, 0.01)))
    dca_thresholds = threshold_grid(start, stop, step)
    missing: dict[str, str] = {}
    captions: dict[str, str] = {}

    def save(kind: str, fname: str, caption: str, draw: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            fig = draw(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - recorded and shown in the report
            missing[kind] = f"{fname}: {type(err).__name__}: {err}"
            return
        with atomic_path(out / fname) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
        captions[fname] = caption

    for sp in [s for s in ("train", "validation", "external") if s in set(scores["split"])]:
        cohort = SPLIT_LABELS.get(sp, sp)
        for arm, models in arm_models.items():
            if models:
                save("roc", f"roc_{sp}_{arm}.png", f"ROC, {arm.upper()} arm, {cohort}",
                     plots.roc_figure, scores, sp, labels, models=models, names=names)
        if final:
            save("roc", f"roc_{sp}_final.png", f"ROC, final models, {cohort}",
                 plots.roc_figure, scores, sp, labels, models=final, names=names)
            save("calibration", f"calibration_{sp}.png", f"Calibration, {cohort}",
                 plots.calibration_figure, scores, sp, labels, models=final, names=names,
                 n_bins=int(cfg.get("statistics", {}).get("calibration_bins", 10)))
            save("dca", f"dca_{sp}.png", f"Decision curves, {cohort}",
                 plots.decision_curve_figure, scores, sp, labels, models=final, names=names,
                 thresholds=dca_thresholds)
            usable = [m for m in final if np.isfinite(thresholds.get(m, np.nan))]  # degenerate: no threshold
            save("confusion", f"confusion_{sp}.png", f"Confusion matrices at the training Youden threshold, {cohort}",
                 plots.confusion_figure, scores, sp, {m: thresholds[m] for m in usable}, labels,
                 models=usable, names=names)

    def nomogram():
        import joblib

        model = joblib.load(study_dir / "fusion" / "combined.joblib")
        X = read_table(study_dir / "fusion" / "combined_inputs.parquet").set_index("patient_id")
        train = scores[(scores["model"] == "combined") & (scores["split"] == "train")]["patient_id"].astype(str)
        nomo = model.nomogram(X.loc[X.index.intersection(train)],
                              labels={"clinical": "Clinical model", "radiomics": "Radiomics model",
                                      "dl": names.get("dl", "DL model")})
        return nomogram_figure(nomo)

    save("nomogram", "nomogram.png", "Nomogram of the combined model (axes in component probabilities)", nomogram)
    for arm, best in ((selection or {}).get("best_per_arm") or {}).items():  # each arm's chosen network
        save("learning", f"learning_{arm}.png", f"Learning curves of {model_label(best['model'])}, the {arm.upper()} "
             "arm's chosen network (held-out AUC monitored only: the last epoch is kept)",
             learning_curve_figure, study_dir, arm, best["net"])
    atomic_write_json(out / "missing.json", missing)
    atomic_write_json(out / "captions.json", captions)
    return out
