"""Analysis and figure of ``benchmarks/dl_learning.py``: the DL arms against the imaging ceiling, on the same patients.

For every arm (``<arm>_<net>``) of the real cohort:

* training-cohort out-of-fold AUC (mean of the fold AUCs, Nadeau-Bengio CI: :func:`p53hcc.fusion.stats.metric_rows.crossfit_auc`;
  the pooled AUC beside it) and validation AUC (DeLong CI: :func:`p53hcc.fusion.stats.auc.auc_ci`);
* on the same patients: the image-only ceiling (``truth.csv`` ``image_bayes_prob``: size + enhancement findings +
  latent), the ceiling of a size-blind image model (findings + latent: the crops are resized to one size), the
  latent heterogeneity alone (``latent_bayes_prob``), the radiomics model, and the paired DeLong test arm vs
  radiomics on the validation cohort;
* what the arm adds to the clinical model: clinical vs clinical + arm (the study's combined model on two inputs,
  cross-fitted on the out-of-fold scores), paired DeLong on the validation cohort, and the Spearman correlation of
  the arm's score with ``llr_latent`` (the signal the clinical table lacks), with the size term and with the
  enhancement findings' term;
* learning curves: training loss and held-out-fold AUC per epoch (each fold network's ``history.csv``), mean over
  folds (FF: over folds and phases);
* the same AUCs on the null cohort (labels permuted), whose CIs must cover 0.5.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.models.factories import make_combined_model
from p53hcc.fusion.models.oof import crossfit_scores
from p53hcc.fusion.stats.auc import auc_ci, delong_test
from p53hcc.fusion.stats.metric_rows import crossfit_auc
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.cohort.splits import load_splits
from p53hcc.tools.io import read_table

PHASES = ("ap", "pvp", "dp")


def _auc(y, s) -> dict:
    r = auc_ci(np.asarray(y, int), np.asarray(s, float))
    return {"auc": r.auc, "ci_low": r.ci_low, "ci_high": r.ci_high, "method": "DeLong"}


def _cf_auc(y, s, fold) -> dict:
    r = crossfit_auc(np.asarray(y, int), np.asarray(s, float), np.asarray(fold))
    return {"auc": r.auc, "ci_low": r.ci_low, "ci_high": r.ci_high, "method": "fold mean, Nadeau-Bengio",
            "auc_pooled": auc_ci(np.asarray(y, int), np.asarray(s, float)).auc}


def _test(y, a, b) -> dict:
    t = delong_test(np.asarray(y, int), np.asarray(a, float), np.asarray(b, float))
    return {"auc_a": t.auc_a, "auc_b": t.auc_b, "diff_ci_low": t.diff_ci_low, "diff_ci_high": t.diff_ci_high,
            "z": t.z, "p_value": t.p_value}


def _spearman(a, b) -> dict:
    from scipy.stats import spearmanr

    r = spearmanr(np.asarray(a, float), np.asarray(b, float))
    return {"rho": float(r.statistic), "p_value": float(r.pvalue)}


def truth_terms(csv: Path) -> pd.DataFrame | None:
    """Per patient: the posteriors of ``truth.csv`` and its image terms split into size and findings."""
    from p53hcc.tools.cohort.synth.cohort import log_likelihood_ratios

    path = Path(csv).parent / "truth.csv"
    if not path.is_file():
        return None
    truth = read_table(path).astype({"patient_id": str}).set_index("patient_id")
    cohort = read_cohort(csv).set_index("patient_id")
    llr = log_likelihood_ratios(cohort.loc[truth.index].reset_index())
    truth["llr_size"] = llr["ltd_mm"].to_numpy()
    truth["llr_findings"] = truth["llr_semantic"] - truth["llr_size"]
    # what a size-blind image model could reach: findings + latent (its AUC only needs the ranking)
    truth["image_nosize_logit"] = truth["prior_logit"] + truth["llr_findings"] + truth["llr_latent"]
    return truth


def learning_curves(arm_dir: Path, arm: str) -> list[dict]:
    """Mean over folds (FF: folds and phases) of each epoch's training loss and held-out-fold AUC."""
    files = sorted(arm_dir.glob("fold*/history.csv" if arm == "mc" else "fold*/*/history.csv"))
    if not files:
        return []
    hist = pd.concat([read_table(f) for f in files], ignore_index=True)
    curve = hist.groupby("epoch").mean(numeric_only=True).reset_index()
    return [{k: (float(v) if k != "epoch" else int(v)) for k, v in row.items()} for row in curve.to_dict("records")]


def _frame(csv: Path, study: Path) -> tuple[pd.DataFrame, dict]:
    """Wide scores (one column per model) with ``y``, ``split``, ``fold``; and the folds."""
    scores = read_table(study / "scores.parquet").astype({"patient_id": str})
    wide = scores.pivot(index="patient_id", columns="model", values="score")
    meta = scores.drop_duplicates("patient_id").set_index("patient_id")[["split"]]
    fold = scores[scores["model"] == "clinical"].set_index("patient_id")["fold"]
    cohort = read_cohort(csv).set_index("patient_id")
    wide = wide.join(meta).assign(fold=fold, y=cohort["p53"].astype(int))
    return wide.sort_index(), load_splits(study)


def arm_summary(wide: pd.DataFrame, model: str, truth: pd.DataFrame | None) -> dict:
    """The AUCs of one arm and everything it is compared with, on the same patients (module docstring)."""
    tr, va = wide[wide["split"] == "train"], wide[wide["split"] == "validation"]
    out = {"train_oof": _cf_auc(tr["y"], tr[model], tr["fold"]), "validation": _auc(va["y"], va[model]),
           "radiomics": {"train_oof": _cf_auc(tr["y"], tr["radiomics"], tr["fold"]),
                         "validation": _auc(va["y"], va["radiomics"])},
           "vs_radiomics_validation": _test(va["y"], va[model], va["radiomics"])}
    if truth is not None:
        refs = {"image_ceiling": "image_bayes_prob", "image_ceiling_size_blind": "image_nosize_logit",
                "latent_only": "latent_bayes_prob", "clinical_ceiling": "clinical_bayes_prob"}
        out["references"] = {name: {"train": _auc(tr["y"], truth.loc[tr.index, col]),
                                    "validation": _auc(va["y"], truth.loc[va.index, col])}
                             for name, col in refs.items()}
        out["spearman"] = {term: {"train_oof": _spearman(tr[model], truth.loc[tr.index, term]),
                                  "validation": _spearman(va[model], truth.loc[va.index, term])}
                           for term in ("llr_latent", "llr_size", "llr_findings")}
    return out


def clinical_plus(wide: pd.DataFrame, model: str, splits: dict) -> dict:
    """Clinical vs clinical + ``model``: the study's combined model (LR on the two logits, non-negative weights)
    cross-fitted on the training out-of-fold scores, fitted on all of them for the validation cohort."""
    X = wide[["clinical", model]].rename_axis("patient_id")
    both = crossfit_scores(f"clinical+{model}", partial(make_combined_model, inputs=["clinical", model]), X,
                           wide["y"], wide["split"], splits).set_index("patient_id").loc[wide.index]
    tr, va = wide["split"] == "train", wide["split"] == "validation"
    return {"train_oof": _cf_auc(wide.loc[tr, "y"], both.loc[tr, "score"], both.loc[tr, "fold"]),
            "validation": _auc(wide.loc[va, "y"], both.loc[va, "score"]),
            "clinical": {"train_oof": _cf_auc(wide.loc[tr, "y"], wide.loc[tr, "clinical"], wide.loc[tr, "fold"]),
                         "validation": _auc(wide.loc[va, "y"], wide.loc[va, "clinical"])},
            "clinical_vs_clinical_plus_validation": _test(wide.loc[va, "y"], wide.loc[va, "clinical"],
                                                          both.loc[va, "score"]),
            "clinical_vs_clinical_plus_train_descriptive": _test(wide.loc[tr, "y"], wide.loc[tr, "clinical"],
                                                                 both.loc[tr, "score"]),
            "note": ("stacked on out-of-fold scores (the study's apparent stacking): the training AUC is slightly "
                     "optimistic, the validation AUC is not")}


def _covers(r: dict, value: float = 0.5) -> bool:
    return bool(r["ci_low"] <= value <= r["ci_high"])


def analyse(studies: dict[str, tuple[Path, Path]], cfg: dict) -> dict:
    """The benchmark's record (see the module docstring); ``studies``: ``real`` and optionally ``null``."""
    csv, study = studies["real"]
    wide, splits = _frame(csv, study)
    truth = truth_terms(csv)
    arms = [f"{a}_{n}" for n in cfg["nets"] for a in cfg["arms"] if f"{a}_{n}" in wide.columns]
    record: dict = {"benchmark": "dl_learning", "cohort": {
        "n": len(wide), **{f"n_{sp}": int((wide["split"] == sp).sum()) for sp in ("train", "validation")},
        **{f"events_{sp}": int(wide.loc[wide["split"] == sp, "y"].sum()) for sp in ("train", "validation")}},
        "arms": {}}
    for model in arms:
        arm, net = model.split("_", 1)
        rec = arm_summary(wide, model, truth)
        rec["clinical_plus_arm"] = clinical_plus(wide, model, splits)
        rec["learning_curve"] = learning_curves(study / "dl" / arm / net, arm)
        record["arms"][model] = rec
    if "null" in studies:
        ncsv, nstudy = studies["null"]
        nwide, _ = _frame(ncsv, nstudy)
        tr, va = nwide[nwide["split"] == "train"], nwide[nwide["split"] == "validation"]
        record["null"] = {}
        for model in [*arms, "radiomics", "clinical"]:
            if model not in nwide.columns:
                continue
            arm, _, net = model.partition("_")
            entry = {"train_oof": _cf_auc(tr["y"], tr[model], tr["fold"]), "validation": _auc(va["y"], va[model])}
            entry["ci_covers_half"] = _covers(entry["train_oof"]) and _covers(entry["validation"])
            if net:
                entry["learning_curve"] = learning_curves(nstudy / "dl" / arm / net, arm)
            record["null"][model] = entry
    record["checks"] = checks(record)
    return record


def checks(record: dict) -> dict:
    """The issue's criteria, evaluated on the record."""
    out = {}
    null = record.get("null") or {}
    out["null_arm_cis_cover_half"] = {m: v["ci_covers_half"] for m, v in null.items() if m in record["arms"]}
    learned = {}
    for model, r in record["arms"].items():
        va, rad = r["validation"], r["radiomics"]["validation"]
        learned[model] = {"validation_ci_above_half": bool(va["ci_low"] > 0.5),
                          "overlaps_radiomics": bool(va["ci_low"] <= rad["ci_high"] and rad["ci_low"] <= va["ci_high"])}
    out["arm_learns"] = learned
    out["some_arm_above_half_and_overlapping_radiomics"] = any(v["validation_ci_above_half"] and
                                                               v["overlaps_radiomics"] for v in learned.values())
    return out


# ---------------------------------------------------------------------------------------------------- figure
def _forest_rows(record: dict) -> list[tuple[str, dict | None, dict | None]]:
    """(label, training AUC, validation AUC) rows of the AUC panel, references first."""
    first = next(iter(record["arms"].values()))
    rows = []
    names = {"image_ceiling": "Image ceiling (size + findings + latent)",
             "image_ceiling_size_blind": "Size-blind image ceiling (findings + latent)",
             "latent_only": "Latent heterogeneity alone", "clinical_ceiling": "Clinical-table ceiling"}
    for key, label in names.items():
        ref = first.get("references", {}).get(key)
        if ref:
            rows.append((label, ref["train"], ref["validation"]))
    rows.append(("Radiomics model", first["radiomics"]["train_oof"], first["radiomics"]["validation"]))
    cp = first["clinical_plus_arm"]["clinical"]
    rows.append(("Clinical model", cp["train_oof"], cp["validation"]))
    for model, r in record["arms"].items():
        rows.append((_label(model), r["train_oof"], r["validation"]))
        rows.append((f"Clinical + {_label(model)}", r["clinical_plus_arm"]["train_oof"],
                     r["clinical_plus_arm"]["validation"]))
    return rows


def _label(model: str) -> str:
    from p53hcc.fusion.report.labels import model_label

    arm = model.split("_", 1)[0]
    return f"{model_label(model)} ({arm.upper()})" if arm in ("mc", "ff") else model_label(model)


def _forest(ax, rows, title: str) -> None:
    ys = np.arange(len(rows))[::-1]
    for y, (label, tc, vc) in zip(ys, rows):
        for r, dy, marker, color, name in ((tc, 0.15, "o", "#1f77b4", "TC (models: out-of-fold)"),
                                           (vc, -0.15, "s", "#d62728", "VC")):  # references: all TC patients
            if r is None or not np.isfinite(r["auc"]):
                continue
            ax.plot([r["ci_low"], r["ci_high"]], [y + dy] * 2, color=color, lw=1.5)
            ax.plot(r["auc"], y + dy, marker=marker, color=color, ms=5, label=name if y == ys[0] else None)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_yticks(ys, [r[0] for r in rows], fontsize=8)
    ax.set_xlim(0.2, 1.0)
    ax.set_xlabel("AUC (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=7, frameon=True)  # AUCs below 0.35 are rare: the corner is free


def draw_figure(record: dict, dest: Path) -> Path:
    """Four panels: AUCs vs the ceilings, held-out AUC and training loss per epoch, the null cohort."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from p53hcc.tools.io import atomic_path

    fig, axes = plt.subplots(2, 2, figsize=(14, 10), gridspec_kw={"width_ratios": [1.15, 1]})
    _forest(axes[0, 0], _forest_rows(record), "Real cohort: arms vs ceilings on the same patients")
    colors = dict(zip(record["arms"], ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]))
    null = record.get("null") or {}
    for model, r in record["arms"].items():
        for curve, style, tag in ((r["learning_curve"], "-", "real"),
                                  ((null.get(model) or {}).get("learning_curve") or [], "--", "null")):
            if not curve:
                continue
            ep = [c["epoch"] for c in curve]
            if any("val_auc" in c for c in curve):
                axes[0, 1].plot(ep, [c.get("val_auc", np.nan) for c in curve], style, color=colors[model],
                                label=f"{_label(model)} ({tag})")
            axes[1, 0].plot(ep, [c["train_loss"] for c in curve], style, color=colors[model],
                            label=f"{_label(model)} ({tag})")
    axes[0, 1].axhline(0.5, color="grey", ls=":", lw=1)
    axes[0, 1].set(xlabel="epoch", ylabel="held-out-fold AUC (mean over folds)", ylim=(0.3, 0.9),
                   title="Held-out AUC per epoch (FF: the phase networks' own heads)")
    axes[1, 0].set(xlabel="epoch", ylabel="training loss (mean over folds)", title="Training loss per epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (axes[0, 1], axes[1, 0]):
        ax.legend(fontsize=7, loc="best")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.title.set_fontsize(10)
    if null:
        rows = [(_label(m), v["train_oof"], v["validation"]) for m, v in null.items()]
        cfg = record.get("config", {})
        _forest(axes[1, 1], rows, f"Null cohort (labels permuted, {cfg.get('null_epochs') or cfg.get('epochs')} "
                "epochs): CIs must cover 0.5")
    else:
        axes[1, 1].set_axis_off()
    cfg = record.get("config", {})
    fig.suptitle(f"DL arms on the synthetic cohort (n={record['cohort']['n']}, {cfg.get('spatial_size')} px, "
                 f"{cfg.get('epochs')} epochs, {record.get('device', '')})", fontsize=12)
    fig.tight_layout()
    with atomic_path(Path(dest)) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(dest)
