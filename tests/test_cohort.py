"""Cohort manifest: validation catches each bad-input kind, datalists and splits are sound."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.tools.cohort.manifest import read_cohort, validate_cohort
from p53hcc.tools.cohort.splits import make_splits, write_datalist
from tests.conftest import make_tiny_cohort, write_nifti


def _edit(cohort: Path, **changes) -> Path:
    """Apply {(row, column): value} edits to the manifest and write it back."""
    df = pd.read_csv(cohort, dtype={"patient_id": str})
    for (row, col), value in changes.get("cells", {}).items():
        df[col] = df[col].astype(object)
        df.loc[row, col] = value
    df.to_csv(cohort, index=False)
    return cohort


def _messages(cohort: Path) -> list[str]:
    return [str(p) for p in validate_cohort(cohort, progress=False)]


def test_valid_cohort_has_no_problems(tiny_cohort):
    assert _messages(tiny_cohort) == []


def test_missing_file_named(tiny_cohort):
    (tiny_cohort.parent / "images" / "P001_pvp.nii.gz").unlink()
    msgs = _messages(tiny_cohort)
    assert any("patient P001" in m and "column pvp" in m and "P001_pvp.nii.gz" in m and "not found" in m for m in msgs)


def test_corrupt_volume_named(tiny_cohort):
    path = tiny_cohort.parent / "images" / "P002_ap.nii.gz"
    path.write_bytes(path.read_bytes()[:200])
    msgs = _messages(tiny_cohort)
    assert any("patient P002" in m and "P002_ap.nii.gz" in m and "unreadable" in m for m in msgs), msgs


def test_geometry_mismatch_named(tiny_cohort):
    write_nifti(tiny_cohort.parent / "masks" / "P003_dp_mask.nii.gz", np.ones((24, 24, 6)), spacing=(1.5, 1.5, 5.0),
                dtype=np.uint8)
    msgs = _messages(tiny_cohort)
    assert any("patient P003" in m and "dp_mask" in m and "spacing" in m for m in msgs), msgs


def test_size_mismatch_named(tiny_cohort):
    write_nifti(tiny_cohort.parent / "masks" / "P003_ap_mask.nii.gz", np.ones((20, 24, 6)), dtype=np.uint8)
    msgs = _messages(tiny_cohort)
    assert any("patient P003" in m and "ap_mask" in m and "size" in m for m in msgs), msgs


def test_empty_and_non_binary_masks(tiny_cohort):
    write_nifti(tiny_cohort.parent / "masks" / "P004_ap_mask.nii.gz", np.zeros((24, 24, 6)), dtype=np.uint8)
    write_nifti(tiny_cohort.parent / "masks" / "P005_ap_mask.nii.gz", np.full((24, 24, 6), 2), dtype=np.uint8)
    msgs = _messages(tiny_cohort)
    assert any("patient P004" in m and "empty mask" in m for m in msgs), msgs
    assert any("patient P005" in m and "not binary" in m for m in msgs), msgs


def test_nan_voxels_named(tiny_cohort):
    arr = np.ones((24, 24, 6), np.float32)
    arr[0, 0, 0] = np.nan
    write_nifti(tiny_cohort.parent / "images" / "P006_pvp.nii.gz", arr)
    msgs = _messages(tiny_cohort)
    assert any("patient P006" in m and "NaN" in m for m in msgs), msgs


def test_table_problems_all_reported_at_once(tiny_cohort):
    _edit(tiny_cohort, cells={(1, "patient_id"): "P000", (2, "p53"): 2, (3, "split"): "test", (4, "age"): "old",
                              (5, "ltd_mm"): 900, (6, "dp"): "", (7, "sex"): "X"})
    msgs = _messages(tiny_cohort)
    expected = [("P000", "duplicate"), ("P002", "not 0 or 1"), ("P003", "unknown split"), ("P004", "non-numeric"),
                ("P005", "implausible"), ("P006", "missing phase"), ("P007", "not one of")]
    for pid, text in expected:
        assert any(f"patient {pid}" in m and text in m for m in msgs), (pid, text, msgs)


def test_single_mask_column_expands(tiny_cohort):
    df = pd.read_csv(tiny_cohort)
    df["mask"] = df["ap_mask"]
    df.drop(columns=["ap_mask", "pvp_mask", "dp_mask"]).to_csv(tiny_cohort, index=False)
    read = read_cohort(tiny_cohort)
    assert (read["dp_mask"] == read["ap_mask"]).all() and Path(read["dp_mask"][0]).is_absolute()


def test_nrrd_and_dicom_series_read(tmp_path):
    import SimpleITK as sitk

    from p53hcc.tools.cohort.imageio import read_array, read_geometry

    img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    img.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(img, str(tmp_path / "x.nrrd"))
    series = tmp_path / "dicom"
    series.mkdir()
    for z in range(4):
        sl = img[:, :, z]
        writer = sitk.ImageFileWriter()
        for key, val in {"0020|000e": "1.2.3.4", "0020|0013": str(z + 1), "0020|0032": f"0\\0\\{3.0 * z}",
                         "0020|0037": "1\\0\\0\\0\\1\\0", "0018|0050": "3.0", "0008|0060": "MR"}.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(series / f"{z:03d}.dcm"))
        writer.KeepOriginalImageUIDOn()
        writer.Execute(sl)
    assert read_geometry(tmp_path / "x.nrrd").size == (6, 5, 4)
    arr, geom = read_array(series)
    assert arr.shape == (4, 5, 6) and geom.size == (6, 5, 4)


def test_splits_stratified_seeded_disjoint_complete(tiny_cohort, tmp_path):
    root = make_tiny_cohort(tmp_path / "big", n=40)
    df = read_cohort(root)
    s1, s2, s3 = make_splits(df, 4, seed=0), make_splits(df, 4, seed=0), make_splits(df, 4, seed=1)
    assert s1 == s2 and s1 != s3
    train_ids = set(df.loc[df.split == "train", "patient_id"])
    vals = [set(f["val"]) for f in s1["folds"]]
    assert set().union(*vals) == train_ids and sum(map(len, vals)) == len(train_ids)
    labels = df.set_index("patient_id")["p53"]
    for f in s1["folds"]:
        assert not set(f["train"]) & set(f["val"])
        assert set(f["train"]) | set(f["val"]) == train_ids
        prevalence = labels[list(f["val"])].mean()
        assert abs(prevalence - labels[list(train_ids)].mean()) < 0.15


def test_datalist_written(tiny_cohort, tmp_path):
    dest = write_datalist(tiny_cohort, tmp_path / "study", folds=3)
    data = json.loads(dest.read_text(encoding="utf-8"))
    assert len(data["training"]) == 6 and len(data["validation"]) == 2
    item = data["training"][0]
    assert set(item) >= {"patient_id", "ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask", "label", "fold"}
    assert Path(item["ap"]).exists() and item["fold"] in (0, 1, 2)
    assert all(v["fold"] == -1 for v in data["validation"])
    assert (tmp_path / "study" / "splits.json").exists()


def test_cli_validate_exit_codes(tiny_cohort):
    ok = subprocess.run([sys.executable, "-m", "p53hcc.tools.cli", "validate", str(tiny_cohort)], check=False, capture_output=True,
                        text=True, encoding="utf-8")
    assert ok.returncode == 0, ok.stderr
    (tiny_cohort.parent / "masks" / "P001_ap_mask.nii.gz").unlink()
    bad = subprocess.run([sys.executable, "-m", "p53hcc.tools.cli", "validate", str(tiny_cohort)], check=False, capture_output=True,
                         text=True, encoding="utf-8")
    assert bad.returncode == 1
    assert "patient P001" in bad.stdout and "problem(s)" in bad.stderr
