"""Malformed cohort files and images: every one is a named message and exit code 1 from ``p53hcc validate``,
never a traceback; DICOM series keep the slice spacing their headers state."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.cli import main
from p53hcc.tools.cohort.manifest import read_cohort, validate_cohort
from tests.conftest import make_tiny_cohort


def _validate(capsys, csv: Path) -> tuple[int, str]:
    """Exit code and everything printed by ``p53hcc validate CSV`` run in this process (a traceback would raise)."""
    code = main(["validate", str(csv)])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def cohort(tmp_path) -> Path:
    return make_tiny_cohort(tmp_path / "c", n=4, shape=(12, 12, 4))


def _rewrite(csv: Path, text: str | None = None, data: bytes | None = None) -> Path:
    if data is not None:
        csv.write_bytes(data)
    else:
        csv.write_text(text, encoding="utf-8")
    return csv


@pytest.mark.parametrize("case, expected", [
    ("empty", "the file is empty"),
    ("header_only", "no patients"),
    ("latin1", "not UTF-8"),
    ("semicolon", "separated by semicolons"),
    ("tab", "separated by tabs"),
    ("no_id", "no patient_id on line(s) 3"),
    ("ragged", "not a well-formed CSV"),
])
def test_malformed_csv_is_one_named_error(cohort, capsys, case, expected):
    text = cohort.read_text(encoding="utf-8")
    header, *rows = text.splitlines()
    if case == "empty":
        _rewrite(cohort, "")
    elif case == "header_only":
        _rewrite(cohort, header + "\n")
    elif case == "latin1":
        _rewrite(cohort, data=(text.replace("nonperipheral", "nonpériphérique")).encode("latin-1"))
    elif case == "semicolon":
        _rewrite(cohort, text.replace(",", ";"))
    elif case == "tab":
        _rewrite(cohort, text.replace(",", "\t"))
    elif case == "no_id":
        _rewrite(cohort, "\n".join([header, rows[0], "," + rows[1].split(",", 1)[1], *rows[2:]]) + "\n")
    elif case == "ragged":
        _rewrite(cohort, "\n".join([header, rows[0] + ",x,y,z", *rows[1:]]) + "\n")
    code, printed = _validate(capsys, cohort)
    assert code == 1 and expected in printed and "Traceback" not in printed, printed
    assert str(cohort) in printed


def test_blank_rows_are_ignored_with_a_warning(cohort, capsys):
    text = cohort.read_text(encoding="utf-8")
    n_cols = len(text.splitlines()[0].split(","))
    _rewrite(cohort, text + ("," * (n_cols - 1) + "\n") * 3)
    assert len(read_cohort(cohort)) == 4
    code, printed = _validate(capsys, cohort)
    assert code == 0 and "3 blank row(s) ignored" in printed and "patient nan" not in printed, printed


def test_leading_zero_ids_stay_text(cohort, tmp_path):
    from p53hcc.tools.io import atomic_write_table, read_table

    df = pd.read_csv(cohort, dtype={"patient_id": str})
    df["patient_id"] = [f"00{i}" for i in range(len(df))]
    df.to_csv(cohort, index=False)
    assert read_cohort(cohort)["patient_id"].tolist() == ["000", "001", "002", "003"]
    atomic_write_table(tmp_path / "t.csv", df[["patient_id"]])
    assert read_table(tmp_path / "t.csv")["patient_id"].tolist() == ["000", "001", "002", "003"]


@pytest.mark.parametrize("shape, what", [((12, 12, 4, 2), "4-D image"), ((12, 12), "2-D image"),
                                         ((12, 12, 1), "single-slice volume")])
def test_image_that_is_not_a_volume_is_named(cohort, capsys, shape, what):
    path = cohort.parent / "images" / "P001_ap.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    msgs = [str(p) for p in validate_cohort(cohort, progress=False)]
    assert any("patient P001" in m and "column ap," in m and what in m for m in msgs), msgs
    code, printed = _validate(capsys, cohort)
    assert code == 1 and what in printed and "Traceback" not in printed


def _dicom_series(folder: Path, z_positions: list[str], thickness: str | None = "2.5") -> Path:
    """A DICOM series of 8x8 slices at the given ImagePositionPatient z values (written as given)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, z in enumerate(z_positions):
        sl = sitk.GetImageFromArray(np.full((1, 8, 8), k, np.int16))[:, :, 0]
        tags = {"0020|000e": "1.2.826.0.1.3680043.2.1125.7", "0020|0013": str(k + 1), "0008|0060": "MR",
                "0020|0032": f"-10\\-10\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0"}
        if thickness:
            tags["0018|0050"] = thickness
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


@pytest.mark.parametrize("thickness", ["2.5", None])
def test_dicom_slice_spacing_as_the_headers_state_it(tmp_path, thickness):
    """Slice positions written with float32 precision (as scanners do) give ITK a z spacing of 2.4999999."""
    from p53hcc.tools.cohort.imageio import read_geometry
    from p53hcc.tools.preprocessing.chain import preprocessing_chain

    z = [repr(float(np.float32(-117.35 + 2.5 * k))) for k in range(38)]
    series = _dicom_series(tmp_path / "dcm", z, thickness)
    assert read_geometry(series).spacing[2] == 2.5
    loaded = preprocessing_chain({"pixdim": (1.0, 1.0, 1.0)}, ["image"], [], n4=False, resample=False)(
        {"image": str(series)})["image"]
    assert float(loaded.pixdim[2]) == 2.5
    resampled = preprocessing_chain({"pixdim": (1.0, 1.0, 1.0)}, ["image"], [], n4=False)({"image": str(series)})
    assert resampled["image"].shape[-1] == 94  # 37 gaps x 2.5 mm on the 1 mm grid; 2.4999999 mm gives 93
