"""The statistics stage: ``metrics.csv`` and ``delong.csv`` from ``scores.parquet`` (both tidy)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.stats import auc_ci, model_metrics, pairwise_delong, youden_threshold
from p53hcc.tools.io import atomic_write_table, read_table
from p53hcc.tools.pipeline.fit import cohort_labels
from p53hcc.tools.pipeline.selection import collect_dl_scores, write_paper_selection
from p53hcc.tools.schema import METRIC_COLUMNS


def run_statistics(study_dir: str | Path, cohort_csv: str | Path, cfg: dict) -> None:
    """metrics.csv and delong.csv from scores.parquet (both tidy).

    metrics: ``p53hcc.fusion.stats.model_metrics`` per model and split at the model's Youden threshold fitted on its
    training out-of-fold scores (applied unchanged to the other splits), plus ``bayes_auc`` - the AUC of the
    true probability in ``truth.csv`` on the same patients - when the cohort is synthetic.
    delong: paired DeLong tests between every pair of models per split.
    """
    study_dir = Path(study_dir)
    _, y, _ = cohort_labels(cohort_csv)
    y.index = y.index.astype(str)
    scores = read_table(study_dir / "scores.parquet")
    scores["patient_id"] = scores["patient_id"].astype(str)
    scores["y"] = scores["patient_id"].map(y)
    scores = scores.dropna(subset=["y"])
    truth_path = Path(cohort_csv).parent / "truth.csv"
    truth = None
    if truth_path.exists():
        truth = read_table(truth_path).astype({"patient_id": str}).set_index("patient_id")
    alpha = 1 - float(cfg["statistics"].get("ci_level", 0.95))
    seed = int(cfg.get("seed", 0))
    frames = []
    for model, g in scores.groupby("model", sort=True):
        tr = g[g["split"] == "train"]
        if tr["y"].nunique() < 2:
            continue
        thr = youden_threshold(tr["y"].astype(int), tr["score"])
        for sp, h in g.groupby("split", sort=True):
            yy, ss = h["y"].astype(int).to_numpy(), h["score"].to_numpy()
            if len(np.unique(yy)) < 2:
                continue
            frames.append(model_metrics(yy, ss, thr, model=model, split=sp, seed=seed))
            if truth is not None:
                b = auc_ci(yy, truth.loc[h["patient_id"], "bayes_prob"].to_numpy(), alpha=alpha)
                frames.append(pd.DataFrame([{"model": model, "split": sp, "metric": "bayes_auc",
                                             "estimate": b.auc, "ci_low": b.ci_low, "ci_high": b.ci_high}]))
    cols = METRIC_COLUMNS
    metrics = pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)
    atomic_write_table(study_dir / "metrics.csv", metrics)
    tests = []
    for sp, g in scores.groupby("split", sort=True):
        wide = g.pivot(index="patient_id", columns="model", values="score").dropna().sort_index()
        yy = y.loc[wide.index].astype(int).to_numpy()
        if wide.shape[1] < 2 or len(np.unique(yy)) < 2:
            continue
        tests.append(pairwise_delong(yy, {m: wide[m].to_numpy() for m in wide.columns}).assign(split=sp))
    if tests:
        atomic_write_table(study_dir / "delong.csv", pd.concat(tests, ignore_index=True))
    dl = collect_dl_scores(study_dir)
    if len(dl):
        write_paper_selection(study_dir, dl, y, cfg["dl"]["arms"], cfg["dl"]["nets"], bool(cfg.get("paper_selection")))
