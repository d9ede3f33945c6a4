"""The radiomics arm end to end on a synthetic cohort: does it recover the imaging signal the generator put in?

Runs the whole chain that ``p53hcc study`` runs for the radiomics model (synthetic cohort -> N4 -> 1 mm -> z-score
-> PyRadiomics -> z-score / Spearman 0.9 / LASSO-CV / LR fitted on the training cohort only) and scores the
validation cohort once. Next to it: the training cohort's 5-fold out-of-fold AUC, the same pipeline fitted on
shuffled training labels (20 permutations; must centre on chance), and the ground truth from ``truth.csv`` on the
same validation patients (the imaging latent alone, and the exact Bayes posterior of every generated variable), which bound
what any image model can reach.

Usage: ``python scripts/radiomics_validation.py [--n 600] [--seed 0] [--preset demo] [--params demo]
[--workers 2] [--root runs/radiomics_n600]``. Every stage is cached, so a re-run only refits the models.
Prints a table and writes ``benchmarks/results/radiomics_validation_n<N>_<preset>_<params>.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from p53hcc.fusion.models.radiomics import make_radiomics_model, rad_score, selected_features_table
from p53hcc.fusion.stats.auc import auc_ci
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.cohort.synth.cohort import make_cohort
from p53hcc.tools.io import atomic_write_json
from p53hcc.tools.preprocessing.run import preprocess_cohort
from p53hcc.tools.radiomics.extract import extract_cohort
from p53hcc.tools.radiomics.features import versions

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _auc(y, s) -> dict:
    r = auc_ci(np.asarray(y, int), np.asarray(s, float))
    return {"auc": r.auc, "ci_low": r.ci_low, "ci_high": r.ci_high}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="demo", help="preprocessing preset (p53hcc.tools.preprocessing.params.PRESETS)")
    ap.add_argument("--params", default="demo", help="radiomics params: demo, paper or a YAML file")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--n-shuffles", type=int, default=20, help="label permutations for the null distribution")
    ap.add_argument("--root", default=None, help="working folder (default runs/radiomics_n<N>)")
    args = ap.parse_args(argv)
    root = Path(args.root or f"runs/radiomics_n{args.n}")
    study = root / f"study_{args.preset}_{Path(args.params).stem}"
    timings = {}

    t0 = time.perf_counter()
    csv = root / "cohort" / "cohort.csv"
    if not csv.is_file():
        make_cohort(args.n, root / "cohort", seed=args.seed, size="demo")
    timings["synth_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    preprocess_cohort(csv, study, workers=args.workers, params=args.preset)
    timings["preprocess_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = extract_cohort(csv, study, params=args.params, workers=args.workers).set_index("patient_id")
    timings["radiomics_s"] = time.perf_counter() - t0

    cohort = read_cohort(csv).set_index("patient_id").loc[X.index]
    truth = pd.read_csv(root / "cohort" / "truth.csv", dtype={"patient_id": str}).set_index("patient_id").loc[X.index]
    y = cohort["p53"].astype(int)
    tr, va = (cohort["split"] == "train").to_numpy(), (cohort["split"] == "validation").to_numpy()

    model = make_radiomics_model().fit(X[tr], y[tr])
    val_score = rad_score(model, X[va])["rad_score"]
    folds = StratifiedKFold(5, shuffle=True, random_state=args.seed)
    oof = cross_val_predict(make_radiomics_model(), X[tr], y[tr], cv=folds, method="predict_proba")[:, 1]
    # label-shuffled refits: one permutation still correlates with the true labels by chance (SD ~ 1/sqrt(n)),
    # so the null is a distribution over permutations, not one draw
    null_aucs = []
    for k in range(args.n_shuffles):
        shuffled = y[tr].sample(frac=1.0, random_state=args.seed + k).to_numpy()
        null_model = make_radiomics_model().fit(X[tr], shuffled)
        null_aucs.append(auc_ci(y[va].to_numpy(), rad_score(null_model, X[va])["rad_score"].to_numpy()).auc)
    selected = selected_features_table(model, X.columns)

    res = {
        "n_patients": len(X), "n_train": int(tr.sum()), "n_validation": int(va.sum()),
        "preset": args.preset, "params": args.params, "n_features": int(X.shape[1]),
        "n_selected": len(selected), "versions": versions(),
        "timings_this_run": timings,  # a re-run hits the preprocessing and radiomics caches
        "validation": _auc(y[va], val_score),
        "train_out_of_fold": _auc(y[tr], oof),
        "validation_shuffled_labels": {"n_permutations": len(null_aucs), "auc_mean": float(np.mean(null_aucs)),
                                       "auc_sd": float(np.std(null_aucs, ddof=1)) if len(null_aucs) > 1 else None,
                                       "auc_min": float(np.min(null_aucs)), "auc_max": float(np.max(null_aucs)),
                                       "aucs": null_aucs},
        "validation_latent_heterogeneity": _auc(y[va], truth.loc[va, "latent_heterogeneity"]),
        "validation_bayes_all_variables": _auc(y[va], truth.loc[va, "bayes_prob"]),
        "selected_features": selected.to_dict("records"),
    }
    out = RESULTS / f"radiomics_validation_n{args.n}_{args.preset}_{Path(args.params).stem}.json"
    atomic_write_json(out, res)
    for k in ("validation", "train_out_of_fold", "validation_latent_heterogeneity", "validation_bayes_all_variables"):
        r = res[k]
        print(f"{k:34s} AUC {r['auc']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})")
    r = res["validation_shuffled_labels"]
    print(f"{'validation, shuffled training labels':34s} AUC mean {r['auc_mean']:.3f} over {r['n_permutations']} "
          f"permutations (range {r['auc_min']:.3f}-{r['auc_max']:.3f})")
    print(json.dumps({k: res[k] for k in ("n_patients", "n_train", "n_validation", "n_features", "n_selected",
                                          "timings")}, indent=1))
    print(f"written to {out}")
    return res


if __name__ == "__main__":
    main()
