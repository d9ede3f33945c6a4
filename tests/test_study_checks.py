"""``p53hcc validate --study`` and the study's first stage catch what the later stages would reject (clinical
columns, classes per split, ROI size, image dimensionality) and warn on implausible phases, before any heavy
stage runs."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.cli import main
from p53hcc.tools.cohort.imagechecks import ImageRequirements, phase_order_problem, roi_problem
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.pipeline.checks import cohort_problems, image_requirements
from tests.conftest import make_tiny_cohort


def _study_validate(capsys, csv: Path, *flags: str) -> tuple[int, str]:
    """``p53hcc validate CSV --study FLAGS``; a 2-fold LASSO penalty search unless FLAGS say otherwise (a
    12-patient cohort has too few of each class in a training fold for the default 5), and apparent nesting (2
    folds leave nested cross-fitting no patient to fit on; that check has its own test in test_study.py)."""
    if "--lasso_cv_folds" not in flags:
        flags = (*flags, "--lasso_cv_folds", "2")
    flags = (*flags, "--nesting", "apparent")
    code = main(["validate", str(csv), "--study", *flags])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def cohort(tmp_path) -> Path:
    """12 patients (9 train: 4/5 per class; 3 validation) of 24x24x6 voxels at 1.5x1.5x4 mm."""
    return make_tiny_cohort(tmp_path / "c", n=12)


def _edit(csv: Path, fn) -> Path:
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    fn(df)
    df.to_csv(csv, index=False)
    return csv


def test_missing_clinical_columns_and_values_all_named(cohort, capsys):
    """A missing or 'n/a' clinical column passes plain validation but fails the clinical model hours later."""
    def edit(df):
        del df["ltd_mm"], df["capsule"]
        df.loc[3, "afp"] = "n/a"
        df.loc[5, "sex"] = ""
    _edit(cohort, edit)
    for flags in ((), ("--study", "--folds", "2", "--lasso_cv_folds", "2", "--nesting", "apparent")):  # plain too
        code = main(["validate", str(cohort), *flags])
        out = capsys.readouterr()
        printed = out.out + out.err
        assert code == 1 and "Traceback" not in printed
        for text in ("column ltd_mm, capsule: 2 clinical column(s) missing",
                     "patient P003, column afp: no value", "patient P005, column sex: no value"):
            assert text in printed, printed


def test_class_balance_per_split(cohort, capsys):
    code, printed = _study_validate(capsys, cohort, "--folds", "5")   # 5 negatives, 4 positives in training
    assert code == 1 and "5 stratified folds need at least 5 patients of each class" in printed, printed
    code, printed = _study_validate(capsys, cohort, "--folds", "2", "--lasso_cv_folds", "5")  # ~2 per class in
    assert code == 1 and "the radiomics LASSO's 5-fold penalty search" in printed, printed   # a training fold
    _edit(cohort, lambda df: df.__setitem__("p53", ["1" if s == "validation" else v
                                                     for s, v in zip(df["split"], df["p53"])]))
    code, printed = _study_validate(capsys, cohort, "--folds", "2")
    assert code == 0, printed
    assert "WARNING" in printed and "split validation has 0 P53-negative and 3 P53-positive" in printed


@pytest.mark.parametrize("kind, expected", [("one_voxel", "ROI too thin"), ("full", "mask covers 100%")])
def test_roi_the_study_cannot_use_is_an_error(cohort, capsys, kind, expected):
    mask = np.zeros((24, 24, 6), np.uint8)
    if kind == "one_voxel":
        mask[12, 12, 3] = 1
    else:
        mask[:] = 1
    path = cohort.parent / "masks" / "P002_pvp_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.diag([1.5, 1.5, 4.0, 1.0])), str(path))
    code, printed = _study_validate(capsys, cohort, "--folds", "2")
    assert code == 1 and "patient P002, column pvp_mask" in printed and expected in printed, printed


def test_roi_rules_follow_the_radiomics_parameters():
    paper = image_requirements("paper")
    assert (paper.min_roi_mm3, paper.min_roi_dims) == (10.0, 2)
    blob = np.zeros((10, 10, 10), np.uint8)
    blob[4:6, 4:6, 4:6] = 1                          # 8 voxels of 1 mm: too small for the paper's 10
    assert "ROI too small" in roi_problem(blob, (1, 1, 1), paper)
    assert roi_problem(blob, (1.5, 1.5, 1.5), paper) is None   # 27 mm^3
    assert roi_problem(blob, (1, 1, 1), ImageRequirements(min_roi_mm3=0)) is None
    line = np.zeros((10, 10, 10), np.uint8)
    line[2:9, 5, 5] = 1                               # 7 mm long, 1 mm thick: no area for texture or a crop
    assert "ROI too thin" in roi_problem(line, (1, 1, 1), ImageRequirements(min_roi_mm3=0))


def test_swapped_phases_warn_on_the_synthetic_cohort(tmp_path):
    """On the synthetic cohort (known tissue levels) no patient warns; with AP and DP swapped, every one does."""
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    csv = make_cohort(8, tmp_path / "syn", seed=4)
    req = ImageRequirements()
    assert not [p for p in cohort_problems(csv, req, folds=2, progress=False) if "phase order" in p.problem]
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for a, b in (("ap", "dp"), ("ap_mask", "dp_mask")):
        df[a], df[b] = df[b].copy(), df[a].copy()
    df.to_csv(csv, index=False)
    warned = {p.patient_id for p in cohort_problems(csv, req, folds=2, progress=False)
              if "phase order" in p.problem}
    assert warned == set(df["patient_id"])
    assert phase_order_problem({"ap": 100.0, "pvp": 150.0, "dp": 140.0}) is None
    assert "than in DP" in phase_order_problem({"ap": 150.0, "pvp": 160.0, "dp": 100.0})
    assert phase_order_problem({"ap": 100.2, "pvp": 99.9, "dp": 100.0}) is None  # unenhanced: no warning


def test_study_stops_before_any_heavy_stage(cohort, tmp_path, monkeypatch):
    """A 2-D image and a missing clinical value end the study at its first stage: nothing is preprocessed."""
    calls = []
    monkeypatch.setattr("p53hcc.tools.preprocessing.run.preprocess_cohort", lambda *a, **k: calls.append("pp"))
    flat = nib.Nifti1Image(np.ones((24, 24), np.float32), np.eye(4))
    nib.save(flat, str(cohort.parent / "images" / "P001_ap.nii.gz"))
    _edit(cohort, lambda df: df.__setitem__("age", [""] + list(df["age"][1:])))
    from p53hcc.tools.pipeline.study import run_study

    with pytest.raises(P53hccError) as err:
        run_study(cohort, out=tmp_path / "study", nets="resnet18", folds=2, nesting="apparent", profile="demo")
    assert calls == []
    assert "patient P001, column ap" in str(err.value) and "2-D image" in str(err.value)
    assert "patient P000, column age: no value" in str(err.value)
