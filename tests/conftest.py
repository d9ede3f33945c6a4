"""Shared fixtures: a tiny, valid cohort written from scratch (fast; no synthetic generator needed)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.schema import PHASES


def write_nifti(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 4.0), dtype=np.float32) -> Path:
    """Write a (x, y, z) array as NIfTI with a diagonal affine of the given spacing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(dtype), np.diag([*spacing, 1.0])), str(path))
    return path


def make_tiny_cohort(root: Path, n: int = 8, shape=(24, 24, 6), seed: int = 0) -> Path:
    """n patients (half P53+), three phases each, a sphere tumour brighter in P53+; returns cohort.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for i in range(n):
        pid, label = f"P{i:03d}", i % 2
        centre = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
        dist = np.sqrt((((grid.T - centre) * [1.5, 1.5, 4.0]) ** 2).sum(-1)).T
        mask = (dist < 8 + rng.uniform(0, 2)).astype(np.uint8)
        row = {"patient_id": pid, "split": "train" if i < int(n * 0.75) else "validation", "p53": label,
               "age": 55 + i, "sex": "M" if i % 3 else "F", "afp": 10.0 * (i + 1), "cea": 2.0, "ca199": 20.0,
               "grade": 2 + label, "mvi": label, "ltd_mm": 30.0 + i, "rim_aphe": label, "washout": "nonperipheral",
               "delayed_central": 0, "capsule": 1}
        for phase in PHASES:
            img = rng.normal(100, 5, shape) + mask * (30 + 20 * label)
            write_nifti(root / "images" / f"{pid}_{phase}.nii.gz", img)
            write_nifti(root / "masks" / f"{pid}_{phase}_mask.nii.gz", mask, dtype=np.uint8)
            row[phase] = f"images/{pid}_{phase}.nii.gz"
            row[f"{phase}_mask"] = f"masks/{pid}_{phase}_mask.nii.gz"
        rows.append(row)
    path = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_cohort(tmp_path: Path) -> Path:
    """Path of a valid 8-patient cohort.csv of 24x24x6 volumes (6 train, 2 validation)."""
    return make_tiny_cohort(tmp_path / "cohort")


#: Reference data vendored with the tests (source and licence of each set in tests/data/README.md).
REFERENCE_DATA = Path(__file__).resolve().parent / "data"
