"""Benchmark: the paper's whole deep-learning sweep (issue 8), plus a tiny synthetic cohort for CPU runs/tests.

Placeholder header; the sweep itself is below.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def tiny_cohort(out: str | Path, n: int = 16, shape: tuple[int, int, int] = (24, 24, 6), seed: int = 0,
                n_validation: int = 4) -> Path:
    """Write a tiny three-phase cohort (NIfTI volumes + masks, label-dependent ROI contrast) for CPU runs.

    A bright ellipsoid tumour sits in each volume; its contrast differs by P53 label and phase, so per-phase
    CNNs have something to learn. Returns the path of ``cohort.csv``.
    """
    import nibabel as nib

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    n_train = n - n_validation
    for i in range(n):
        pid = f"T{i:03d}"
        label = i % 2
        row = {"patient_id": pid, "split": "train" if i < n_train else "validation", "p53": label}
        for j, phase in enumerate(("ap", "pvp", "dp")):
            c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
            radii = np.array([shape[0] / 4, shape[1] / 5, max(shape[2] / 3, 1.5)]) * rng.uniform(0.8, 1.2)
            mask = (((grid - c) / radii) ** 2).sum(-1) <= 1
            img = rng.normal(100, 10, shape) + mask * (40 + 30 * label * (j + 1) / 3)
            affine = np.diag([1.0, 1.0, 2.0, 1.0])
            nib.save(nib.Nifti1Image(img.astype(np.float32), affine), out / "images" / f"{pid}_{phase}.nii.gz")
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), out / "masks" / f"{pid}_{phase}_mask.nii.gz")
            row[phase] = f"images/{pid}_{phase}.nii.gz"
            row[f"{phase}_mask"] = f"masks/{pid}_{phase}_mask.nii.gz"
        rows.append(row)
    path = out / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
