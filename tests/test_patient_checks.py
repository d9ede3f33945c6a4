"""One set of per-patient checks for validate, the study and predict: blank series refused before N4, masks whose
extent disagrees across phases and an implausible phase order warned, and at predict time every warning (clinical
values outside the frozen model's training ranges too) in the ``warnings`` column of predictions.csv."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.cli import main
from p53hcc.tools.cohort.imagechecks import mask_extent_problems
from p53hcc.tools.errors import P53hccError
from tests.conftest import make_tiny_cohort, write_nifti


def _rewrite(root: Path, name: str, fn) -> None:
    img = nib.load(str(root / name))
    arr = fn(np.asarray(img.dataobj).copy())
    nib.save(nib.Nifti1Image(arr.astype(img.get_data_dtype()), img.affine), str(root / name))


def _one_slice(mask: np.ndarray) -> np.ndarray:
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    out = np.zeros_like(mask)
    out[..., z] = mask[..., z]
    return out


@pytest.fixture
def cohort(tmp_path) -> Path:
    return make_tiny_cohort(tmp_path / "c", n=8)


def test_blank_series_refused_naming_patient_and_phase(cohort, capsys):
    """An all-zero series used to pass validate --study and die in N4 with a MONAI RuntimeError."""
    write_nifti(cohort.parent / "images" / "P001_pvp.nii.gz", np.zeros((24, 24, 6)))
    for flags in ((), ("--study", "--folds", "2", "--fusion.lasso_cv_folds", "2", "--fusion.nesting", "apparent")):
        code = main(["validate", str(cohort), *flags])
        printed = "".join(capsys.readouterr())
        assert code == 1 and "Traceback" not in printed and "RuntimeError" not in printed, printed
        assert "patient P001, column pvp" in printed and "blank series: every voxel is 0" in printed, printed


def test_mask_on_one_slice_warns_naming_patient_and_phase(cohort, capsys):
    _rewrite(cohort.parent, "masks/P002_dp_mask.nii.gz", _one_slice)
    code = main(["validate", str(cohort)])
    printed = "".join(capsys.readouterr())
    assert code == 0, printed
    lines = [x for x in printed.splitlines() if x.startswith("WARNING")]
    assert len(lines) == 1 and "patient P002, column dp_mask" in lines[0] and "mask on 1 slice" in lines[0], printed


def test_mask_extent_rule():
    assert mask_extent_problems({"ap": (5, 900.0), "pvp": (6, 950.0), "dp": (5, 880.0)}) == {}
    assert set(mask_extent_problems({"ap": (5, 900.0), "pvp": (5, 150.0), "dp": (5, 880.0)})) == {"pvp"}
    assert "1 slice" in mask_extent_problems({"ap": (1, 600.0), "pvp": (4, 900.0), "dp": (3, 880.0)})["ap"]


@pytest.fixture
def new_patients(fused_study, tmp_path):
    """A tiny cohort to predict (split predict, no labels) and radiomics rows of the frozen model's features."""
    rad = fused_study[2]
    csv = make_tiny_cohort(tmp_path / "new", n=6)
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df["split"], df["p53"] = "predict", ""
    df.to_csv(csv, index=False)
    features = rad.drop(columns="patient_id").iloc[:6].reset_index(drop=True)
    return csv, features.assign(patient_id=df["patient_id"])


def _predict(model, csv, out, rad, monkeypatch):
    from p53hcc.tools.pipeline import predict

    calls = []
    monkeypatch.setattr(predict, "preprocess_cohort", lambda *a, **k: calls.append("preprocess"))
    monkeypatch.setattr(predict, "extract_cohort", lambda *a, **k: rad)
    dl = pd.Series(0.4, index=rad["patient_id"])
    dest = predict.predict_cohort(model, csv, out, dl_scorer=lambda *a: dl, gradcam=False)
    return pd.read_csv(dest, dtype={"patient_id": str}, keep_default_na=False).set_index("patient_id"), calls


def test_predict_writes_each_patients_warnings(fused_study, new_patients, tmp_path, monkeypatch, caplog):
    """The checks validate makes run at predict time too, and land in predictions.csv, not only on the console:
    swapped phases (AP brighter than PVP and DP), a one-slice mask, clinical values outside the training ranges."""
    root = fused_study[0]
    csv, rad = new_patients
    ranges = json.loads((root / "model" / "manifest.json").read_text())["training_ranges"]
    assert set(ranges) == {"age", "afp", "cea", "ca199", "ltd_mm"} and ranges["afp"][0] < ranges["afp"][1]
    _rewrite(csv.parent, "images/P001_ap.nii.gz", lambda a: a * 1.6)
    _rewrite(csv.parent, "masks/P003_pvp_mask.nii.gz", _one_slice)
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[df.patient_id == "P004", ["afp", "age"]] = ["250000", "19"]
    df.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING):
        pred, _ = _predict(root / "model", csv, tmp_path / "pred", rad, monkeypatch)
    w = pred["warnings"]
    assert w["P000"] == "" and w["P002"] == "" and w["P005"] == ""
    assert "phase order implausible" in w["P001"] and w["P001"].startswith("ap, pvp, dp:")
    assert w["P003"].startswith("pvp_mask: mask on 1 slice")
    assert "afp: 250000 is outside the training cohort's range" in w["P004"]
    assert "age: 19 is outside the training cohort's range" in w["P004"]
    assert pred["probability"].notna().all()  # flagged, still scored
    assert "patient P004, column afp" in caplog.text and "patient P001" in caplog.text


def test_blank_series_refused_by_predict_before_preprocessing(fused_study, new_patients, tmp_path, monkeypatch):
    root = fused_study[0]
    csv, rad = new_patients
    write_nifti(csv.parent / "images" / "P002_dp.nii.gz", np.zeros((24, 24, 6)))
    calls = []
    with pytest.raises(P53hccError, match=r"patient P002, column dp.*blank series"):
        calls = _predict(root / "model", csv, tmp_path / "pred", rad, monkeypatch)[1]
    assert calls == [] and not (tmp_path / "pred" / "predictions.csv").exists()


def test_old_frozen_model_without_ranges_predicts_with_a_note(fused_study, new_patients, tmp_path, monkeypatch,
                                                              caplog):
    root = fused_study[0]
    csv, rad = new_patients
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    manifest = json.loads((model / "manifest.json").read_text())
    feature = next(iter(manifest["image_ranges"]))
    del manifest["training_ranges"], manifest["image_ranges"]
    (model / "manifest.json").write_text(json.dumps(manifest))
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[0, "afp"] = "250000"
    df.to_csv(csv, index=False)
    rad.loc[0, feature] = 1e6
    with caplog.at_level(logging.INFO):
        pred, _ = _predict(model, csv, tmp_path / "pred", rad, monkeypatch)
    assert (pred["warnings"] == "").all() and "stores no training ranges of the clinical values" in caplog.text
    assert "stores no training ranges of image-derived values" in caplog.text


def test_freeze_stores_the_training_range_of_image_derived_values(fused_study):
    """manifest.json image_ranges: min..max over the analysed training patients of the radiomics values the
    study extracted (here the selected features; the fixture's images are not on disk, so no spacing)."""
    root, cohort, rad = fused_study
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    selected = json.loads((root / "model" / "radiomics_features.json").read_text())
    train = rad[rad["patient_id"].isin(cohort.loc[cohort["split"] == "train", "patient_id"])]
    assert len(train) < len(rad) and selected
    expected = {f: [float(train[f].min()), float(train[f].max())] for f in selected}
    assert manifest["image_ranges"] == expected


def test_image_values_tumour_size_intensity_and_header_spacing(cohort):
    from p53hcc.tools.cohort.manifest import read_cohort
    from p53hcc.tools.pipeline.checks import training_ranges
    from p53hcc.tools.pipeline.image_ranges import image_value_columns, image_values

    df = read_cohort(cohort)
    write_nifti(cohort.parent / "images" / "P003_dp.nii.gz", np.ones((24, 24, 6)), spacing=(0.7, 0.8, 2.5))
    rad = pd.DataFrame({"patient_id": df["patient_id"], "ap_original_firstorder_Mean": np.arange(8.0),
                        "pvp_original_shape_VoxelVolume": 100.0 + np.arange(8), "ap_x": 1.0})
    values = image_values(rad, df, image_value_columns(["ap_x"])).set_index("patient_id")
    assert {"ap_original_firstorder_Mean", "pvp_original_shape_VoxelVolume", "ap_x"} <= set(values.columns)
    assert values.loc["P000", "ap_spacing_inplane_mm"] == 1.5 and values.loc["P000", "ap_spacing_slice_mm"] == 4.0
    assert values.loc["P003", "dp_spacing_inplane_mm"] == pytest.approx(0.8)
    assert values.loc["P003", "dp_spacing_slice_mm"] == pytest.approx(2.5)
    ranges = training_ranges(values.reset_index(), values.columns)
    assert ranges["ap_original_firstorder_Mean"] == [0.0, 7.0] and ranges["ap_spacing_slice_mm"] == [4.0, 4.0]
    assert ranges["dp_spacing_slice_mm"] == [pytest.approx(2.5), 4.0]


def test_predict_flags_image_derived_values_outside_the_training_range(fused_study, new_patients, tmp_path,
                                                                       monkeypatch, caplog):
    """Images unlike the training cohort's (ROI intensity, a selected feature, the slice spacing) are flagged in
    the warnings column and the log, and still scored."""
    root = fused_study[0]
    csv, rad = new_patients
    model = tmp_path / "model"
    shutil.copytree(root / "model", model)
    manifest = json.loads((model / "manifest.json").read_text())
    feature, (lo, hi) = next(iter(manifest["image_ranges"].items()))
    manifest["image_ranges"].update({"ap_original_firstorder_Mean": [-1.0, 1.0], "pvp_spacing_slice_mm": [4.0, 4.0]})
    (model / "manifest.json").write_text(json.dumps(manifest))
    for name in ("images/P005_pvp.nii.gz", "masks/P005_pvp_mask.nii.gz"):  # 5 mm slices (training: 4 mm)
        img = nib.load(str(csv.parent / name))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), np.diag([1.5, 1.5, 5.0, 1.0])), str(csv.parent / name))
    rad = rad.assign(ap_original_firstorder_Mean=0.0).set_index("patient_id")
    rad.loc["P002", "ap_original_firstorder_Mean"] = 8.12
    rad.loc["P004", feature] = hi + 10
    with caplog.at_level(logging.WARNING):
        pred, _ = _predict(model, csv, tmp_path / "pred", rad.reset_index(), monkeypatch)
    w = pred["warnings"]
    assert w["P002"] == ("image out of the training range: ap ROI mean intensity (z-scored) 8.12 outside [-1, 1] "
                         "(the model extrapolates)")
    assert w["P004"] == (f"image out of the training range: radiomics feature {feature} {hi + 10:.4g} outside "
                         f"[{lo:.4g}, {hi:.4g}] (the model extrapolates)")
    assert w["P005"] == "image out of the training range: pvp slice spacing (mm) 5 outside [4, 4] (the model extrapolates)"
    assert (w[["P000", "P001", "P003"]] == "").all()
    assert pred["probability"].notna().all()
    assert "patient P002: image out of the training range" in caplog.text
