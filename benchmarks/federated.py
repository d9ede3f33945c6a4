"""Federated benchmark: pooled (centralised) vs federated (FLARE) vs each site alone, on the synthetic cohort split by
scanner.

The internal synthetic cohort (7 scanners, train/validation) is split by ``scanner``; scanners with fewer than
``--min-site`` training patients are merged into one site ``merged`` (the record lists the sites). Then:

* **federated**: ``p53hcc federated`` (FLARE's simulator, one process per site): every model fitted from the
  sites' sums, the DL arms by FedAvg of the bundles' train config (MONAI FL);
* **pooled**: the same protocol with one site holding every patient (in-process): the centralised fit of the same
  models (for the DL arms: local training of ``rounds x local_epochs`` epochs);
* **site alone**: each site trains alone (in-process; the others only score and evaluate), evaluated on every
  validation patient of every site, like the two above.

Per arm: validation AUC with DeLong CI (binned to 1/``bins``, identical for all three), rounds, bytes each site
sent, wall time. Output: ``benchmarks/results/federated.json`` and ``federated.png``. Made with (niced, shared
2-core machine)::

    nice -n 10 python benchmarks/federated.py --work /tmp/fedbench --n 120 --rounds 1 --spatial-size 32 --arms mc
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
# run as a script, this folder is first on sys.path and its radiomics.py would shadow PyRadiomics' `radiomics`
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _sites_by_scanner(csv: Path, min_train: int) -> pd.DataFrame:
    """The cohort with a ``site`` column: its scanner when the scanner has at least ``min_train`` training
    patients, else ``merged`` (the small scanners together, as a hospital network would pool them)."""
    df = pd.read_csv(csv)
    n_train = df[df["split"] == "train"].groupby("scanner").size()
    big = set(n_train[n_train >= min_train].index)
    df["site"] = [s if s in big else "merged" for s in df["scanner"]]
    df.to_csv(csv, index=False)
    return df


def _local(csvs: dict[str, Path], work: Path, cfg: dict, fl: dict, trains: set[str] | None = None) -> dict:
    from p53hcc.tools.federated.local import LocalFederation
    from p53hcc.tools.federated.server import run_server
    from p53hcc.tools.federated.site import Site

    sites = {n: Site(n, p, work / n / "work", cfg, fl, trains=trains is None or n in trains) for n, p in csvs.items()}
    fed = LocalFederation(sites, keep_values=False)
    return run_server(fed, cfg, fl, None)


def _row(arm: str, s: dict) -> dict:
    return {"arm": arm, "rounds": s["rounds"], "wall_s": s.get("simulator_wall_s", s["wall_s"]),
            "bytes_per_site": s["bytes_per_site"], "chosen_dl": s.get("chosen_dl"),
            "validation": {m: {k: v[k] for k in ("auc", "ci_low", "ci_high", "n_cases", "n_controls", "brier",
                                                  "calibration_slope")} for m, v in s["validation"].items()}}


def _figure(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [r["arm"] for r in record["runs"]]
    models = list(record["runs"][0]["validation"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(arms)
    for i, r in enumerate(record["runs"]):
        auc = np.array([r["validation"][m]["auc"] for m in models], float)
        lo = np.array([r["validation"][m]["ci_low"] for m in models], float)
        hi = np.array([r["validation"][m]["ci_high"] for m in models], float)
        x = np.arange(len(models)) + (i - (len(arms) - 1) / 2) * width
        ax.errorbar(x, auc, yerr=[auc - lo, hi - auc], fmt="o", capsize=3, label=r["arm"])
    ax.axhline(0.5, color="grey", ls=":")
    ax.set_xticks(np.arange(len(models)), models)
    ax.set(ylabel="validation AUC (95% DeLong CI)", ylim=(0, 1),
           title=f"Pooled vs federated vs site alone (synthetic, n={record['n']}, {len(record['sites'])} sites)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _save(record: dict, t0: float) -> None:
    """The record so far (each finished arm is kept if a later one is interrupted)."""
    record["wall_s_total"] = time.perf_counter() - t0
    record["load_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "federated.json").write_text(json.dumps(record, indent=1, default=float))
    _figure(record, RESULTS / "federated.png")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/fedbench")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--spatial-size", type=int, default=32)
    ap.add_argument("--arms", default="mc,ff")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--min-site", type=int, default=15, help="training patients a scanner needs to be its own site")
    ap.add_argument("--rerun", action="store_true", help="rerun the federated arm even if WORK holds one")
    ap.add_argument("--no-alone", action="store_true", help="skip the site-alone arms")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from p53hcc.tools.cohort.synth.cohort import make_cohort
    from p53hcc.tools.federated.job import run_federated, split_cohort, study_config

    work = Path(args.work)
    csv = work / "cohort" / "cohort.csv"
    if not csv.is_file():
        make_cohort(args.n, csv.parent, seed=0, size="demo", second_reader=False)
    df = _sites_by_scanner(csv, args.min_site)
    cfg, fl = study_config(None, "demo", **{"dl.spatial_size": args.spatial_size, "fl.site_column": "site",
                                            "fl.rounds": args.rounds, "fl.arms": args.arms,
                                            "fl.net": "resnet18", "fl.folds": args.folds})
    record = {"n": args.n, "sites": df.groupby("site").size().to_dict(), "settings": fl.model_dump(),
              "dl": {"spatial_size": args.spatial_size, "net": "resnet18"}, "machine": platform.platform(),
              "load_before": os.getloadavg(), "runs": []}
    t0 = time.perf_counter()
    if args.rerun or not (work / "federated" / "server" / "summary.json").is_file():  # resumable: a finished
        run_federated(csv, work / "federated", cfg, fl)                              # federated run is kept
    fed = json.loads((work / "federated" / "server" / "summary.json").read_text())
    record["runs"].append(_row("federated (FLARE)", fed))
    sites_dir = work / "federated" / "sites"
    csvs = split_cohort(csv, "site", sites_dir)  # the federated run's own site CSVs (its caches are reused)
    pool_csv = csv.parent / "cohort_pooled.csv"
    df.assign(pool="all").to_csv(pool_csv, index=False)
    pooled = split_cohort(pool_csv, "pool", work / "pooled")
    fl_d = fl.model_dump()
    _save(record, t0)
    record["runs"].insert(0, _row("pooled (centralised)", _local(pooled, work / "pooled", cfg, fl_d)))
    _save(record, t0)
    if not args.no_alone:
        for name in csvs:
            s = _local(csvs, sites_dir, cfg, fl_d, trains={name})
            record["runs"].append(_row(f"{name} alone", s))
            _save(record, t0)
    print(json.dumps({r["arm"]: {m: round(v["auc"], 3) for m, v in r["validation"].items()} for r in record["runs"]},
                     indent=1))


if __name__ == "__main__":
    main()
