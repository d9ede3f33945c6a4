"""Centre-shift benchmark: how much each arm loses on scanners it never saw, with and without ComBat harmonisation.

For each scanner-effect strength (``--strengths``, :func:`p53hcc.tools.cohort.synth.images.scanner_profiles`):

1. a synthetic internal cohort (7 scanners, train/validation) and a synthetic external cohort (3 unseen scanners:
   other gain/offset, noise, bias, slice thickness) are generated at that strength (real images, demo size);
2. the real study runs on the internal cohort (``p53hcc study``: N4 + 1 mm + z-score, PyRadiomics, the MC and FF
   arms at a small CPU setting, clinical / radiomics / combined models, statistics, frozen ``model/``) twice:
   ``fusion.harmonise: none`` and ``combat`` (the second run reuses every image stage and network: only the FF
   head and the fusion-level models are refitted);
3. each frozen study scores the external cohort (``p53hcc evaluate``, plus the frozen MC and FF networks of both
   arms): new scanners follow the harmoniser's documented rule (a new batch's shift/scale estimated label-free
   from its own patients), nothing is refitted on external labels.

Per arm (clinical, radiomics, MC, FF, combined): internal validation AUC and external AUC (DeLong CIs), the drop
(CI from the two independent DeLong variances), and the matched population references: the AUC of the true
posterior of that arm's inputs on the same patients (``truth.csv``), whose own drop is pure sampling. The
*excess drop* (model drop minus reference drop) is what the scanner change costs. Also per external scanner.

Also: the scanners' share of the radiomics features' variance (image-level chain alone vs + ComBat), and, per
strength and arm, ComBat vs none on the same external patients (paired DeLong; per-patient scores are kept).

Resumable: finished cells (strength x harmonisation) are kept in the output JSON and skipped; the study folders
cache every stage. A strength's work folder is deleted when both of its cells are done (``--keep`` keeps it; it
takes ~3 GB at the size below). The committed results were made niced on a shared 2-core machine (load 9-15 from
other users: wall-clock times are inflated) with::

    nice -n 10 python benchmarks/centre_shift.py --work /tmp/centre_shift --n-internal 120 --n-external 80 --epochs 6
    # about 25 min per strength there (the internal images and networks ~15 min, the external cohort ~7 min)
    python benchmarks/centre_shift.py --summary   # the markdown table of docs/harmonisation.md
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this folder is sys.path[0] and its radiomics.py would shadow PyRadiomics (`import radiomics`)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
RESULTS = ROOT / "benchmarks" / "results"
ARMS = ("clinical", "radiomics", "mc", "ff", "combined")
HARMONISE = ("none", "combat")
log = logging.getLogger("centre_shift")


def _auc(y, s) -> dict:
    """AUC with DeLong's CI (NaN with a reason when a class is missing)."""
    from p53hcc.fusion.stats.auc import auc_ci
    from p53hcc.fusion.stats.metric_rows import degenerate_reason

    y, s = np.asarray(y, int), np.asarray(s, float)
    if len(np.unique(y)) >= 2 and (reason := degenerate_reason(s)):
        return {"auc": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "se": float("nan"),
                "n": len(y), "note": reason}
    if len(np.unique(y)) < 2:
        return {"auc": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "se": float("nan"),
                "n": len(y), "note": "one class only: AUC undefined"}
    r = auc_ci(y, s)
    return {"auc": r.auc, "ci_low": r.ci_low, "ci_high": r.ci_high, "se": r.se, "n": len(y),
            "n_events": int(y.sum())}


def _calibration(y, p) -> dict:
    """Calibration-in-the-large and slope (Wald CIs; NaN where a fit cannot be made)."""
    from p53hcc.fusion.stats.calibration import calibration_slope_intercept

    out = calibration_slope_intercept(np.asarray(y, int), np.asarray(p, float))
    return {k: (float(v) if np.isscalar(v) else v) for k, v in out.items()}


def drop(internal: dict, external: dict) -> dict:
    """Internal minus external AUC; the cohorts are independent, so the difference's variance is the sum of the two
    DeLong variances (normal CI, 95 %)."""
    d = internal["auc"] - external["auc"]
    se = float(np.hypot(internal["se"], external["se"]))
    return {"drop": d, "ci_low": d - 1.959964 * se, "ci_high": d + 1.959964 * se, "se": se}


def make_cohorts(work: Path, strength: float, args) -> tuple[Path, Path]:
    """The internal and external synthetic cohorts of one strength (made once; reused when present)."""
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    paths = []
    for profile, n in (("internal", args.n_internal), ("external", args.n_external)):
        csv = work / f"{profile}_cohort" / "cohort.csv"
        if not csv.is_file():
            make_cohort(n, csv.parent, seed=args.seed, size="demo", second_reader=(profile == "internal"),
                        profile=profile, scanner_effect=strength)
        paths.append(csv)
    return paths[0], paths[1]


def run_internal(internal: Path, study: Path, harmonise: str, args) -> None:
    """The real study on the internal cohort (cached stages: a second harmonisation reuses images and networks)."""
    from p53hcc.tools.pipeline.study import run_study

    run_study(cohort=str(internal), out=study, nets=args.net, profile="demo", paper_selection=False, **{
        "fusion.harmonise": harmonise, "fusion.nesting": "apparent", "dl.epochs": args.epochs,
        "dl.spatial_size": args.spatial_size, "folds": args.folds, "gradcam.n": 1, "preprocess.workers": args.workers,
        "radiomics.workers": args.workers})


def snapshot(study: Path, dest: Path, net: str) -> Path:
    """Keep what scoring new patients needs from one run (the frozen ``model/`` and both arms' full-cohort networks),
    so the next run may refit the heads and the internal preprocessed volumes may be deleted (disk)."""
    if not (dest / "done").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(study / "model", dest / "model")
        for arm in ("mc", "ff"):
            shutil.copytree(study / "dl" / arm / net / "full", dest / "arms" / arm)
        shutil.copy2(study / "radiomics.parquet", dest / "radiomics.parquet")
        (dest / "done").write_text("ok")
    return dest


def external_scores(frozen: Path, external: Path, out: Path, args) -> pd.DataFrame:
    """External patients scored by a frozen study: evaluate (clinical, radiomics, chosen DL, combined) plus the
    frozen full-cohort MC and FF networks; one row per patient."""
    from p53hcc.tools.dl.frozen import predict_frozen
    from p53hcc.tools.io import read_table
    from p53hcc.tools.pipeline.freeze import load_model
    from p53hcc.tools.pipeline.predict import evaluate_cohort

    evaluate_cohort(frozen / "model", external, out)
    pred = read_table(out / "predictions.csv").astype({"patient_id": str}).set_index("patient_id")
    column = (load_model(frozen / "model")["manifest"].get("harmonisation") or {}).get("batch_column")
    table = pd.DataFrame({"clinical": pred["clinical"], "radiomics": pred["radiomics"],
                          "combined": pred["probability"]})
    for arm in ("mc", "ff"):
        s = predict_frozen(frozen / "arms" / arm, external, out / "work", arm=arm, device="cpu", batch_column=column)
        s.index = s.index.astype(str)
        table[arm] = s.reindex(table.index)
    return table


def internal_validation(study: Path, args) -> pd.DataFrame:
    """Validation-cohort scores of the study per arm (one row per patient)."""
    from p53hcc.tools.io import read_table

    s = read_table(study / "scores.parquet").astype({"patient_id": str})
    s = s[s["split"] == "validation"]
    names = {"clinical": "clinical", "radiomics": "radiomics", "combined": "combined",
             "mc": f"mc_{args.net}", "ff": f"ff_{args.net}"}
    return pd.DataFrame({arm: s[s["model"] == m].set_index("patient_id")["score"] for arm, m in names.items()})


def _truth(csv: Path) -> pd.DataFrame:
    from p53hcc.tools.io import read_table

    return read_table(csv.parent / "truth.csv").astype({"patient_id": str}).set_index("patient_id")


def _reference_column(arm: str) -> str:
    from p53hcc.tools.pipeline.statistics import reference_for

    return reference_for({"mc": "mc_x", "ff": "ff_x"}.get(arm, arm))[0]


def _side(scores: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Per arm: AUC, calibration and the matched population reference of one cohort's scores."""
    out = {}
    for arm in ARMS:
        y = truth.loc[scores.index, "p53"].to_numpy(int)
        out[arm] = {"auc": _auc(y, scores[arm].to_numpy(float)),
                    "calibration": _calibration(y, scores[arm].to_numpy(float)),
                    "reference": _auc(y, truth.loc[scores.index, _reference_column(arm)].to_numpy(float))}
    return out


def scanner_share(X: pd.DataFrame, batch: pd.Series) -> float:
    """Median over features of the share of variance between scanners (eta squared of a one-way layout)."""
    X = X.loc[:, X.std() > 0]
    grand = X.mean()
    between = X.groupby(batch.loc[X.index].to_numpy()).apply(lambda g: len(g) * (g.mean() - grand) ** 2).sum()
    return float(np.median(between / ((X - grand) ** 2).sum()))


def scanner_shares(frozen: Path, internal: Path, external: Path, ext_radiomics: Path) -> dict:
    """How much of the radiomics features' variance is scanner after the image-level chain (N4, 1 mm, z-score),
    and after ComBat fitted on the internal training patients (new scanners: the label-free rule)."""
    from p53hcc.fusion.models.harmonise import BATCH, ComBatHarmoniser
    from p53hcc.tools.io import read_table

    feats = json.loads((frozen / "model" / "radiomics_features.json").read_text())
    rows = {}
    for name, csv, path in (("internal", internal, frozen / "radiomics.parquet"), ("external", external, ext_radiomics)):
        X = read_table(path).astype({"patient_id": str}).set_index("patient_id")[feats]
        split = read_table(csv).astype({"patient_id": str}).set_index("patient_id")["split"]  # cohort.csv's
        rows[name] = (X, _truth(csv).loc[X.index, "scanner"], split.loc[X.index])
    Xi, bi, si = rows["internal"]
    combat = ComBatHarmoniser().fit(Xi[si == "train"].assign(**{BATCH: bi[si == "train"]}))
    out = {}
    for name, (X, b, _) in rows.items():
        out[name] = {"image_level_only": scanner_share(X, b),
                     "image_level_and_combat": scanner_share(combat.transform(X.assign(**{BATCH: b})), b)}
    return out


def internal_part(strength: float, harmonise: str, internal: Path, study: Path, work: Path, args) -> dict:
    """Run the study with one harmonisation, keep its frozen model, and measure the internal validation cohort."""
    t0 = time.perf_counter()
    run_internal(internal, study, harmonise, args)
    snapshot(study, work / f"frozen_{harmonise}", args.net)
    chosen = json.loads((study / "selection.json").read_text()).get("chosen") or {}
    harm = study / "fusion" / "harmonisation.json"
    return {"strength": strength, "harmonise": harmonise, "chosen_dl": chosen.get("model"), "internal_csv": str(internal),
            "internal": _side(internal_validation(study, args), _truth(internal)),
            "harmonisation": json.loads(harm.read_text()) if harm.is_file() else None,
            "seconds": {"study": round(time.perf_counter() - t0, 1)}}


def external_part(part: dict, external: Path, work: Path, args) -> dict:
    """Score the external cohort with the kept frozen model; drops, excess drops and per-scanner AUCs."""
    t0 = time.perf_counter()
    ext = external_scores(work / f"frozen_{part['harmonise']}", external, work / "evaluate", args)
    truth = _truth(external)
    side = _side(ext, truth)
    out = {**part, "arms": {}}
    out["seconds"] = {**part["seconds"], "external": round(time.perf_counter() - t0, 1)}
    if part["harmonise"] == "none":
        out["scanner_variance_share"] = scanner_shares(work / "frozen_none", Path(part["internal_csv"]), external,
                                                       work / "evaluate" / "work" / "radiomics.parquet")
    scanners = truth.loc[ext.index, "scanner"]
    for arm in ARMS:
        i, e = part["internal"][arm], side[arm]
        row = {"internal": i["auc"], "external": e["auc"], "internal_reference": i["reference"],
               "external_reference": e["reference"], "internal_calibration": i["calibration"],
               "external_calibration": e["calibration"]}
        row["drop"] = drop(row["internal"], row["external"])
        row["reference_drop"] = drop(row["internal_reference"], row["external_reference"])
        row["excess_drop"] = row["drop"]["drop"] - row["reference_drop"]["drop"]
        ref = _reference_column(arm)
        row["external_by_scanner"] = {
            sc: {"model": _auc(truth.loc[ids, "p53"], ext.loc[ids, arm]),
                 "reference": _auc(truth.loc[ids, "p53"], truth.loc[ids, ref])}
            for sc, ids in scanners.groupby(scanners).groups.items()}
        out["arms"][arm] = row
    del out["internal"]
    # per patient, so that the two harmonisations can be compared on the same external patients (paired DeLong)
    out["external_scores"] = {"p53": truth.loc[ext.index, "p53"].astype(int).to_dict(),
                              **{arm: ext[arm].astype(float).round(8).to_dict() for arm in ARMS}}
    return out


def paired(results: dict) -> dict:
    """Per strength and arm: ComBat vs none on the same external patients (paired DeLong, 95 % CI of the
    difference); NaN with a reason where a cell lacks per-patient scores or a score is constant."""
    import dataclasses

    from p53hcc.fusion.stats.auc import delong_test

    out = {}
    for s in sorted({c["strength"] for c in results["cells"].values()}):
        cells = [results["cells"].get(f"s{s:g}_{h}") for h in ("combat", "none")]
        if any(c is None or "external_scores" not in c for c in cells):
            out[f"{s:g}"] = {"note": "per-patient external scores not stored for this strength (cells computed "
                                     "before they were kept): no paired comparison"}
            continue
        ids = list(cells[0]["external_scores"]["p53"])
        y = np.array([cells[0]["external_scores"]["p53"][i] for i in ids], int)
        row = {}
        for arm in ARMS:
            a, b = (np.array([c["external_scores"][arm][i] for i in ids], float) for c in cells)
            if np.ptp(a) == 0 or np.ptp(b) == 0:
                row[arm] = {"note": "a constant model: no paired test"}
                continue
            row[arm] = {k: float(v) for k, v in dataclasses.asdict(delong_test(y, a, b)).items()}
        out[f"{s:g}"] = {"a": "combat", "b": "none", "n": len(ids), "arms": row}
    return out


def figure(results: dict, path: Path) -> None:
    """AUCs (internal validation, external) and the excess drop per arm, with and without harmonisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = sorted({c["strength"] for c in results["cells"].values()})
    fig, axes = plt.subplots(2, len(strengths), figsize=(6.2 * len(strengths), 7.5), squeeze=False)
    colours = {"none": "#7f8c8d", "combat": "#2e86c1"}
    x = np.arange(len(ARMS))
    for j, s in enumerate(strengths):
        top, bottom = axes[0, j], axes[1, j]
        for k, h in enumerate(HARMONISE):
            c = results["cells"].get(f"s{s:g}_{h}")
            if c is None:
                continue
            off = (k - 0.5) * 0.36
            for where, marker in (("internal", "o"), ("external", "s")):
                a = [c["arms"][arm][where] for arm in ARMS]
                est = np.array([v["auc"] for v in a])
                err = np.array([[v["auc"] - v["ci_low"], v["ci_high"] - v["auc"]] for v in a]).T
                top.errorbar(x + off + (0.07 if where == "external" else -0.07), est, yerr=err, fmt=marker,
                             color=colours[h], mfc="white" if where == "external" else colours[h], ms=6, capsize=2,
                             label=f"{h}: {'external' if where == 'external' else 'internal validation'}")
            d = [c["arms"][arm]["drop"] for arm in ARMS]
            ref = np.array([c["arms"][arm]["reference_drop"]["drop"] for arm in ARMS])
            excess = np.array([v["drop"] for v in d]) - ref
            err = np.array([[1.959964 * v["se"]] * 2 for v in d]).T
            bottom.bar(x + off, excess, width=0.34, color=colours[h], yerr=err, capsize=3, label=h)
        for arm_i in x:
            refs = [results["cells"][key]["arms"][ARMS[arm_i]] for key in results["cells"]
                    if results["cells"][key]["strength"] == s][:1]
            for r in refs:
                top.hlines([r["internal_reference"]["auc"], r["external_reference"]["auc"]], arm_i - 0.42,
                           arm_i + 0.42, colors=["#27ae60", "#c0392b"], linestyles=["-", "--"], lw=1)
        top.set_xticks(x, ARMS)
        top.set_ylim(0.3, 1.0)
        top.axhline(0.5, color="k", lw=0.5, ls=":")
        top.set_title(f"scanner-effect strength {s:g}: AUC\n(lines: population reference, green internal "
                      "validation, red external)", fontsize=9)
        top.set_ylabel("AUC (95 % DeLong CI)")
        bottom.axhline(0, color="k", lw=0.7)
        bottom.set_xticks(x, ARMS)
        bottom.set_ylabel("excess drop\n(AUC drop - reference drop)")
        bottom.set_title("what the scanner change costs, beyond sampling (± 95 % CI of the drop)", fontsize=9)
        if j == 0:
            top.legend(fontsize=7, loc="lower left", ncol=2)
            bottom.legend(fontsize=8, title="harmonisation", title_fontsize=8)
    fig.suptitle(f"Centre shift: internal n={results['config']['n_internal']} (7 scanners), external "
                 f"n={results['config']['n_external']} (3 unseen scanners)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    """The per-arm table of every cell (for docs/harmonisation.md): AUCs, the drop, the reference drop, the excess."""
    def f(v):
        return "NaN" if v is None or not np.isfinite(v) else f"{v:.3f}"

    header = ("| strength | harmonise | arm | internal AUC (95 % CI) | external AUC (95 % CI) | drop (95 % CI) | "
              "reference int. / ext. | reference drop | excess drop |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(results["cells"]):
        c = results["cells"][key]
        for arm in ARMS:
            a = c["arms"][arm]
            i, e, d = a["internal"], a["external"], a["drop"]
            lines.append(f"| {c['strength']:g} | {c['harmonise']} | {arm} | {f(i['auc'])} ({f(i['ci_low'])}-"
                         f"{f(i['ci_high'])}) | {f(e['auc'])} ({f(e['ci_low'])}-{f(e['ci_high'])}) | {f(d['drop'])} "
                         f"({f(d['ci_low'])} to {f(d['ci_high'])}) | {f(a['internal_reference']['auc'])} / "
                         f"{f(a['external_reference']['auc'])} | {f(a['reference_drop']['drop'])} | "
                         f"{f(a['excess_drop'])} |")
    lines += ["", "| strength | arm | external AUC combat - none (95 % CI) | paired DeLong p |", "|---|---|---|---|"]
    for s, p in (results.get("paired_external_combat_vs_none") or {}).items():
        for arm, t in (p.get("arms") or {a: {"note": p.get("note", "")} for a in ARMS}).items():
            if "p_value" in t:
                lines.append(f"| {s} | {arm} | {f(t['auc_a'] - t['auc_b'])} ({f(t['diff_ci_low'])} to "
                             f"{f(t['diff_ci_high'])}) | {f(t['p_value'])} |")
            else:
                lines.append(f"| {s} | {arm} | NaN: {t.get('note', '')} | NaN |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/centre_shift", help="scratch folder (cohorts, studies; deleted when done)")
    p.add_argument("--out", default=str(RESULTS / "centre_shift.json"))
    p.add_argument("--strengths", default="1,2", help="scanner-effect strengths (comma list)")
    p.add_argument("--n-internal", type=int, default=200)
    p.add_argument("--n-external", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--net", default="resnet18")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--spatial-size", type=int, default=32)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the work folders")
    p.add_argument("--force", action="store_true", help="recompute finished cells")
    p.add_argument("--summary", action="store_true", help="only print the markdown table of --out's results")
    args = p.parse_args(argv)
    if args.summary:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() and not args.force else {}
    config = {k: getattr(args, k) for k in ("strengths", "n_internal", "n_external", "seed", "net", "epochs",
                                            "spatial_size", "folds")}
    if results.get("config", config) != config:
        raise SystemExit(f"{out} holds results of another configuration; use --force or another --out")
    import torch

    import p53hcc.tools.cohort.synth.images as si

    results.update(config=config, machine={"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "python": sys.version.split()[0], "torch": torch.__version__,
                                           "note": "shared 2-core machine, niced; timings are inflated by other "
                                                   "users' load"})
    results.setdefault("cells", {})
    results["profiles"] = {f"{s:g}": {prof: si.scanner_profiles(prof, float(s))
                                      for prof in ("internal", "external")}
                           for s in (float(v) for v in args.strengths.split(","))}
    from p53hcc.tools.io import atomic_write_json

    results.setdefault("partial", {})
    for strength in (float(v) for v in args.strengths.split(",")):
        work = Path(args.work) / f"s{strength:g}"
        keys = {h: f"s{strength:g}_{h}" for h in HARMONISE}
        if all(k in results["cells"] for k in keys.values()):
            continue
        work.mkdir(parents=True, exist_ok=True)
        internal, external = make_cohorts(work, strength, args)
        for h, key in keys.items():  # both studies first: they share the internal preprocessing and networks
            if key not in results["cells"] and key not in results["partial"]:
                log.info("internal study %s", key)
                results["partial"][key] = internal_part(strength, h, internal, work / "study", work, args)
                atomic_write_json(out, results)
        if not args.keep:  # the internal study's volumes and networks are no longer needed (disk)
            shutil.rmtree(work / "study", ignore_errors=True)
        for h, key in keys.items():
            if key not in results["cells"]:
                log.info("external cohort %s", key)
                results["cells"][key] = external_part(results["partial"].pop(key), external, work, args)
                atomic_write_json(out, results)
        if not args.keep:
            shutil.rmtree(work)
    results["paired_external_combat_vs_none"] = paired(results)
    figure(results, out.with_suffix(".png"))
    atomic_write_json(out, results)
    print(json.dumps({k: {a: round(c["arms"][a]["excess_drop"], 3) for a in ARMS}
                      for k, c in results["cells"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
