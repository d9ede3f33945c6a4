"""Repeated permuted-label (null) cohorts through the real fusion and statistics stages.

Under shuffled labels no model can predict anything, so every honest training-cohort (TC) and validation-cohort
(VC) AUC must average 0.5 and every 95% CI must cover 0.5 about 95% of the time. This script checks exactly that for
the clinical, radiomics, chosen-DL and combined models, for the nested pipeline (the default) and the apparent one,
with non-negative and free stacking weights.

Fixed feature tables, fresh labels: the synthetic cohort's clinical table (paper size: 224 training / 96 validation
patients), a radiomics table of noise features, and 12 "DL" candidates (6 networks x 2 arms) emulated by
logistic regressions on their own noise "deep features", cross-fitted on the study's folds with the permuted labels,
so their out-of-fold scores have the fold structure real cross-fitted networks have. Each permutation builds a
study folder and runs :func:`p53hcc.tools.pipeline.fit.run_fusion` and
:func:`p53hcc.tools.pipeline.statistics.run_statistics` unchanged.

    python scripts/null_cohorts.py --n-perm 100            # writes benchmarks/results/null_cohorts.json + figure
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121"]
MODELS = ("clinical", "radiomics", "dl", "combined")
VARIANTS = {"nested_nonnegative": ("nested", "nonnegative"), "nested_free": ("nested", "free"),
            "apparent_free": ("apparent", "free"),
            # nested, but the DL candidates' out-of-fold scores stand in for their pair-of-folds inner scores
            "nested_oof_standin": ("nested", "nonnegative")}
MAIN_VARIANTS = ("nested_nonnegative", "nested_free", "apparent_free")


def fixed_tables(n: int = 320, seed: int = 0, n_radiomics: int = 40, n_deep: int = 16) -> dict:
    """The feature tables every permutation reuses (labels are drawn afresh per permutation)."""
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    cohort, _ = sample_patients(n, seed=seed)
    for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
        cohort[col] = "x.nii.gz"
    rng = np.random.default_rng([seed, 1])
    ids = cohort["patient_id"].to_numpy()
    radiomics = pd.DataFrame(rng.normal(size=(n, n_radiomics)), columns=[f"ap_original_firstorder_F{i}"
                                                                         for i in range(n_radiomics)])
    radiomics.insert(0, "patient_id", ids)
    deep = {f"{arm}_{net}": rng.normal(size=(n, n_deep)) for arm in ("mc", "ff") for net in NETS}
    return {"cohort": cohort, "radiomics": radiomics, "deep": deep}


def _dl_scores(study: Path, tables: dict, labels: pd.Series, splits: dict, split: pd.Series) -> None:
    """Cross-fit each emulated DL candidate as the DL engine does (fold units, the full-cohort unit and the
    pair-of-folds units); write dl/<arm>/<net>/scores.parquet and inner_scores.parquet."""
    from sklearn.linear_model import LogisticRegression

    from p53hcc.fusion.models.nested import fold_map, fold_pairs, pair_inner_scores

    ids = tables["cohort"]["patient_id"].to_numpy()
    pos = {p: i for i, p in enumerate(ids)}
    fold_of = fold_map(splits)
    train_ids = [p for f in splits["folds"] for p in f["val"]]
    others = [p for p in ids if split[p] != "train"]

    def unit(X, fit_ids, score_ids):
        lr = LogisticRegression(C=0.1, max_iter=1000).fit(X[[pos[p] for p in fit_ids]],
                                                          labels.loc[fit_ids].astype(int))
        return lr.predict_proba(X[[pos[p] for p in score_ids]])[:, 1]

    for model, X in tables["deep"].items():
        arm, net = model.split("_", 1)
        rows = [pd.DataFrame({"patient_id": score_ids, "model": model, "fold": k,
                              "split": split.loc[score_ids].to_numpy(), "score": unit(X, fit_ids, score_ids)})
                for k, fit_ids, score_ids in [(f["fold"], f["train"], f["val"]) for f in splits["folds"]]
                + [(-1, train_ids, others)]]
        inner = []
        for pair in fold_pairs(splits):
            held = [p for p in train_ids if fold_of[p] in pair]
            fit_ids = [p for p in train_ids if fold_of[p] not in pair]
            inner.append(pair_inner_scores(pair, pd.DataFrame({"patient_id": held, "score": unit(X, fit_ids, held)}),
                                           fold_of))
        dest = study / "dl" / arm / net
        dest.mkdir(parents=True, exist_ok=True)
        pd.concat(rows, ignore_index=True).to_parquet(dest / "scores.parquet", index=False)
        pd.concat(inner, ignore_index=True).to_parquet(dest / "inner_scores.parquet", index=False)


def one_null(tables: dict, perm: int, variant: str, work: Path) -> pd.DataFrame:
    """One permuted-label cohort through fusion + statistics; returns its metrics.csv (AUC rows)."""
    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.pipeline.config import resolve_config
    from p53hcc.tools.pipeline.fit import run_fusion
    from p53hcc.tools.pipeline.statistics import run_statistics

    nesting, weights = VARIANTS[variant]
    rng = np.random.default_rng([perm, 7])
    cohort = tables["cohort"].copy()
    for part in ("train", "validation"):  # permute within each split, keeping its class counts
        mask = cohort["split"] == part
        cohort.loc[mask, "p53"] = rng.permutation(cohort.loc[mask, "p53"].to_numpy())
    study = work / f"{variant}_{perm}"
    (study / "cohort").mkdir(parents=True)
    csv = study / "cohort" / "cohort.csv"
    cohort.to_csv(csv, index=False)
    write_datalist(csv, study, folds=5, seed=perm)
    splits = json.loads((study / "splits.json").read_text())
    labels = cohort.set_index("patient_id")["p53"]
    split = cohort.set_index("patient_id")["split"]
    tables["radiomics"].to_parquet(study / "radiomics.parquet", index=False)
    _dl_scores(study, tables, labels, splits, split)
    if variant == "nested_oof_standin":
        for path in (study / "dl").glob("*/*/inner_scores.parquet"):
            path.unlink()
    cfg = resolve_config(profile="paper", seed=perm, **{"fusion.nesting": nesting, "fusion.stack_weights": weights})
    run_fusion(study, csv, cfg)
    run_statistics(study, csv, cfg)
    m = pd.read_csv(study / "metrics.csv")
    weights = json.loads((study / "selection.json").read_text())["combined_weights"]
    w = pd.DataFrame({"model": "combined", "split": "train", "metric": [f"weight_{k}" for k in weights],
                      "estimate": list(weights.values())})
    return pd.concat([m[m["metric"] == "auc"], w], ignore_index=True).assign(perm=perm, variant=variant)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant, model and split: mean and SD of the AUC, how often the CI covers 0.5, over the runs where the
    model was estimable, and how often it was not (degenerate: NaN with a reason, e.g. a constant clinical model)."""
    rows = rows[rows["model"].isin(MODELS) & (rows["metric"] == "auc")].assign(
        estimable=lambda d: np.isfinite(d["estimate"]),
        covers=lambda d: (d["ci_low"] <= 0.5) & (0.5 <= d["ci_high"]))
    keys = ["variant", "model", "split"]
    out = rows.groupby(keys).agg(runs=("estimable", "size"), n=("estimable", "sum")).reset_index()
    ok = rows[rows["estimable"]].groupby(keys).agg(mean_auc=("estimate", "mean"), sd_auc=("estimate", "std"),
                                                   coverage=("covers", "mean")).reset_index()
    out = out.merge(ok, on=keys, how="left")
    out["not_estimable"] = 1 - out["n"] / out["runs"]
    out["se_mean"] = out["sd_auc"] / np.sqrt(out["n"])
    return out


def weight_signs(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant and input of the combined model (full training cohort): how often its weight came out
    negative, zero or positive (an input left out as degenerate counts as zero)."""
    w = rows[rows["metric"].str.startswith("weight_") & (rows["metric"] != "weight_intercept")]
    if w.empty:
        return pd.DataFrame()
    wide = w.pivot_table(index=["variant", "perm"], columns="metric", values="estimate").fillna(0.0)
    out = []
    for variant, g in wide.groupby(level="variant"):
        for col in g.columns:
            v = g[col].to_numpy()
            out.append({"variant": variant, "input": col.removeprefix("weight_"), "negative": float(np.mean(v < -1e-9)),
                        "zero": float(np.mean(np.abs(v) <= 1e-9)), "positive": float(np.mean(v > 1e-9)),
                        "runs": len(v)})
    return pd.DataFrame(out)


def paired_difference(rows: pd.DataFrame, model: str = "combined", split: str = "train",
                      a: str = "apparent_free", b: str = "nested_nonnegative") -> dict:
    """Mean paired AUC difference ``a - b`` of one model over the permutations both variants estimated."""
    w = rows[(rows["model"] == model) & (rows["split"] == split) & (rows["metric"] == "auc")].pivot_table(index="perm", columns="variant",
                                                                               values="estimate")
    if a not in w or b not in w:
        return {}
    d = (w[a] - w[b]).dropna()
    return {"model": model, "split": split, "a": a, "b": b, "mean": float(d.mean()),
            "se": float(d.std() / np.sqrt(len(d))) if len(d) > 1 else float("nan"), "n": len(d)}


def figure(summary: pd.DataFrame, rows: pd.DataFrame, dest: Path) -> Path:
    """Mean TC/VC AUC with its spread and the CI coverage of 0.5, per model and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in VARIANTS if v in set(rows["variant"])]
    width = 0.8 / len(variants)

    def offset(j: int) -> float:
        return (j - (len(variants) - 1) / 2) * width
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.4))
    axes = axes.ravel()
    main = summary[(summary.variant == variants[0]) & (summary.split == "train")].set_index("model")
    ticks = [m if main.loc[m, "not_estimable"] == 0 else f"{m}\n(estimable in {1 - main.loc[m, 'not_estimable']:.0%})"
             if m in main.index else m for m in MODELS]
    for ax, split in zip(axes[:2], ("train", "validation")):
        for j, variant in enumerate(variants):
            for i, model in enumerate(MODELS):
                est = rows[(rows.variant == variant) & (rows.model == model) & (rows.split == split)
                           & (rows.metric == "auc")]["estimate"]
                x = i + offset(j)
                ax.errorbar(x, est.mean(), yerr=est.std(), fmt="o", color=f"C{j}", capsize=3,
                            label=variant if i == 0 else None)
        ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.set(xticks=range(len(MODELS)), xticklabels=ticks, ylim=(0.3, 0.7), ylabel="AUC (mean ± SD)",
               title=f"{'Training (cross-fitted)' if split == 'train' else 'Validation'} cohort, shuffled labels")
        ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax = axes[2]
    for j, variant in enumerate(variants):
        s = summary[(summary.variant == variant) & (summary.split == "train")].set_index("model").reindex(MODELS)
        ax.bar(np.arange(len(MODELS)) + offset(j), s["coverage"], width=width, color=f"C{j}", label=variant)
    ax.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax.axhline(0.90, color="red", ls=":", lw=0.8)
    ax.set(xticks=range(len(MODELS)), xticklabels=ticks, ylim=(0.5, 1.0), ylabel="coverage of 0.5",
           title="Training-cohort 95% CI covers 0.5 (dashed: 0.95, dotted: 0.90)")
    ax = axes[3]
    signs = weight_signs(rows)
    if len(signs):
        inputs = [i for i in ("clinical", "radiomics", "dl") if i in set(signs["input"])]
        for j, variant in enumerate(variants):
            s = signs[signs.variant == variant].set_index("input").reindex(inputs)
            ax.bar(np.arange(len(inputs)) + offset(j), s["negative"], width=width, color=f"C{j}", label=variant)
        ax.set(xticks=range(len(inputs)), xticklabels=inputs, ylim=(0, 1), ylabel="fraction of null cohorts",
               title="Combined model: input weight < 0")
        ax.legend(fontsize=8, frameon=False, loc="upper left")
    else:
        ax.axis("off")
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=110)
    plt.close(fig)
    return dest


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-perm", type=int, default=100)
    ap.add_argument("--n", type=int, default=320, help="patients (7:3 train/validation)")
    ap.add_argument("--variants", default=",".join(MAIN_VARIANTS))
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--first-perm", type=int, default=0, help="seed of the first permutation")
    ap.add_argument("--merge", nargs="*", default=[], help="runs CSVs of earlier invocations to pool with")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    from p53hcc.tools.io import atomic_write_table

    tables = fixed_tables(args.n)
    results = Path(args.results)
    runs_csv = results / "null_cohorts_progress.csv"  # this invocation's runs, rewritten after every permutation
    done = pd.read_csv(runs_csv) if runs_csv.is_file() else pd.DataFrame(columns=["variant", "perm"])
    finished = set(zip(done["variant"], done["perm"]))
    if finished:
        print(f"resuming: {len(finished)} (variant, permutation) runs already in {runs_csv}", flush=True)
    rows, t0 = [done], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="null_") as tmp:
        for i, perm in enumerate(range(args.first_perm, args.first_perm + args.n_perm)):
            for variant in args.variants.split(","):
                if (variant, perm) not in finished:
                    rows.append(one_null(tables, perm, variant, Path(tmp)))
                    shutil.rmtree(Path(tmp) / f"{variant}_{perm}", ignore_errors=True)
            atomic_write_table(runs_csv, pd.concat(rows, ignore_index=True))  # resumable after every permutation
            print(f"permutation {i + 1}/{args.n_perm} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = pd.concat([*rows, *(pd.read_csv(f) for f in args.merge)], ignore_index=True)
    if rows.duplicated(["variant", "perm", "model", "split", "metric"]).any():
        raise SystemExit("the merged runs share permutation seeds; use --first-perm")
    summary = summarise(rows)
    keep = rows["model"].isin(MODELS) | rows["metric"].str.startswith("weight_")
    atomic_write_table(results / "null_cohorts_runs.csv", rows[keep].sort_values(["variant", "perm", "model", "split",
                                                                                  "metric"]))
    fig = figure(summary, rows, results / "null_cohorts.png")
    record = {"benchmark": "null_cohorts", "n_perm": int(rows["perm"].nunique()), "n": args.n,
              "n_train": int((tables["cohort"]["split"] == "train").sum()), "seconds": time.perf_counter() - t0,
              "summary": summary.to_dict("records"), "figure": fig.name, "runs": "null_cohorts_runs.csv",
              "paired_difference": [paired_difference(rows, m) for m in ("combined", "dl")],
              "weight_signs": weight_signs(rows).to_dict("records"),
              "versions": {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__}}
    from p53hcc.tools.io import atomic_write_json

    dest = atomic_write_json(results / "null_cohorts.json", record)
    print(summary.to_string(index=False))
    return dest


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
