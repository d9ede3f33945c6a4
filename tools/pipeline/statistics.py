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
            if len(np.unique(yy)) < 2:  # reported, never dropped: what is defined, and NaN for the rest
                frames.append(one_class_metrics(yy, ss, thr, model=model, split=sp, alpha=alpha))
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
    dl = collect_dl_scores(study_dir, cfg["dl"]["arms"], cfg["dl"]["nets"])
    if len(dl):
        write_paper_selection(study_dir, dl, y, cfg["dl"]["arms"], cfg["dl"]["nets"], bool(cfg.get("paper_selection")))


# ----------------------------------------------------------------------------------- a split with one class
def one_class_metrics(y: np.ndarray, score: np.ndarray, threshold: float, model: str, split: str,
                      alpha: float = 0.05) -> pd.DataFrame:
    """``metrics.csv`` rows of a split whose patients all have one label (e.g. a small validation cohort).

    AUC, calibration and the class-conditional rate of the absent class are undefined there: NaN, never left out,
    so the split stays in metrics.csv and Table 5 (which says why). Accuracy, the rate of the present class
    (sensitivity or specificity, Wilson CI), PPV/NPV where defined, Brier, threshold, ``n`` and ``n_events`` are
    computed as by :func:`p53hcc.fusion.stats.model_metrics`.
    """
    import logging

    from statsmodels.stats.proportion import proportion_confint

    logging.getLogger(__name__).info("split %s has only P53-%s patients (n=%d): AUC, calibration and %s of %s "
                                     "are NaN", split, "positive" if y[0] else "negative", len(y),
                                     "specificity" if y[0] else "sensitivity", model)
    called, pos = score >= threshold, y == 1
    nan = float("nan")
    counts = {"accuracy": ((called == pos).sum(), len(y)), "sensitivity": ((called & pos).sum(), pos.sum()),
              "specificity": ((~called & ~pos).sum(), (~pos).sum()), "ppv": ((called & pos).sum(), called.sum()),
              "npv": ((~called & ~pos).sum(), (~called).sum())}
    rows = [("auc", nan, nan, nan)]
    for name, (k, n) in counts.items():
        lo, hi = proportion_confint(int(k), int(n), alpha=alpha, method="wilson") if n else (nan, nan)
        rows.append((name, k / n if n else nan, float(lo), float(hi)))
    rows += [("brier", float(np.mean((score - y) ** 2)), nan, nan), ("calibration_slope", nan, nan, nan),
             ("calibration_intercept", nan, nan, nan), ("threshold", float(threshold), nan, nan),
             ("n", float(len(y)), nan, nan), ("n_events", float(y.sum()), nan, nan)]
    out = pd.DataFrame(rows, columns=["metric", "estimate", "ci_low", "ci_high"])
    return out.assign(model=model, split=split)[METRIC_COLUMNS]
