"""The Deploy app's input checks on synthetic DICOM studies (no SDK, no model): another patient's phase, a damaged
slice, a gap, a duplicated slice, mixed orientations, another study or frame of reference are each refused with
one line naming the series and the file, before anything is loaded or scored; a sound study passes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from p53hcc.tools.deploy import run as deploy_run
from p53hcc.tools.deploy.series_checks import DicomInputError

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom", reason="the synthetic DICOM cohort needs highdicom (pip install 'p53hcc[dicom]')")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two synthetic patients as DICOM studies (series + SEG per phase)."""
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    root = tmp_path_factory.mktemp("dicom")
    make_cohort(2, root, seed=5, second_reader=False, profile="external", image_format="dicom")
    return root / "dicom"


def _patient(cohort: Path, tmp_path: Path, which: int = 0) -> Path:
    pid = sorted(p.name for p in cohort.iterdir())[which]
    return Path(shutil.copytree(cohort / pid, tmp_path / "in" / pid))


def _slices(folder: Path) -> list[Path]:
    return sorted(folder.iterdir(), key=lambda f: float(
        pydicom.dcmread(str(f), stop_before_pixels=True).ImagePositionPatient[2]))


def _edit(files, **values) -> None:
    for f in files:
        ds = pydicom.dcmread(str(f))
        for k, v in values.items():
            setattr(ds, k, v)
        ds.save_as(str(f))


def _foreign_phase(study: Path, cohort: Path) -> str:
    other = next(p for p in cohort.iterdir() if p.name != study.name)
    shutil.rmtree(study / "pvp")
    shutil.copytree(other / "pvp", study / "pvp")
    shutil.copy(other / "seg" / "pvp.dcm", study / "seg" / "pvp.dcm")
    return rf"two patients in one input: PatientID '{study.name}' .* and '{other.name}' \(.*PVP"


def _damaged_slice(study: Path, cohort: Path) -> str:
    victim = _slices(study / "dp")[10]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 3000])  # the header is intact, the pixel data cut short
    return rf"phase DP, series .*: file {victim}: pixel data unreadable"


def _gap(study: Path, cohort: Path) -> str:
    files = _slices(study / "ap")
    files[20].unlink()
    return rf"phase AP, series .*: between files {files[19]} and {files[21]} there is a gap of .* \(1.0 slice"


def _duplicated_slice(study: Path, cohort: Path) -> str:
    files = _slices(study / "pvp")
    copy = study / "pvp" / "copy.dcm"
    shutil.copy(files[5], copy)
    _edit([copy], SOPInstanceUID=pydicom.uid.generate_uid())
    return r"phase PVP, series .*: files .* are two slices at one position .*a duplicated slice"


def _same_instance_twice(study: Path, cohort: Path) -> str:
    files = _slices(study / "pvp")
    shutil.copy(files[5], study / "pvp" / "again.dcm")
    return r"phase PVP, series .*: files .* are one instance twice"


def _mixed_orientation(study: Path, cohort: Path) -> str:
    victim = _slices(study / "ap")[7]
    _edit([victim], ImageOrientationPatient=[1, 0, 0, 0, 0.8, -0.6])
    return rf"phase AP, series .*: file {victim}: orientation .* \(mixed orientations in one series\)"


def _other_frame(study: Path, cohort: Path) -> str:
    _edit((study / "dp").iterdir(), FrameOfReferenceUID=pydicom.uid.generate_uid())
    return r"phase DP, series .* is in FrameOfReferenceUID .* the phases are in different coordinate spaces"


def _other_study(study: Path, cohort: Path) -> str:
    _edit((study / "dp").iterdir(), StudyInstanceUID=pydicom.uid.generate_uid(),
          FrameOfReferenceUID=pydicom.uid.generate_uid())
    return r"two studies in one input: StudyInstanceUID"


def _other_birth_date(study: Path, cohort: Path) -> str:
    _edit((study / "ap").iterdir(), PatientBirthDate="19600101")
    _edit((study / "pvp").iterdir(), PatientBirthDate="19610101")
    return r"two patients in one input: PatientBirthDate '19600101'"


def _not_dicom_after_all(study: Path, cohort: Path) -> str:
    victim = _slices(study / "ap")[3]
    victim.write_bytes(victim.read_bytes()[:200])  # the preamble and 'DICM' survive, the header does not
    return rf"file {victim}: not a readable DICOM file"


@pytest.mark.parametrize("break_it", [_foreign_phase, _damaged_slice, _gap, _duplicated_slice, _same_instance_twice,
                                      _mixed_orientation, _other_frame, _other_study, _other_birth_date,
                                      _not_dicom_after_all])
def test_a_broken_study_is_refused_naming_series_and_file_before_loading(cohort, tmp_path, monkeypatch, break_it):
    def loaded(*args, **kwargs):
        raise AssertionError("the volume was loaded before the series were checked")

    monkeypatch.setattr(deploy_run, "load_volume", loaded)
    study = _patient(cohort, tmp_path)
    message = break_it(study, cohort)
    with pytest.raises(DicomInputError, match=message) as err:
        deploy_run.read_study(study)
    assert "\n" not in str(err.value)


def test_a_sound_study_passes_and_separate_studies_in_one_frame_are_accepted(cohort, tmp_path):
    study = _patient(cohort, tmp_path)
    _edit((study / "dp").iterdir(), StudyInstanceUID=pydicom.uid.generate_uid())  # one frame of reference
    got = deploy_run.read_study(study)
    assert got.volume.shape[0] == 6 and got.resampled == []
    assert np.isfinite(got.volume.numpy()).all()


def test_a_missing_input_folder_is_refused(tmp_path):
    with pytest.raises(DicomInputError, match=f"input folder {tmp_path / 'nowhere'} not found"):
        deploy_run.read_study(tmp_path / "nowhere")


def _result(study, combined: bool = True) -> dict:
    """An app result for ``study`` (the numbers made up: the SR's structure is under test, not the model)."""
    result = {"probability": 0.62, "threshold": 0.41, "predicted_class": 1, "model": "hcc_p53_mc_resnet18_mri",
              "model_version": "0.1.0", "model_description": "test", "dl_note": None, "inputs": study.identities(),
              "combined": None, "combined_note": "no frozen study model beside the bundle: DL arm only"}
    if combined:
        result["combined"] = {"probability": 0.3, "threshold": 0.5, "predicted_class": 0,
                              "components": {"clinical": 0.2, "radiomics": 0.4, "dl": 0.62},
                              "nomogram_points": {"clinical": 12.5, "radiomics": 40.0, "dl": 61.0},
                              "total_points": 113.5, "study": "s1", "clinical": {}}
        result["combined_note"] = None
    return result


@pytest.mark.parametrize("combined", [True, False])
def test_sr_is_a_tid1500_report_citing_every_input_instance(cohort, tmp_path, combined):
    """The SR: TID 1500 with the probabilities, class, points and algorithm as coded content, the private scheme
    declared, evidence resolving to exactly the input series and SEGs, and dciodvfy (dicom3tools) without error."""
    import subprocess

    study = deploy_run.read_study(_patient(cohort, tmp_path))
    result = _result(study, combined)
    paths = deploy_run.write_outputs(tmp_path / "out", result, study.evidence)
    sr = pydicom.dcmread(str(paths["sr"]))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == study.images["ap"].study_uid and sr.PatientID == study.patient_id
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == ["99P53HCC"]
    cited = {(str(s.SeriesInstanceUID), str(i.ReferencedSOPInstanceUID)) for st in
             sr.CurrentRequestedProcedureEvidenceSequence for s in st.ReferencedSeriesSequence
             for i in s.ReferencedSOPSequence}
    inputs = {(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in
              (pydicom.dcmread(f, stop_before_pixels=True) for f in study.evidence)}
    assert cited == inputs and len({s for s, _ in cited}) == 6  # three phase series, three SEGs

    def items(ds):
        for item in getattr(ds, "ContentSequence", []):
            yield item
            yield from items(item)

    nums = [(i.ConceptNameCodeSequence[0].CodeMeaning, float(i.MeasuredValueSequence[0].NumericValue))
            for i in items(sr) if i.ValueType == "NUM"]
    assert ("Probability", 0.62) in nums and ("Operating threshold (training Youden)", 0.41) in nums
    algorithms = [i.TextValue for i in items(sr) if i.ValueType == "TEXT"
                  and i.ConceptNameCodeSequence[0].CodeValue == "111001"]  # DCM Algorithm Name
    assert "hcc_p53_mc_resnet18_mri" in algorithms
    status = [i.ConceptCodeSequence[0].CodeMeaning for i in items(sr) if i.ValueType == "CODE"
              and i.ConceptNameCodeSequence[0].CodeValue == "P53-CLASS"]
    if combined:
        assert ("Probability", 0.3) in nums and ("Nomogram total points", 113.5) in nums
        assert status == ["Present", "Absent"]
    else:
        assert status == ["Present"] and len([n for n in nums if n[0] == "Probability"]) == 1
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools): the SR's IOD check is skipped")
    done = subprocess.run(["dciodvfy", str(paths["sr"])], capture_output=True, text=True, timeout=120, check=False)
    errors = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("Error")]
    assert errors == [], "\n".join(errors)


def test_the_apps_reader_reads_as_the_studys_reader(cohort, tmp_path):
    """read_volume (SimpleITK, no itk package) gives LoadImage(SeriesSpacingReader)'s voxels and affine exactly."""
    import SimpleITK as sitk
    import torch
    from monai.transforms import LoadImage

    from p53hcc.tools.cohort.dicomseg import read_seg
    from p53hcc.tools.deploy.volumes import read_volume
    from p53hcc.tools.preprocessing.chain import SeriesSpacingReader

    study = _patient(cohort, tmp_path)
    sitk.WriteImage(read_seg(study / "seg" / "dp.dcm"), str(tmp_path / "dp_mask.nii.gz"))
    for path in (study / "ap", study / "seg" / "pvp.dcm", tmp_path / "dp_mask.nii.gz"):
        want = LoadImage(reader=SeriesSpacingReader(), image_only=True, ensure_channel_first=True)(str(path))
        got = read_volume(path)
        assert got.shape == want.shape and torch.equal(got.as_tensor(), want.as_tensor()), path
        np.testing.assert_array_equal(got.affine.numpy(), want.affine.numpy())


def test_a_refusal_is_one_line_exit_1_and_leaves_no_output(tmp_path, capsys):
    """refusals(): a P53hccError becomes one stderr line and exit code 1; an output folder the run made is gone,
    one that existed keeps only what it had; an operator's error is kept (no SDK failure block) and re-raised."""
    from p53hcc.tools.deploy.refusal import AppPaths, check_paths, guarded, raise_failure, refusals
    from p53hcc.tools.errors import P53hccError

    out = tmp_path / "new"
    with pytest.raises(SystemExit) as done, refusals(out):
        out.mkdir()
        (out / "half.json").write_text("{}")
        raise DicomInputError("phase AP, series 1.2: file x.dcm: pixel data unreadable")
    assert done.value.code == 1 and not out.exists()
    assert capsys.readouterr().err == "p53hcc-deploy: error: phase AP, series 1.2: file x.dcm: pixel data unreadable\n"
    kept = tmp_path / "mounted"
    kept.mkdir()
    (kept / "theirs.txt").write_text("x")
    with pytest.raises(SystemExit), refusals(kept):
        (kept / "result.json").write_text("{}")
        check_paths(AppPaths(tmp_path / "nowhere", tmp_path, kept))
    assert [p.name for p in kept.iterdir()] == ["theirs.txt"]
    assert "input folder" in capsys.readouterr().err

    class App:
        failure = None

    class Operator:
        app = App()

        @guarded
        def compute(self):
            raise P53hccError("mask empty")

    op = Operator()
    assert op.compute() is None and isinstance(op.app.failure, P53hccError)
    with pytest.raises(P53hccError, match="mask empty"):
        raise_failure(op.app)


def test_the_apps_image_checks_are_validates(cohort, tmp_path, caplog):
    """IMAGE_CHECKS run the checks of validate and predict on the loaded volume: a blank series is refused naming
    the patient and phase (before N4's RuntimeError), a sound study logs no image warning."""
    import logging

    with caplog.at_level(logging.WARNING, logger="p53hcc.tools.deploy.series_checks"):
        deploy_run.read_study(_patient(cohort, tmp_path))
    assert caplog.text == ""
    study = _patient(cohort, tmp_path / "blank")
    for f in (study / "dp").iterdir():
        ds = pydicom.dcmread(str(f))
        ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()
        ds.save_as(str(f))
    with pytest.raises(DicomInputError, match=r"patient .*, phase DP, .*: blank series: every voxel is 0") as err:
        deploy_run.read_study(study)
    assert "\n" not in str(err.value)
