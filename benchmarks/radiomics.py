"""Benchmark of the radiomics arm: seconds per patient-phase for N4, resampling + z-score and PyRadiomics extraction
(demo and paper params x demo and paper image sizes), and the parallel speed-up of extraction (1 worker vs all).

Usage: ``python benchmarks/radiomics.py [--n-demo 8] [--n-paper 1] [--workers N]``; prints and writes
``benchmarks/results/radiomics.json``. Inputs are synthetic cohorts from ``tools.synth`` written to a temporary
folder. The 1 mm / z-score step here is a plain SimpleITK stand-in for ``tools.preprocess`` (same operations, no
cache), so that N4 and the rest of the chain are timed separately.
Targets (issue 3): parallel efficiency >= 0.85 x linear; N4 <= 25 % of a patient-phase's total time.
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
import SimpleITK as sitk

from tools.io_utils import atomic_write_json, file_sha256, params_hash
from tools.radiomics import load_params, run_tasks, versions

RESULTS = Path(__file__).parent / "results" / "radiomics.json"
PHASES = ("ap", "pvp", "dp")


def _cohort(n: int, size: str, root: Path):
    from tools.cohort import read_cohort
    from tools.synth import make_cohort

    csv = make_cohort(n=max(n, 2), out=root / f"synth_{size}", seed=1, size=size, second_reader=False)
    return read_cohort(csv).head(n)  # synth needs n >= 2


def _time_n4(cohort, limit: int, preset: str = "paper") -> list[float]:
    """Seconds per patient-phase of N4 with a preprocessing preset's N4 parameters (tools.preprocess.PRESETS)."""
    try:
        from tools.preprocess import PRESETS
        from tools.transforms import n4_correct
    except ImportError:
        return []
    n4_params = PRESETS[preset]["n4"]
    out = []
    for _, r in cohort.head(limit).iterrows():
        for ph in PHASES:
            img = sitk.ReadImage(r[ph])
            arr = np.transpose(sitk.GetArrayFromImage(img).astype(np.float32))  # (x, y, z) as MONAI
            t0 = time.perf_counter()
            n4_correct(arr, img.GetSpacing(), n_threads=1, **n4_params)
            out.append(time.perf_counter() - t0)
    return out


def _resample_zscore(cohort, dest: Path) -> tuple[list[dict], list[float]]:
    """1 mm (linear / nearest) + z-score over the image; returns preprocessed pairs and seconds per phase."""
    pairs, secs = [], []
    for _, r in cohort.iterrows():
        for ph in PHASES:
            t0 = time.perf_counter()
            img = sitk.Cast(sitk.ReadImage(r[ph]), sitk.sitkFloat32)
            size = [round(n * s) for n, s in zip(img.GetSize(), img.GetSpacing())]
            ref = sitk.Image(size, sitk.sitkFloat32)
            ref.SetOrigin(img.GetOrigin())
            ref.SetDirection(img.GetDirection())
            img = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
            a = sitk.GetArrayViewFromImage(img)
            z = sitk.ShiftScale(img, -float(a.mean()), 1.0 / float(a.std()))
            mask = sitk.Resample(sitk.ReadImage(r[f"{ph}_mask"]), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                 sitk.sitkUInt8)
            ip, mp = dest / f"{r.patient_id}_{ph}.nii.gz", dest / f"{r.patient_id}_{ph}_mask.nii.gz"
            sitk.WriteImage(z, str(ip))
            sitk.WriteImage(mask, str(mp))
            secs.append(time.perf_counter() - t0)
            pairs.append({"patient_id": r.patient_id, "phase": ph, "image": str(ip), "mask": str(mp),
                          "voxels_in_mask": int(sitk.GetArrayViewFromImage(mask).sum())})
    return pairs, secs


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
    res = run_tasks(tasks, workers=workers, progress=False)
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
                 "args": vars(args), "note": "shared machine: timings include contention from other processes"}
    try:
        for size, n in (("demo", args.n_demo), ("paper", args.n_paper)):
            if n <= 0:
                continue
            cohort = _cohort(n, size, root)
            pre = root / f"pre_{size}"
            pre.mkdir()
            n4 = _time_n4(cohort, n)
            pairs, rz = _resample_zscore(cohort, pre)
            block = {"n_patients": n, "n4_s_per_patient_phase": float(np.mean(n4)) if n4 else None,
                     "resample_zscore_s_per_patient_phase": float(np.mean(rz)),
                     "mean_voxels_in_mask": float(np.mean([p["voxels_in_mask"] for p in pairs]))}
            for params in ("demo", "paper"):
                block[f"extract_{params}"] = _extract(pairs, params, root / "cache", workers=1)
            if n4:
                total = block["n4_s_per_patient_phase"] + block["resample_zscore_s_per_patient_phase"] \
                    + block["extract_paper"]["s_per_patient_phase"]
                block["n4_share_of_total_paper_params"] = block["n4_s_per_patient_phase"] / total
                n4_demo = _time_n4(cohort, n, preset="demo")  # what `make demo` runs (shrink 6, fewer iterations)
                block["n4_demo_preset_s_per_patient_phase"] = float(np.mean(n4_demo))
                block["n4_share_of_total_demo_params"] = block["n4_demo_preset_s_per_patient_phase"] / (
                    block["n4_demo_preset_s_per_patient_phase"] + block["resample_zscore_s_per_patient_phase"]
                    + block["extract_demo"]["s_per_patient_phase"])
            res[size] = block
            if size == "demo" and args.workers > 1:  # parallel speed-up of extraction, demo params
                one = block["extract_demo"]
                many = _extract(pairs, "demo", root / "cache", workers=args.workers)
                # wall-clock speed-up needs idle cores; on a shared machine also report the CPU-work inflation
                # (CPU seconds with N workers / with 1): the speed-up the code allows is N / inflation
                res["speedup"] = {"workers": args.workers, "params": "demo", "size": "demo",
                                  "wall_1_s": one["wall_s"], f"wall_{args.workers}_s": many["wall_s"],
                                  "speedup": one["wall_s"] / many["wall_s"],
                                  "efficiency": one["wall_s"] / many["wall_s"] / args.workers,
                                  "cpu_1_s": one["cpu_s"], f"cpu_{args.workers}_s": many["cpu_s"],
                                  "cpu_work_inflation": many["cpu_s"] / one["cpu_s"],
                                  "efficiency_cpu_bound": one["cpu_s"] / many["cpu_s"],
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
