"""The statistics stage: ``metrics.csv`` and ``delong.csv`` from ``scores.parquet`` (both tidy).

metrics: :func:`p53hcc.fusion.stats.metric_rows.model_metrics` per model and split, at the model's Youden threshold fitted
on its training out-of-fold scores (applied unchanged to the other splits), at the configured CI level. Training
AUCs are cross-fitted estimates (fold mean, Nadeau-Bengio CI); a model whose scores are constant, or a split with
one class, gets NaN rows that say why. On a synthetic cohort every model also gets its **population reference**
(``reference_auc``): the AUC, on the same patients, of the true posterior of exactly the inputs that model has.
delong: paired DeLong tests between every pair of models per split (validation-type splits: one fitted model
per score; on the training split the scores are cross-fitted and the test is descriptive).
net_benefit: decision curves of the final models (clinical, radiomics, chosen DL, combined) with treat-all and
treat-none, per split, at the ``statistics.dca_thresholds`` grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.report.figures import FINAL_MODELS
from p53hcc.fusion.stats.auc import pairwise_delong
from p53hcc.fusion.stats.decision import net_benefit, threshold_grid
from p53hcc.fusion.stats.metric_rows import degenerate_reason, model_metrics, nan_metrics, reference_metrics
from p53hcc.fusion.stats.thresholds import youden_threshold
from p53hcc.tools.io import atomic_write_table, read_table
from p53hcc.tools.pipeline.choice import collect_dl_scores, write_paper_selection
from p53hcc.tools.pipeline.fit import cohort_labels
from p53hcc.tools.schema import METRIC_COLUMNS

#: The population posterior (a ``truth.csv`` column of the synthetic cohort) that conditions on exactly the inputs
#: of each model, and what it is.
REFERENCES = {
    "clinical": ("clinical_bayes_prob", ("population reference: posterior of the preoperative clinical table "
                                        "(demographics, labs, MRI findings), the clinical model's inputs")),
    "combined": ("preop_bayes_prob", ("population reference: posterior of everything known before surgery "
                                     "(clinical table and images)")),
    "image": ("image_bayes_prob", ("population reference: posterior of what the images carry (tumour size, "
                                  "enhancement findings, latent heterogeneity)")),
}
APPARENT = "apparent: chosen or stacked on the same out-of-fold scores (optimistic)"


def reference_for(model: str) -> tuple[str, str] | None:
    """The ``truth.csv`` column and description of a model's population reference (None if it has none)."""
    if model in ("clinical", "combined"):
        return REFERENCES[model]
    if model in ("radiomics", "dl") or model.startswith(("mc_", "ff_")):
        return REFERENCES["image"]
    return None


def _model_rows(model: str, g: pd.DataFrame, truth: pd.DataFrame | None, alpha: float, note: str) -> list:
    frames = []
    tr = g[g["split"] == "train"]
    reason = degenerate_reason(tr["score"], tr["fold"]) if len(tr) else "no training-cohort scores"
    thr = np.nan if reason or tr["y"].nunique() < 2 else youden_threshold(tr["y"].astype(int), tr["score"])
    for sp, h in g.groupby("split", sort=True):
        yy, ss = h["y"].astype(int).to_numpy(), h["score"].to_numpy()
        if not np.isfinite(thr):
            frames.append(nan_metrics(model, sp, reason or "no training threshold", len(yy), int(yy.sum())))
            continue
        if len(np.unique(yy)) < 2:  # reported, never dropped: what is defined, and NaN for the rest
            frames.append(one_class_metrics(yy, ss, thr, model=model, split=sp, alpha=alpha))
            continue
        frames.append(model_metrics(yy, ss, thr, model=model, split=sp, alpha=alpha,
                                    fold=h["fold"].to_numpy() if sp == "train" else None,
                                    note=note if sp == "train" else ""))
        ref = reference_for(model)
        if truth is not None and ref is not None and ref[0] in truth.columns:
            frames.append(reference_metrics(yy, truth.loc[h["patient_id"], ref[0]].to_numpy(), model, sp, ref[1],
                                            alpha=alpha))
    return frames


def decision_curves(scores: pd.DataFrame, y: pd.Series, thresholds: np.ndarray) -> pd.DataFrame:
    """Net benefit of the final models per split (``split`` + :func:`p53hcc.fusion.stats.decision.net_benefit`
    columns); a split with one class has no curve."""
    frames = []
    for sp, g in scores[scores["model"].isin(FINAL_MODELS)].groupby("split", sort=True):
        wide = g.pivot(index="patient_id", columns="model", values="score").dropna().sort_index()
        yy = y.loc[wide.index].astype(int).to_numpy()
        if wide.empty or len(np.unique(yy)) < 2:
            continue
        models = [m for m in FINAL_MODELS if m in wide.columns]
        frames.append(net_benefit(yy, {m: wide[m].to_numpy() for m in models}, thresholds=thresholds)
                      .assign(split=sp))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_statistics(study_dir: str | Path, cohort_csv: str | Path, cfg: dict) -> None:
    """Write ``metrics.csv``, ``delong.csv`` and ``net_benefit.csv`` (see the module docstring)."""
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
    alpha = 1 - float(cfg["statistics"]["ci_level"])
    apparent = cfg["fusion"].get("nesting") == "apparent"
    frames = []
    for model, g in scores.groupby("model", sort=True):
        frames += _model_rows(model, g, truth, alpha, APPARENT if apparent and model in ("dl", "combined") else "")
    metrics = pd.concat(frames, ignore_index=True)[METRIC_COLUMNS] if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    atomic_write_table(study_dir / "metrics.csv", metrics)
    tests = []
    for sp, g in scores.groupby("split", sort=True):
        wide = g.pivot(index="patient_id", columns="model", values="score").dropna().sort_index()
        yy = y.loc[wide.index].astype(int).to_numpy()
        if wide.shape[1] < 2 or len(np.unique(yy)) < 2:
            continue
        tests.append(pairwise_delong(yy, {m: wide[m].to_numpy() for m in wide.columns}, alpha=alpha).assign(split=sp))
    if tests:
        atomic_write_table(study_dir / "delong.csv", pd.concat(tests, ignore_index=True))
    curves = decision_curves(scores, y, threshold_grid(*(float(v) for v in cfg["statistics"]["dca_thresholds"])))
    if len(curves):
        atomic_write_table(study_dir / "net_benefit.csv", curves)
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
    computed as by :func:`p53hcc.fusion.stats.metric_rows.model_metrics`.
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
    values = {name: (k / n if n else nan, *(proportion_confint(int(k), int(n), alpha=alpha, method="wilson")
                                              if n else (nan, nan))) for name, (k, n) in counts.items()}
    values.update(brier=(float(np.mean((score - y) ** 2)), nan, nan), threshold=(float(threshold), nan, nan))
    out = nan_metrics(model, split, f"{split} cohort has one class only ({len(y)} patients, all "
                                    f"{'P53-positive' if y[0] else 'P53-negative'}): no AUC or calibration",
                      len(y), int(y.sum())).set_index("metric")
    for name, (est, lo, hi) in values.items():
        out.loc[name, ["estimate", "ci_low", "ci_high"]] = [float(est), float(lo), float(hi)]
    return out.reset_index()[METRIC_COLUMNS]
