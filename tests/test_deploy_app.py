"""The MONAI Deploy application (``deploy/app.py``) on synthetic DICOM studies: its probability is `p53hcc
predict`'s for the same patients (rtol 1e-4), with clinical values and the frozen study model so are the combined
model's probability, components and nomogram points; masks as NIfTI give the same; it writes result.json and a
DICOM SR that say so, and the bad inputs (missing phase, two candidate series, a mask not referencing the series,
wrong modality, two masks for a phase, clinical values that do not fit) stop it with an error naming the series,
file or column, and nothing written."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.deploy.combined import DeployInputError, clinical_json_values
from p53hcc.tools.deploy.dicom_study import DicomInputError
from p53hcc.tools.deploy.run import RESULT_JSON, RESULT_SR, score_dicom_study
from tests.conftest import make_tiny_cohort

pytest.importorskip("monai.deploy", reason="the MONAI Deploy App SDK is the deploy extra: pip install 'p53hcc[deploy]'")
pydicom = pytest.importorskip("pydicom")
pytestmark = [pytest.mark.slow, pytest.mark.deploy]  # a study, an export, a DICOM cohort, `p53hcc predict` (~4 min)

APP = Path(__file__).resolve().parents[1] / "deploy" / "app.py"
STUDY = dict(profile="demo", nets="resnet18", folds=2, epochs=1, spatial_size=32, batch_size=4,
             **{"dl.arms": "mc", "gradcam.n": 1, "fusion.nesting": "apparent"})  # MC only: predict's dl is the MC


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A study (MC arm), its exported bundle, a 3-patient synthetic DICOM cohort and `p53hcc predict` on it."""
    from p53hcc.tools.cohort.synth.cohort import make_cohort
    from p53hcc.tools.export.bundle import export_bundle
    from p53hcc.tools.pipeline.predict import predict_cohort
    from p53hcc.tools.pipeline.study import run_study

    root = tmp_path_factory.mktemp("deploy")
    try:
        run_study(make_tiny_cohort(root / "cohort", n=28), out=root / "study", **STUDY)
        bundle = export_bundle(root / "study", arm="mc", out=root / "export")
        cohort = make_cohort(3, root / "dicom", seed=5, second_reader=False, profile="external",
                             image_format="dicom")
        predicted = pd.read_csv(predict_cohort(root / "study" / "model", cohort, root / "predict"),
                                dtype={"patient_id": str}).set_index("patient_id")
        models = root / "models"  # the app's models folder: the bundle and the frozen study model beside it
        shutil.copytree(bundle, models / bundle.name)
        shutil.copytree(root / "study" / "model", models / "study_model")
        clinical = pd.read_csv(cohort, dtype={"patient_id": str}).set_index("patient_id")
        yield {"root": root, "bundle": bundle, "dicom": root / "dicom" / "dicom", "predicted": predicted,
               "models": models, "clinical": clinical}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _app(study: Path, bundle: Path, out: Path, module: bool = False) -> subprocess.CompletedProcess:
    """``python deploy/app.py ...``, or ``python -m deploy ...`` from the repository (the folder's ``__main__``)."""
    run = ["-m", "deploy"] if module else [str(APP)]
    return subprocess.run([sys.executable, *run, "-i", str(study), "-m", str(bundle), "-o", str(out)],
                          capture_output=True, text=True, timeout=600, check=False, cwd=APP.parents[1])


def _sr_groups(path: Path) -> tuple[dict[str, dict[str, float]], set[str], list[str]]:
    """The TID 1500 SR's measurement groups ``{tracking identifier: {concept: value}}``, the series its evidence
    cites, and its text items."""
    sr = pydicom.dcmread(str(path))
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"

    def items(ds):
        for item in getattr(ds, "ContentSequence", []):
            yield item
            yield from items(item)

    groups = {}
    for group in items(sr):
        if group.ValueType == "CONTAINER" and group.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Group":
            label = next(i.TextValue for i in group.ContentSequence if i.ValueType == "TEXT"
                         and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier")
            groups[label] = {i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
                             for i in group.ContentSequence if i.ValueType == "NUM"}
    cited = {str(s.SeriesInstanceUID) for st in sr.CurrentRequestedProcedureEvidenceSequence
             for s in st.ReferencedSeriesSequence}
    return groups, cited, [str(i.TextValue) for i in items(sr) if i.ValueType == "TEXT"]


def test_app_writes_json_and_sr_with_predicts_probability(deployed, tmp_path):
    pid = min(deployed["predicted"].index)
    done = _app(deployed["dicom"] / pid, deployed["bundle"], tmp_path / "out")
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads((tmp_path / "out" / RESULT_JSON).read_text())
    want = deployed["predicted"].loc[pid, "dl"]
    np.testing.assert_allclose(result["probability"], want, rtol=1e-4)
    assert result["predicted_class"] == int(result["probability"] >= result["threshold"])
    assert result["model"] == deployed["bundle"].name and result["model_version"] == "0.1.0"
    series = {str(pydicom.dcmread(str(next((deployed["dicom"] / pid / p).iterdir())),
                                  stop_before_pixels=True).SeriesInstanceUID): p for p in ("ap", "pvp", "dp")}
    assert {v: k for k, v in result["inputs"]["series"].items()} == series
    groups, cited, _ = _sr_groups(tmp_path / "out" / RESULT_SR)
    np.testing.assert_allclose(groups["DL arm"]["Probability"], result["probability"], rtol=1e-8)
    assert cited == set(series) | set(result["inputs"]["masks"].values())  # the three series and their SEGs


def test_every_patient_scores_as_predict(deployed, tmp_path):
    """The same function the app's operators call, on every patient (not a constant model)."""
    got = {pid: score_dicom_study(deployed["dicom"] / pid, deployed["bundle"], tmp_path / pid)["probability"]
           for pid in deployed["predicted"].index}
    want = deployed["predicted"]["dl"]
    np.testing.assert_allclose(pd.Series(got)[want.index], want, rtol=1e-4)
    assert want.nunique() > 1


def _copy(deployed, tmp_path, pid: str | None = None, clinical: bool = False) -> Path:
    pid = pid or min(deployed["predicted"].index)
    study = Path(shutil.copytree(deployed["dicom"] / pid, tmp_path / "study" / pid))
    if clinical:  # the cohort table's clinical values of the patient, as a user writes them
        (study / "clinical.json").write_text(json.dumps(clinical_json_values(deployed["clinical"].loc[pid])))
    return study


def test_app_with_clinical_values_gives_predicts_combined_model(deployed, tmp_path):
    """The app itself (SDK operators) with clinical.json and the study model: the combined model as predict's."""
    pid = min(deployed["predicted"].index)
    done = _app(_copy(deployed, tmp_path, pid, clinical=True), deployed["models"], tmp_path / "out")
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads((tmp_path / "out" / RESULT_JSON).read_text())
    want = deployed["predicted"].loc[pid]
    combined = result["combined"]
    np.testing.assert_allclose(combined["probability"], want["probability"], rtol=1e-4)
    for comp in ("clinical", "radiomics", "dl"):
        np.testing.assert_allclose(combined["components"][comp], want[comp], rtol=1e-4)
    assert combined["predicted_class"] == int(want["predicted_class"])
    np.testing.assert_allclose(combined["total_points"], want["total_points"], rtol=1e-4, atol=1e-6)
    for name, points in combined["nomogram_points"].items():
        np.testing.assert_allclose(points, want[f"points_{name}"], rtol=1e-4, atol=1e-6)
    assert result["inputs"]["clinical"] == "clinical.json" and result["combined_note"] is None
    nums = _sr_groups(tmp_path / "out" / RESULT_SR)[0]["combined model"]
    np.testing.assert_allclose(nums["Probability"], combined["probability"], rtol=1e-8)
    np.testing.assert_allclose(nums["Nomogram total points"], combined["total_points"], rtol=1e-8)


def test_every_patients_combined_model_and_nifti_masks_as_predict(deployed, tmp_path):
    """Every patient, with masks as NIfTI files instead of DICOM SEG: DL, components and combined as predict's."""
    import SimpleITK as sitk

    from p53hcc.tools.cohort.dicomseg import read_seg

    got = {}
    for pid in deployed["predicted"].index:
        study = _copy(deployed, tmp_path, pid, clinical=True)
        for phase in ("ap", "pvp", "dp"):
            sitk.WriteImage(read_seg(study / "seg" / f"{phase}.dcm"), str(study / f"{phase}_mask.nii.gz"))
        shutil.rmtree(study / "seg")
        result = score_dicom_study(study, deployed["models"], tmp_path / "out" / pid)
        assert result["inputs"]["masks"]["ap"] == "ap_mask.nii.gz"
        got[pid] = {"dl": result["probability"], **{k: result["combined"]["components"][k]
                                                    for k in ("clinical", "radiomics")},
                    "probability": result["combined"]["probability"]}
    got = pd.DataFrame(got).T
    want = deployed["predicted"]
    for col in ("dl", "clinical", "radiomics", "probability"):
        np.testing.assert_allclose(got.loc[want.index, col].astype(float), want[col], rtol=1e-4, err_msg=col)
    assert want["radiomics"].nunique() > 1 and want["probability"].nunique() > 1  # not one constant compared


def _edit(files, **values) -> None:
    for f in files:
        ds = pydicom.dcmread(str(f))
        for k, v in values.items():
            if k == "ReferencedSeriesUID":
                ds.ReferencedSeriesSequence[0].SeriesInstanceUID = v
            else:
                setattr(ds, k, v)
        ds.save_as(str(f))


def _missing_phase(study: Path) -> str:
    shutil.rmtree(study / "dp")
    (study / "seg" / "dp.dcm").unlink()
    return "phase DP: no series description matches"


def _two_candidates(study: Path) -> str:
    shutil.copytree(study / "pvp", study / "pvp_again")
    _edit((study / "pvp_again").iterdir(), SeriesInstanceUID=pydicom.uid.generate_uid())
    return "phase PVP: 2 candidate series"


def _mask_not_referencing(study: Path) -> str:
    _edit([study / "seg" / "dp.dcm"], ReferencedSeriesUID="1.2.3.4.5")
    return "references series 1.2.3.4.5, none of the selected phase series"


def _wrong_modality(study: Path) -> str:
    _edit((study / "ap").iterdir(), Modality="CT")
    return "has modality CT, not MR"


def _two_masks(study: Path) -> str:
    import SimpleITK as sitk

    from p53hcc.tools.cohort.dicomseg import read_seg

    sitk.WriteImage(read_seg(study / "seg" / "pvp.dcm"), str(study / "pvp_mask.nii.gz"))
    return "phase PVP: two masks for series"


def _mask_off_its_series_grid(study: Path) -> str:
    import SimpleITK as sitk

    from p53hcc.tools.cohort.dicomseg import read_seg

    mask = read_seg(study / "seg" / "pvp.dcm")
    sitk.WriteImage(mask[:, :, 2:], str(study / "pvp_mask.nii.gz"))  # two slices fewer than its series
    (study / "seg" / "pvp.dcm").unlink()
    return "phase PVP: the mask .*pvp_mask.nii.gz is not on the grid of series"


@pytest.mark.parametrize("break_it", [_missing_phase, _two_candidates, _mask_not_referencing, _wrong_modality,
                                      _two_masks, _mask_off_its_series_grid])
def test_bad_inputs_are_named_errors_and_write_nothing(deployed, tmp_path, break_it):
    study = _copy(deployed, tmp_path)
    message = break_it(study)
    with pytest.raises(DicomInputError, match=message) as err:
        score_dicom_study(study, deployed["bundle"], tmp_path / "out")
    assert "series" in str(err.value)
    assert not (tmp_path / "out").exists()


def _models_with_tampered_source(deployed, tmp_path) -> Path:
    models = Path(shutil.copytree(deployed["models"], tmp_path / "models"))
    deploy = models / deployed["bundle"].name / "configs" / "deploy.json"
    cfg = json.loads(deploy.read_text())
    cfg["p53hcc_source"]["weights_sha256"] = "0" * 64  # a bundle exported from another training of the study
    deploy.write_text(json.dumps(cfg))
    return models


@pytest.mark.parametrize("case", ["no_study_model", "other_network", "unknown_column", "bad_value",
                                  "missing_column", "other_patient"])
def test_clinical_inputs_that_do_not_fit_are_named_errors_before_scoring(deployed, tmp_path, monkeypatch, case):
    from p53hcc.tools.deploy import run as deploy_run

    def scored(*args, **kwargs):
        raise AssertionError("the bundle ran before every input was checked")

    monkeypatch.setattr(deploy_run, "bundle_inference", scored)
    study = _copy(deployed, tmp_path, clinical=True)
    values = json.loads((study / "clinical.json").read_text())
    models = deployed["models"]
    if case == "no_study_model":
        models, message = deployed["bundle"], "clinical values are given but the models folder has no frozen study"
    elif case == "other_network":
        models, message = _models_with_tampered_source(deployed, tmp_path), "is not the DL component of the study"
    elif case == "unknown_column":
        values["afp_ng_ml"] = 3
        message = re.escape("unknown clinical column(s) afp_ng_ml")
    elif case == "bad_value":
        values.update(sex="X", mvi=2)
        message = "2 problem.*column mvi: value 2 is not 0 or 1; column sex: value 'X' not one of M, F"
    elif case == "missing_column":
        del values["afp"]
        message = "column afp: 1 clinical column.s. missing"
    else:
        values["patient_id"] = "SOMEONE-ELSE"
        message = "patient_id 'SOMEONE-ELSE' is not the DICOM study's PatientID"
    (study / "clinical.json").write_text(json.dumps(values))
    with pytest.raises(DeployInputError, match=message) as err:
        score_dicom_study(study, models, tmp_path / "out")
    assert "clinical" in str(err.value) or case == "other_network"
    assert not (tmp_path / "out").exists()


def _foreign_phase(deployed, study: Path) -> str:
    other = next(p for p in sorted(deployed["predicted"].index) if p != study.name)
    shutil.rmtree(study / "pvp")
    shutil.copytree(deployed["dicom"] / other / "pvp", study / "pvp")
    shutil.copy(deployed["dicom"] / other / "seg" / "pvp.dcm", study / "seg" / "pvp.dcm")
    return f"two patients in one input: PatientID '{study.name}'"


def _damaged_slice(deployed, study: Path) -> str:
    victim = sorted((study / "ap").iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:-2000])
    return f"file {victim}: pixel data unreadable"


def _gap(deployed, study: Path) -> str:
    files = sorted((study / "dp").iterdir(), key=lambda f: float(
        pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]))
    files[len(files) // 2].unlink()
    return "there is a gap of"


def _read_only_output(deployed, study: Path) -> str:
    return "is not writable"


@pytest.mark.parametrize("break_it", [_foreign_phase, _damaged_slice, _gap, _read_only_output, _wrong_modality])
def test_app_refuses_with_one_line_and_no_output(deployed, tmp_path, break_it):
    """The app itself (``python -m deploy``): a bad input is one named line on stderr and exit code 1, with no
    traceback, no SDK failure block and no output folder (a read-only one left as it was, empty)."""
    study = _copy(deployed, tmp_path)
    message = break_it(deployed, study) if break_it is not _wrong_modality else break_it(study)
    out = tmp_path / "out"
    if break_it is _read_only_output:
        out.mkdir()
        if subprocess.run(["chattr", "+i", str(out)], capture_output=True, check=False).returncode != 0:
            if os.geteuid() == 0:
                pytest.skip("chattr +i is not available and root writes into any folder: no read-only folder")
            out.chmod(0o555)
    try:
        done = _app(study, deployed["bundle"], out, module=True)
    finally:
        if break_it is _read_only_output:
            subprocess.run(["chattr", "-i", str(out)], capture_output=True, check=False)
            out.chmod(0o755)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 1, done.stderr[-3000:]
    assert [ln for ln in lines if "error" in ln.lower()] == [ln for ln in lines if ln.startswith("p53hcc-deploy: error:")]
    assert any(message in ln for ln in lines), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "GXF" not in done.stderr and "holoscan" not in done.stderr.lower()
    assert not out.exists() or not list(out.iterdir())
    if break_it is not _read_only_output:
        assert not out.exists()


def _crop_dp(study: Path) -> None:
    """Drop the DP series' two lowest slices (another grid than AP); its mask as NIfTI on the cropped grid."""
    import SimpleITK as sitk

    from p53hcc.tools.cohort.dicomseg import read_seg

    mask = read_seg(study / "seg" / "dp.dcm")
    files = sorted((study / "dp").iterdir(),
                   key=lambda f: float(pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]))
    for f in files[:2]:
        f.unlink()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(study / "dp")))
    grid = reader.Execute()
    sitk.WriteImage(sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID()),
                    str(study / "dp_mask.nii.gz"))
    (study / "seg" / "dp.dcm").unlink()


def test_a_phase_on_another_grid_is_resampled_onto_ap_and_said(deployed, tmp_path):
    """DP with two slices fewer: the app resamples it onto the AP grid for the bundle and says so (JSON, SR); the
    combined model's clinical and radiomics inputs are predict's exactly (each phase on its own grid), the DL
    probability close to predict's."""
    from p53hcc.tools.pipeline.predict import predict_cohort

    pid = min(deployed["predicted"].index)
    study = _copy(deployed, tmp_path, pid, clinical=True)
    _crop_dp(study)
    result = score_dicom_study(study, deployed["models"], tmp_path / "out")
    assert result["inputs"]["resampled_onto_ap_grid"] == ["dp"] and result["dl_note"].startswith("DP resampled")
    assert any(result["dl_note"] in text for text in _sr_groups(tmp_path / "out" / RESULT_SR)[2])
    row = {"patient_id": pid, "split": "predict", "p53": "", **{p: str(study / p) for p in ("ap", "pvp", "dp")},
           "ap_mask": str(study / "seg" / "ap.dcm"), "pvp_mask": str(study / "seg" / "pvp.dcm"),
           "dp_mask": str(study / "dp_mask.nii.gz"), **json.loads((study / "clinical.json").read_text())}
    pd.DataFrame([row]).to_csv(tmp_path / "cohort.csv", index=False)
    want = pd.read_csv(predict_cohort(deployed["models"] / "study_model", tmp_path / "cohort.csv",
                                      tmp_path / "predict", gradcam=False), dtype={"patient_id": str}).iloc[0]
    for comp in ("clinical", "radiomics"):
        np.testing.assert_allclose(result["combined"]["components"][comp], want[comp], rtol=1e-6)
    assert abs(result["probability"] - want["dl"]) < 0.02  # two empty edge slices: the crops barely change
