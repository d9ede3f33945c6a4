"""A tiny cached, resumable stage runner (what ``p53hcc study`` is built on).

Why: the study takes minutes to hours; a user who kills it (or a crash) must be able to rerun the same command and
have only the unfinished work redone, and a changed parameter must redo exactly the stages it affects.

How: every stage has a *key* = hash of its own parameters, of the keys of the stages it depends on and of any
input files it names. After the stage function returns (all its outputs written, atomically, by the stage
itself) the runner writes ``<study>/.stages/<name>.done`` atomically, holding that key. A later run skips a stage
whose marker holds the same key; a stage that raised (or was killed) has no marker and is run again. Because a
dependent stage's key contains its upstream keys, a changed parameter invalidates the stage and everything
downstream of it, and nothing else.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tools.io_utils import atomic_write_json, atomic_write_table, file_sha256, params_hash

MARKER_DIR = ".stages"


@dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: unique stage name (also the marker file name).
        func: called as ``func(ctx)`` with the :class:`StageContext`; must write its outputs atomically and be
            deterministic (same inputs and params -> same outputs).
        params: JSON-serialisable parameters that determine the outputs (part of the cache key).
        deps: names of stages whose outputs this stage reads (their keys enter this stage's key).
        inputs: files or folders whose content enters the key (e.g. the cohort CSV), hashed at run time.
        outputs: paths (relative to the study folder) the stage must have produced; a cached stage with one of
            them missing (deleted by hand) is run again.
    """

    name: str
    func: Callable[[StageContext], Any]
    params: dict = field(default_factory=dict)
    deps: Sequence[str] = ()
    inputs: Sequence[str | Path] = ()
    outputs: Sequence[str] = ()


@dataclass
class StageContext:
    """What a running stage sees: the study folder, its own params and the run-wide shared state."""

    study_dir: Path
    stage: Stage
    state: dict

    @property
    def params(self) -> dict:
        """The stage's parameters."""
        return self.stage.params


@dataclass
class StageResult:
    """Outcome of one stage in a run: ``ran`` or ``cached``, with the elapsed seconds and the key."""

    name: str
    status: str
    seconds: float
    key: str


def _marker(study_dir: Path, name: str) -> Path:
    return Path(study_dir) / MARKER_DIR / f"{name}.done"


def read_marker(study_dir: str | Path, name: str) -> dict | None:
    """Return the done-marker of stage ``name`` or None when the stage has not finished."""
    path = _marker(Path(study_dir), name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _input_digest(paths: Iterable[str | Path]) -> dict:
    digest = {}
    for p in paths:
        p = Path(p)
        digest[str(p)] = file_sha256(p) if p.exists() else None
    return digest


def stage_key(stage: Stage, upstream: dict[str, str]) -> str:
    """Cache key of ``stage`` given the keys of the stages already resolved in this run."""
    missing = [d for d in stage.deps if d not in upstream]
    if missing:
        raise ValueError(f"stage {stage.name} depends on unknown or later stages: {missing}")
    return params_hash({
        "name": stage.name,
        "params": stage.params,
        "deps": {d: upstream[d] for d in sorted(stage.deps)},
        "inputs": _input_digest(stage.inputs),
    })


def run_stages(stages: Sequence[Stage], study_dir: str | Path, state: dict | None = None,
               log: Callable[[str], None] | None = print, force: Sequence[str] = ()) -> list[StageResult]:
    """Run ``stages`` in order, skipping those whose done-marker matches their current key.

    Args:
        stages: the pipeline, in execution order (dependencies before dependants).
        study_dir: folder holding outputs and the ``.stages/`` markers.
        state: dict shared by all stage functions of this run (e.g. resolved paths); created when None.
        log: called with one progress line per stage (None: silent).
        force: names of stages to rerun even when cached.

    Returns:
        One :class:`StageResult` per stage.
    """
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    state = {} if state is None else state
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names: {names}")
    keys: dict[str, str] = {}
    results: list[StageResult] = []
    width = max(len(n) for n in names) if names else 0
    for i, stage in enumerate(stages, 1):
        key = stage_key(stage, keys)
        keys[stage.name] = key
        marker = read_marker(study_dir, stage.name)
        prefix = f"[{i}/{len(stages)}] {stage.name:<{width}}"
        complete = all((study_dir / o).exists() for o in stage.outputs)
        if marker is not None and marker.get("key") == key and complete and stage.name not in force:
            results.append(StageResult(stage.name, "cached", 0.0, key))
            if log:
                log(f"{prefix}  cached")
            continue
        _marker(study_dir, stage.name).unlink(missing_ok=True)
        if log:
            log(f"{prefix}  running ...")
        t0 = time.perf_counter()
        stage.func(StageContext(study_dir, stage, state))
        seconds = time.perf_counter() - t0
        atomic_write_json(_marker(study_dir, stage.name), {
            "stage": stage.name, "key": key, "params": stage.params, "deps": list(stage.deps),
            "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        results.append(StageResult(stage.name, "ran", seconds, key))
        if log:
            log(f"{prefix}  done in {seconds:.1f} s")
    return results


# ============================================================================ the study's fusion and statistics
# (stage bodies too large for tools/study.py; they read and write only the study folder's tidy tables)
def _labels_and_splits(cohort_csv: str | Path):
    from tools.cohort import read_cohort

    df = read_cohort(cohort_csv).sort_values("patient_id").set_index("patient_id", drop=False)
    y = pd.to_numeric(df["p53"], errors="coerce")
    return df, y, df["split"]


def _save_model(study_dir: Path, name: str, model: Any) -> None:
    import joblib

    from tools.io_utils import atomic_path

    with atomic_path(Path(study_dir) / "fusion" / f"{name}.joblib") as tmp:
        joblib.dump(model, tmp)


def _radiomics_matrix(study_dir: Path, icc_threshold: float | None):
    """Radiomics features (patients x features), minus features below the ICC threshold when ICC exists."""
    from tools.io_utils import read_table

    X = read_table(Path(study_dir) / "radiomics.parquet")
    X["patient_id"] = X["patient_id"].astype(str)
    X = X.set_index("patient_id").sort_index().select_dtypes("number")
    icc_path = Path(study_dir) / "radiomics_icc.csv"
    if icc_threshold is not None and icc_path.exists():
        from tools.icc import reliable_features

        keep = set(reliable_features(read_table(icc_path), icc_threshold))
        X = X[[c for c in X.columns if c in keep]]
    return X


def run_fusion(study_dir: str | Path, cohort_csv: str | Path, cfg: dict) -> None:
    """Clinical and radiomics models (out-of-fold), DL choice, combined LR; writes scores.parquet + selection.json.

    Every model is cross-fitted on the folds of ``splits.json``: training patients get out-of-fold scores,
    everybody else the score of the model fitted on all training patients (``fusion.crossfit``). The combined
    LR sees only those scores. The full-training-cohort fits go to ``fusion/*.joblib`` for the frozen ``model/``;
    they are fitted exactly as crossfit's fold -1 model, so they reproduce the study's validation scores.
    """
    from fusion.crossfit import crossfit_scores, fit_full, scores_wide
    from fusion.models import make_clinical_model, make_combined_model, make_radiomics_model
    from fusion.selection import selected_features_table
    from tools.cohort import load_splits
    from tools.study import collect_dl_scores, write_scores, write_selection

    study_dir = Path(study_dir)
    df, y, split = _labels_and_splits(cohort_csv)
    df = df.reset_index(drop=True)
    splits = load_splits(study_dir)
    train = split[split == "train"].index
    frames = []

    clinical = crossfit_scores("clinical", make_clinical_model, df, y, split, splits)
    frames.append(clinical)
    _save_model(study_dir, "clinical", fit_full(make_clinical_model, df[df["split"] == "train"], y))

    Xr = _radiomics_matrix(study_dir, cfg["radiomics"].get("icc_threshold"))
    radiomics = crossfit_scores("radiomics", make_radiomics_model, Xr, y, split, splits)
    frames.append(radiomics)
    rad_full = fit_full(make_radiomics_model, Xr.loc[Xr.index.intersection(train)], y)
    _save_model(study_dir, "radiomics", rad_full)
    atomic_write_table(study_dir / "fusion" / "radiomics_lasso.csv", selected_features_table(rad_full, Xr.columns))
    atomic_write_json(study_dir / "fusion" / "radiomics_features.json", list(Xr.columns))

    dl = collect_dl_scores(study_dir)
    frames.append(dl)
    sel = write_selection(study_dir, dl, y, cfg["dl"]["arms"], cfg["dl"]["nets"])
    base = pd.concat([clinical, radiomics, dl], ignore_index=True)
    Xc = scores_wide(base, {"clinical": "clinical", "radiomics": "radiomics", "dl": sel["chosen"]["model"]})
    Xc = Xc.sort_index()
    combined = crossfit_scores("combined", make_combined_model, Xc, y, split, splits)
    frames.append(combined)
    _save_model(study_dir, "combined", fit_full(make_combined_model, Xc.loc[Xc.index.intersection(train)], y))
    atomic_write_table(study_dir / "fusion" / "combined_inputs.parquet", Xc.reset_index())
    write_scores(study_dir, frames)


def run_statistics(study_dir: str | Path, cohort_csv: str | Path, cfg: dict) -> None:
    """metrics.csv and delong.csv from scores.parquet (both tidy).

    metrics: ``fusion.stats.model_metrics`` per model and split at the model's Youden threshold fitted on its
    training out-of-fold scores (applied unchanged to the other splits), plus ``bayes_auc`` - the AUC of the
    true probability in ``truth.csv`` on the same patients - when the cohort is synthetic.
    delong: paired DeLong tests between every pair of models per split.
    """
    from fusion.stats import auc_ci, model_metrics, pairwise_delong, youden_threshold
    from tools.io_utils import read_table
    from tools.study import collect_dl_scores, write_paper_selection

    study_dir = Path(study_dir)
    _, y, _ = _labels_and_splits(cohort_csv)
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
    cols = ["model", "split", "metric", "estimate", "ci_low", "ci_high"]
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
