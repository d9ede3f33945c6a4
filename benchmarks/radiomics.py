"""Benchmark of the radiomics arm: seconds per patient-phase for N4, the rest of preprocessing and PyRadiomics
extraction (demo and paper presets/params x demo and paper image sizes), and the parallel speed-up of
preprocessing and extraction (1 worker vs all).

Usage: ``python benchmarks/radiomics.py [--n-demo 8] [--n-paper 1] [--workers N]``; prints and writes
``benchmarks/results/radiomics.json``. Inputs are synthetic cohorts from ``p53hcc.tools.cohort.synth`` written to a
temporary folder. Preprocessing is the real ``p53hcc.tools.preprocessing.run.preprocess_cohort`` (read, RAS, N4,
1 mm, z-score, write; one process, one thread, after a warm-up), whose per-task ``seconds_n4`` and ``seconds`` split N4 from the rest.
"A patient's total time" is preprocessing + extraction; the headline shares pair each preprocessing preset with
the radiomics params of the same name (what ``p53hcc study`` runs: demo for the synthetic demo, paper otherwise).
Targets: parallel efficiency >= 0.85 x linear; N4 <= 25 % of a patient's total time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

# this file is called radiomics.py: drop its folder from sys.path so `import radiomics` finds PyRadiomics
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import pandas as pd
import SimpleITK as sitk

from p53hcc.tools.io import atomic_write_json, file_sha256, params_hash
from p53hcc.tools.preprocessing.run import preprocess_cohort
from p53hcc.tools.radiomics.extract import extract_tasks
from p53hcc.tools.radiomics.features import load_params, versions

RESULTS = Path(__file__).parent / "results" / "radiomics.json"


def _cohort_csv(n: int, size: str, root: Path) -> Path:
    """A synthetic cohort file listing exactly ``n`` patients (the generator needs n >= 2)."""
    from p53hcc.tools.cohort.manifest import read_cohort
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    csv = make_cohort(n=max(n, 2), out=root / f"synth_{size}_{n}", seed=1, size=size, second_reader=False)
    if n < 2:
        csv_n = csv.with_name(f"cohort_{n}.csv")
        read_cohort(csv).head(n).to_csv(csv_n, index=False)
        return csv_n
    return csv


def _preprocess(csv: Path, study: Path, preset: str, workers: int = 1) -> dict:
    """Run the real preprocessing chain with a preset; per patient-phase seconds of N4 and of the whole task."""
    t0 = time.perf_counter()
    df = preprocess_cohort(csv, study, workers=workers, params=preset, progress=False)
    wall = time.perf_counter() - t0
    n4, total = df["seconds_n4"].to_numpy(float), df["seconds"].to_numpy(float)
    return {"preset": preset, "n_tasks": len(df), "wall_s": wall, "n4_s_per_patient_phase": float(n4.mean()),
            "rest_s_per_patient_phase": float((total - n4).mean()), "total_s_per_patient_phase": float(total.mean())}


def _pairs(study: Path) -> list[dict]:
    """Preprocessed (image, mask) pairs of a study folder, with the mask's voxel count on the 1 mm grid."""
    root = study / "preprocessed"
    index = pd.read_csv(root / "index.csv", dtype={"patient_id": str})
    pairs = []
    for r in index.itertuples():
        mask = root / r.mask
        pairs.append({"patient_id": r.patient_id, "phase": r.phase, "image": str(root / r.image), "mask": str(mask),
                      "voxels_in_mask": int(sitk.GetArrayViewFromImage(sitk.ReadImage(str(mask))).sum())})
    return pairs


def _tasks(pairs: list[dict], params: str, cache: Path) -> list[dict]:
    settings = load_params(params)
    ph = params_hash(settings)
    return [{"patient_id": p["patient_id"], "phase": p["phase"], "reader": "r1", "image": p["image"], "mask": p["mask"],
                 "image_sha256": file_sha256(p["image"]), "mask_sha256": file_sha256(p["mask"]), "params": settings,
                 "params_hash": ph, "cache": str(cache / f"{params}-{p['patient_id']}-{p['phase']}-{time.time_ns()}.json")}
            for p in pairs]


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (pool workers are joined when the pool closes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _extract(pairs, params, cache, workers) -> dict:
    tasks = _tasks(pairs, params, cache)
    t0, c0 = time.perf_counter(), _cpu_s()
    res = extract_tasks(tasks, workers=workers, progress=False)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    failed = [r for r in res if r["status"] != "ok"]
    task_secs = [r["seconds"] for r in res]
    return {"n_tasks": len(tasks), "failed": len(failed), "wall_s": wall, "cpu_s": cpu,
            "s_per_patient_phase": float(np.mean(task_secs)), "s_per_patient_phase_median": float(np.median(task_secs)),
            "n_features_per_phase": len(res[0]["features"]) if res and not failed else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-demo", type=int, default=8, help="demo-size patients (x3 phases)")
    ap.add_argument("--n-paper", type=int, default=1, help="paper-size patients (x3 phases)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="cores for the parallel run")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--merge", action="store_true", help="update the sizes measured now in an existing --out file")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_radiomics_"))
    res: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "python": sys.version.split()[0], **versions()},
                 "args": vars(args)}
    try:  # every task runs with one ITK and one torch thread (p53hcc.tools.parallel), inline or in a worker
        # first-call costs (imports, MONAI/ITK set-up) stay out of the figures
        _preprocess(_cohort_csv(1, "demo", root), root / "warm", "demo")
        for size, n in (("demo", args.n_demo), ("paper", args.n_paper)):
            if n <= 0:
                continue
            csv = _cohort_csv(n, size, root)
            block: dict = {"n_patients": n}
            for name in ("demo", "paper"):  # preprocessing preset x radiomics params of the same name
                study = root / f"study_{size}_{name}"
                chain = _preprocess(csv, study, name)
                pairs = _pairs(study)
                extract = _extract(pairs, name, root / "cache", workers=1)
                total = chain["total_s_per_patient_phase"] + extract["s_per_patient_phase"]
                block[name] = {"preprocess": chain, "extract": extract,
                               "mean_voxels_in_mask": float(np.mean([p["voxels_in_mask"] for p in pairs])),
                               "patient_phase_total_s": total,
                               "n4_share_of_total": chain["n4_s_per_patient_phase"] / total}
            for pre in ("demo", "paper"):  # every pairing, for users who mix them
                for par in ("demo", "paper"):
                    chain, ext = block[pre]["preprocess"], block[par]["extract"]
                    block[f"n4_share_{pre}_preset_{par}_params"] = chain["n4_s_per_patient_phase"] / (
                        chain["total_s_per_patient_phase"] + ext["s_per_patient_phase"])
            res[size] = block
            if size == "demo" and args.workers > 1:  # parallel speed-up, demo preset and params, demo size
                one = block["demo"]
                parallel = root / f"study_{size}_parallel"
                many_pre = _preprocess(csv, parallel, "demo", workers=args.workers)
                many = _extract(_pairs(parallel), "demo", root / "cache", workers=args.workers)
                # wall-clock speed-up needs idle cores; on a shared machine also report the CPU-work inflation
                # (CPU seconds with N workers / with 1): the speed-up the code allows is N / inflation
                res["speedup"] = {
                    "workers": args.workers, "params": "demo", "size": "demo",
                    "preprocess_wall_1_s": one["preprocess"]["wall_s"],
                    f"preprocess_wall_{args.workers}_s": many_pre["wall_s"],
                    "preprocess_speedup": one["preprocess"]["wall_s"] / many_pre["wall_s"],
                    "preprocess_efficiency": one["preprocess"]["wall_s"] / many_pre["wall_s"] / args.workers,
                    "wall_1_s": one["extract"]["wall_s"], f"wall_{args.workers}_s": many["wall_s"],
                    "speedup": one["extract"]["wall_s"] / many["wall_s"],
                    "efficiency": one["extract"]["wall_s"] / many["wall_s"] / args.workers,
                    "cpu_1_s": one["extract"]["cpu_s"], f"cpu_{args.workers}_s": many["cpu_s"],
                    "cpu_work_inflation": many["cpu_s"] / one["extract"]["cpu_s"],
                    "efficiency_cpu_bound": one["extract"]["cpu_s"] / many["cpu_s"],
                    "load_average_1min": os.getloadavg()[0]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.merge and Path(args.out).is_file():
        res = {**json.loads(Path(args.out).read_text()), **res}
    atomic_write_json(args.out, res)
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
