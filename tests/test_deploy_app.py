"""The MONAI Deploy application (``deploy/app.py``) on synthetic DICOM studies: its probability is `p53hcc
predict`'s for the same patients (rtol 1e-4), it writes result.json and a DICOM SR that say so, and the bad inputs
(missing phase, two candidate series, a mask not referencing the series, wrong modality) stop it with an error
naming the series and nothing written."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.export.deploy_run import RESULT_JSON, RESULT_SR, score_dicom_study
from p53hcc.tools.export.dicom_study import DicomInputError
from tests.conftest import make_tiny_cohort

pytest.importorskip("monai.deploy", reason="the MONAI Deploy App SDK is the deploy extra: pip install 'p53hcc[deploy]'")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.slow  # a real study, an export, a DICOM cohort and `p53hcc predict` (~4 min)

APP = Path(__file__).resolve().parents[1] / "deploy" / "app.py"
STUDY = dict(profile="demo", nets="resnet18", folds=2, epochs=1, spatial_size=32, batch_size=4,
             **{"dl.arms": "mc", "gradcam.n": 1, "fusion.nesting": "apparent"})  # MC only: predict's dl is the MC


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A study (MC arm), its exported bundle, a 3-patient synthetic DICOM cohort and `p53hcc predict` on it."""
    from p53hcc.tools.cohort.synth import make_cohort
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
        yield {"root": root, "bundle": bundle, "dicom": root / "dicom" / "dicom", "predicted": predicted}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _app(study: Path, bundle: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APP), "-i", str(study), "-m", str(bundle), "-o", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)


def _sr_values(path: Path) -> tuple[float, dict[str, str]]:
    sr = pydicom.dcmread(str(path))
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"
    num = [float(i.MeasuredValueSequence[0].NumericValue) for i in sr.ContentSequence if i.ValueType == "NUM"]
    uids = {i.ConceptNameCodeSequence[0].CodeMeaning: str(i.UID) for i in sr.ContentSequence
            if i.ValueType == "UIDREF"}
    return num[0], uids


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
    prob, uids = _sr_values(tmp_path / "out" / RESULT_SR)
    np.testing.assert_allclose(prob, result["probability"], rtol=1e-8)
    assert {uids[f"{p.upper()} series"] for p in ("ap", "pvp", "dp")} == set(series)
    assert uids["AP mask"] == result["inputs"]["masks"]["ap"]


def test_every_patient_scores_as_predict(deployed, tmp_path):
    """The same function the app's operators call, on every patient (not a constant model)."""
    got = {pid: score_dicom_study(deployed["dicom"] / pid, deployed["bundle"], tmp_path / pid)["probability"]
           for pid in deployed["predicted"].index}
    want = deployed["predicted"]["dl"]
    np.testing.assert_allclose(pd.Series(got)[want.index], want, rtol=1e-4)
    assert want.nunique() > 1


def _copy(deployed, tmp_path) -> Path:
    pid = min(deployed["predicted"].index)
    return Path(shutil.copytree(deployed["dicom"] / pid, tmp_path / "study"))


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


@pytest.mark.parametrize("break_it", [_missing_phase, _two_candidates, _mask_not_referencing, _wrong_modality])
def test_bad_inputs_are_named_errors_and_write_nothing(deployed, tmp_path, break_it):
    study = _copy(deployed, tmp_path)
    message = break_it(study)
    with pytest.raises(DicomInputError, match=message) as err:
        score_dicom_study(study, deployed["bundle"], tmp_path / "out")
    assert "series" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_app_stops_with_the_named_error(deployed, tmp_path):
    study = _copy(deployed, tmp_path)
    message = _wrong_modality(study)
    done = _app(study, deployed["bundle"], tmp_path / "out")
    assert done.returncode != 0 and "DicomInputError" in done.stderr and message in done.stderr
    assert not (tmp_path / "out" / RESULT_JSON).exists() and not (tmp_path / "out" / RESULT_SR).exists()
