"""Why an arm does or does not learn: training variants measured on held-out folds only (never the validation cohort).

Runs on the study folder that ``benchmarks/dl_learning.py`` prepares (synthetic cohort, preprocessing, folds).
Each variant trains one network per fold of the *training* cohort with the study's engine
(:func:`p53hcc.tools.dl.engine.fit`) on the arm's cached crops, and scores the held-out fold. A variant is a
set of training values (learning rate, weight decay, augmentation, epochs, input size, initialisation...). The
validation patients are not touched: their crops exist (the cache holds every patient) but no variant scores them.

Per variant: the pooled held-out AUC (DeLong CI), the mean of the fold AUCs (Nadeau-Bengio CI), the held-out
AUC and training loss per epoch (mean over folds) and the seconds. Resumable: one result file per variant and
fold under ``--work``. Writes ``benchmarks/results/dl_tuning_cpu.json``; ``docs/dl_arms.md`` reads it.

    nice -n 10 python benchmarks/dl_tuning.py --variants default,lr1e-3 --folds 0,1,2,3,4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work" / "dl_learning"
#: Base setting of the CPU benchmark (benchmarks/dl_learning.py profile cpu) and the variants tried on it.
BASE = {"arm": "mc", "net": "resnet18", "spatial_size": 64, "epochs": 12}
VARIANTS = {
    "default": {},
    "lr3e-4": {"learning_rate": 3e-4},
    "lr1e-3": {"learning_rate": 1e-3},
    "lr1e-5": {"learning_rate": 1e-5},
    "no_crop_aug": {"min_scale": 1.0},
    "strong_crop_aug": {"min_scale": 0.6},
    "wd1e-2": {"weight_decay": 1e-2},
    "size128": {"spatial_size": 128},
    "epochs30": {"epochs": 30},
    "ff_default": {"arm": "ff"},
    "ff_lr1e-3": {"arm": "ff", "learning_rate": 1e-3},
}


def variant_params(name: str, extra: dict | None = None) -> dict:
    """Training parameters of a variant: the bundle's defaults <- BASE <- the variant (<- ``extra``)."""
    from p53hcc.tools.dl.bundle import training_params

    spec = {**BASE, **VARIANTS[name], **(extra or {})}
    arm, net = spec.pop("arm"), spec.pop("net")
    params = training_params(arm, net=net, source="preprocessed", cpu_threads=1, **spec)
    return {**params, "arm": arm}


def run_fold(study: Path, name: str, fold: int, work: Path) -> dict:
    """Train the variant's network(s) without ``fold`` and score ``fold`` (cached in ``work``)."""
    import torch

    from p53hcc.tools.cohort.splits import select_items
    from p53hcc.tools.dl.arms import get_arm
    from p53hcc.tools.dl.engine import fit, predict_scores, source_items
    from p53hcc.tools.io import atomic_write_json
    from p53hcc.tools.parallel import fixed_threads

    dest = work / "tuning" / name / f"fold{fold}.json"
    if dest.is_file():
        return json.loads(dest.read_text())
    params = variant_params(name)
    spec = get_arm(params["arm"])
    items = source_items(select_items(study / "datalist.json", "all"), study, params)
    train = [i for i, d in enumerate(items) if d["split"] == "train" and d["fold"] != fold]
    held = [i for i, d in enumerate(items) if d["split"] == "train" and d["fold"] == fold]
    y = torch.as_tensor([int(d["label"]) for d in items])
    t0, scores, histories = time.perf_counter(), [], []
    with fixed_threads(1):
        for unit in spec.units:  # MC: one network; FF: one per phase, its own head scores the held-out fold
            x = spec.crops(study, items, params, unit)
            net, history = fit(x[train], y[train], params["net"], params, "cpu", x[held], y[held],
                               desc=f"{name} fold {fold} {unit or ''}", arm=params["arm"])
            scores.append(predict_scores(net, x[held], "cpu", precision="fp32"))
            histories.append(history.assign(unit=unit or "mc"))
    hist = pd.concat(histories).groupby("epoch").mean(numeric_only=True).reset_index()
    rec = {"variant": name, "fold": fold, "patient_id": [items[i]["patient_id"] for i in held],
           "label": y[held].tolist(), "score": np.mean(scores, axis=0).tolist(),
           "history": hist.to_dict("records"), "seconds": time.perf_counter() - t0,
           "load_average_1min": os.getloadavg()[0]}
    atomic_write_json(dest, rec)
    return rec


def summarise(name: str, folds: list[dict]) -> dict:
    """Pooled and fold-mean held-out AUCs and the mean learning curve of one variant."""
    from p53hcc.fusion.stats.auc import auc_ci
    from p53hcc.fusion.stats.metric_rows import crossfit_auc

    y = np.concatenate([f["label"] for f in folds])
    s = np.concatenate([f["score"] for f in folds])
    k = np.concatenate([[f["fold"]] * len(f["label"]) for f in folds])
    pooled = auc_ci(y, s)
    out = {"variant": name, "changes": VARIANTS[name], "folds": sorted(int(f["fold"]) for f in folds),
           "n_held_out": len(y), "pooled_auc": {"auc": pooled.auc, "ci_low": pooled.ci_low,
                                                     "ci_high": pooled.ci_high}}
    if len(folds) > 1:
        cf = crossfit_auc(y, s, k)
        out["fold_mean_auc"] = {"auc": cf.auc, "ci_low": cf.ci_low, "ci_high": cf.ci_high}
    curve = pd.concat([pd.DataFrame(f["history"]) for f in folds]).groupby("epoch").mean().reset_index()
    out["curve"] = curve.to_dict("records")
    out["seconds"] = float(sum(f["seconds"] for f in folds))
    out["load_average_1min_mean"] = float(np.mean([f["load_average_1min"] for f in folds]))
    if "val_auc" in curve:  # the held-out fold is only monitored: the network kept is the last epoch's
        best = curve.loc[curve["val_auc"].idxmax()]
        out["best_epoch_of_mean_curve"] = {"epoch": int(best["epoch"]), "val_auc": float(best["val_auc"])}
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="default", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--work", default=str(WORK))
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args(argv)
    from p53hcc.tools.io import atomic_write_json

    work = Path(args.work)
    study = work / "study"
    folds = [int(k) for k in args.folds.split(",")]
    dest = Path(args.results) / "dl_tuning_cpu.json"
    record = json.loads(dest.read_text()) if dest.is_file() else {"benchmark": "dl_tuning", "variants": {}}
    record.update(base=BASE, note=("Held-out folds of the training cohort only (the validation cohort is never "
                                   "scored); the network kept is the last epoch's, the per-epoch held-out AUC "
                                   "is monitored only."), cpu_count=os.cpu_count())
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            ap.error(f"unknown variant {name}")
        runs = [run_fold(study, name, k, work) for k in folds]
        record["variants"][name] = summarise(name, runs)
        atomic_write_json(dest, record)
        r = record["variants"][name]
        print(f"{name}: pooled held-out AUC {r['pooled_auc']['auc']:.3f} "
              f"({r['pooled_auc']['ci_low']:.3f}-{r['pooled_auc']['ci_high']:.3f}), "
              f"best epoch {r.get('best_epoch_of_mean_curve')}, {r['seconds']:.0f} s", flush=True)
    return dest


if __name__ == "__main__":
    # run as a script, Python puts benchmarks/ first on the path, where benchmarks/radiomics.py would shadow
    # the pyradiomics package: the repository root instead
    sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    main()
