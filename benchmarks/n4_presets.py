"""Benchmark of N4 schedules against a known bias field: seconds per patient-phase and how well each schedule
recovers the synthetic cohort's true multiplicative field, at demo and paper image sizes.

Why: N4's cost is almost all in the iterations on the shrunken image, and its accuracy depends on how many
B-spline levels it is allowed (more levels = a finer field, which starts to absorb anatomy such as the liver/body
wall contrast into the "bias"). ``p53hcc.tools.preprocessing.params.PRESETS`` are chosen from this table: the
cheapest schedule
whose error against the truth is as low as the most accurate one's.

Error: RMS over the body (Otsu foreground of the image) of ``log(estimated field) - log(true field)`` after
removing the median offset (N4 recovers the field only up to a constant factor; ``p53hcc.tools.preprocessing.n4.log_bias_error``).

Usage: ``python benchmarks/n4_presets.py [--n-demo 12] [--n-paper 4] [--seed 0]``; prints a table and writes
``benchmarks/results/n4_presets.json``. Patients are rendered in memory with ``p53hcc.tools.cohort.synth.images`` (scanners
taken in turn, so every internal scanner profile and its bias strength is represented), one ITK thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from p53hcc.tools.io import atomic_write_json
from p53hcc.tools.preprocessing.n4 import body_region, log_bias_error, n4_correct
from p53hcc.tools.preprocessing.params import PRESETS, resolve_params

RESULTS = Path(__file__).parent / "results" / "n4_presets.json"

#: Candidate schedules. ``strict_4_levels`` is the usual N4 recipe (shrink 4, 50/50/30/20 iterations, 1e-6),
#: which this project's "paper" preset used before this benchmark existed.
SCHEDULES: dict[str, dict] = {
    "strict_4_levels": {"shrink_factor": 4, "n_iterations": [50, 50, 30, 20], "convergence_threshold": 1e-6},
    "shrink6_3_levels": {"shrink_factor": 6, "n_iterations": [20, 20, 10], "convergence_threshold": 1e-6},
    "shrink4_3_levels": {"shrink_factor": 4, "n_iterations": [50, 50, 50], "convergence_threshold": 1e-3},
    "shrink4_2_levels": {"shrink_factor": 4, "n_iterations": [50, 50], "convergence_threshold": 1e-3},
    "shrink6_2_levels": {"shrink_factor": 6, "n_iterations": [50, 50], "convergence_threshold": 1e-3},
    "shrink8_2_levels": {"shrink_factor": 8, "n_iterations": [50, 50], "convergence_threshold": 1e-3},
    "shrink6_1_level": {"shrink_factor": 6, "n_iterations": [50], "convergence_threshold": 1e-3},
    **{f"preset_{name}": resolve_params(name)["n4"] for name in PRESETS},  # exactly what preprocessing runs
}


def render(n: int, size: str, seed: int):
    """Yield ``(patient_id, scanner, phase, image (x, y, z) float32, spacing, true field)`` for n synthetic
    patients; patient ``i`` gets the ``i``-th internal scanner (sorted by name), cyclically."""
    from p53hcc.tools.cohort.synth import images as si
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    cohort, truth = sample_patients(max(n, 2), seed=seed)
    scanners = si.scanner_profiles("internal")
    names = sorted(scanners)
    for i, rec in enumerate(cohort.head(n).to_dict("records")):
        scanner = scanners[names[i % len(names)]]
        rng = np.random.default_rng([seed, i, 11])
        images, _, affine, info = si.render_patient(rec, float(truth.loc[i, "latent_heterogeneity"]), scanner, size,
                                                    rng, second_reader=False, keep_bias=True)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        for phase, img in images.items():
            yield rec["patient_id"], names[i % len(names)], phase, img.astype(np.float32), spacing, info["bias_field"]


def run_size(n: int, size: str, seed: int) -> dict:
    rows = []
    for pid, scanner, phase, image, spacing, field in render(n, size, seed):
        region = body_region(image)
        row = {"patient_id": pid, "scanner": scanner, "phase": phase, "shape": list(image.shape),
               "uncorrected": log_bias_error(np.ones_like(field), field, region)}
        for name, params in SCHEDULES.items():
            t0 = time.perf_counter()
            _, est = n4_correct(image, spacing, n_threads=1, **params)
            row[f"{name}_s"] = time.perf_counter() - t0
            row[name] = log_bias_error(est, field, region)
        rows.append(row)
        print(f"  {size} {pid} {phase}: uncorrected {row['uncorrected']:.3f}", file=sys.stderr)
    unc = np.array([r["uncorrected"] for r in rows])
    summary = {"uncorrected": {"error_mean": float(unc.mean()), "error_p90": float(np.percentile(unc, 90))}}
    for name, params in SCHEDULES.items():
        err = np.array([r[name] for r in rows])
        summary[name] = {"params": params, "s_per_patient_phase": float(np.mean([r[f"{name}_s"] for r in rows])),
                         "error_mean": float(err.mean()), "error_p90": float(np.percentile(err, 90)),
                         "error_vs_uncorrected": float(err.mean() / unc.mean()),
                         "share_of_images_improved": float((err < unc).mean())}
    return {"n_patients": n, "n_images": len(rows), "summary": summary, "per_image": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-demo", type=int, default=12, help="demo-size patients (x3 phases)")
    ap.add_argument("--n-paper", type=int, default=4, help="paper-size patients (x3 phases)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                       "simpleitk": sitk.Version_VersionString()},
           "args": vars(args), "itk_threads": 1}
    for size, n in (("demo", args.n_demo), ("paper", args.n_paper)):
        if n > 0:
            res[size] = run_size(n, size, args.seed)
    atomic_write_json(args.out, res)
    for size in ("demo", "paper"):
        if size not in res:
            continue
        print(f"\n{size} size, {res[size]['n_images']} images (error: RMS log-field error over the body)")
        print(f"{'schedule':22s} {'s/phase':>8s} {'error':>7s} {'p90':>7s} {'vs raw':>7s} {'improved':>8s}")
        u = res[size]["summary"]["uncorrected"]
        print(f"{'uncorrected':22s} {'':>8s} {u['error_mean']:7.4f} {u['error_p90']:7.4f}")
        for name in SCHEDULES:
            s = res[size]["summary"][name]
            print(f"{name:22s} {s['s_per_patient_phase']:8.3f} {s['error_mean']:7.4f} {s['error_p90']:7.4f} "
                  f"{s['error_vs_uncorrected']:7.2f} {s['share_of_images_improved']:8.0%}")
    print(f"\nwritten to {args.out}")
    return res


if __name__ == "__main__":
    main()
