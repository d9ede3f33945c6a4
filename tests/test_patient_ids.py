"""Patient ids name files and folders: an id that could leave the output folder, nest folders, or collide with
another on a case-insensitive file system is refused where the cohort enters, and every folder or file a stage or
the Deploy app derives from an id refuses it again (:mod:`p53hcc.tools.cohort.ids`)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.cli import main
from p53hcc.tools.cohort.ids import id_problem, id_problems, path_safe_id, patient_path
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.errors import InputError, P53hccError
from tests.conftest import make_tiny_cohort

UNSAFE = ["../../escaped", "SITE1/0001", "..", ".hidden", "a b", "x\\y", "CON", "nul.txt", "end.", "é01", "x" * 65]


@pytest.fixture
def cohort(tmp_path) -> Path:
    return make_tiny_cohort(tmp_path / "study" / "c", n=4, shape=(12, 12, 4))


def _rename(csv: Path, ids: dict[str, str]) -> Path:
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df["patient_id"] = df["patient_id"].replace(ids)
    df.to_csv(csv, index=False)
    return csv


@pytest.mark.parametrize("pid", UNSAFE)
def test_unsafe_ids_are_refused(pid):
    assert id_problem(pid)
    with pytest.raises(InputError, match="patient_id"):
        patient_path("/tmp/out", pid)


@pytest.mark.parametrize("pid", ["SYN0001", "0001", "P-12_a.3", "hcc.2024-01", "CONSTANCE", "a"])
def test_safe_ids_pass_and_stay_inside(tmp_path, pid):
    assert id_problem(pid) is None
    assert patient_path(tmp_path, pid, ".png").parent == tmp_path


def test_case_only_differences_collide():
    found = dict(id_problems(["SYN0004", "syn0004", "SYN0005"]))
    assert set(found) == {"SYN0004", "syn0004"} and "letter case" in found["SYN0004"]


def test_validate_names_every_unusable_id(cohort, capsys):
    _rename(cohort, {"P000": "../../escaped", "P001": "SITE1/0001", "P002": "SYN0004", "P003": "syn0004"})
    code = main(["validate", str(cohort)])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 1
    for pid in ("../../escaped", "SITE1/0001", "SYN0004", "syn0004"):
        assert f"patient {pid}, column patient_id" in text
    assert "character(s) '/'" in text and "letter case" in text


def test_every_stage_refuses_the_cohort_before_writing(cohort, tmp_path, capsys):
    """read_cohort is where every stage reads the cohort: preprocess writes nothing, inside or outside its folder."""
    _rename(cohort, {"P000": "../../escaped"})
    with pytest.raises(P53hccError, match=r"unusable patient id.*\.\./\.\./escaped"):
        read_cohort(cohort)
    out = tmp_path / "study" / "run"
    before = {p for p in tmp_path.rglob("*")}
    for command in (["preprocess", str(cohort), str(out), "--workers", "1"], ["radiomics", str(cohort), str(out)],
                    ["datalist", str(cohort), str(out)]):
        assert main(command) == 1
        assert "../../escaped" in capsys.readouterr().err
    after = {p for p in tmp_path.rglob("*")} - before
    assert all(p == out or p.name == ".p53hcc.lock" for p in after), after  # the lock is released with the folder
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_predict_refuses_the_cohort_before_writing(cohort, fused_study, tmp_path):
    from p53hcc.tools.pipeline.predict import predict_cohort

    _rename(cohort, {"P001": "SITE1/0001"})
    with pytest.raises(P53hccError, match="SITE1/0001"):
        predict_cohort(fused_study[0] / "model", cohort, tmp_path / "pred")
    assert not (tmp_path / "pred" / "work").exists()


def test_preprocessed_folder_refuses_an_unsafe_id(tmp_path):
    """preprocessed/<id>/ (the preprocess stage, predict's work folder, the Deploy app's shared preprocessing)."""
    from p53hcc.tools.preprocessing.run import seed_preprocessed

    with pytest.raises(InputError, match="patient_id"):
        seed_preprocessed(tmp_path / "work", "../../escaped", "ap", tmp_path / "a.nii.gz", tmp_path / "m.nii.gz",
                          {"image": np.zeros((4, 4, 4)), "mask": np.ones((4, 4, 4))}, "demo")
    assert not any(tmp_path.rglob("*.nii.gz"))


def test_radiomics_cache_and_second_reader_folders_refuse_an_unsafe_id(cohort, tmp_path):
    """radiomics' cache/<id>/ and r2_masks/<id>/ are made for the cohort's ids that preprocessed/index.csv holds:
    an index written before this check (or by hand) with an unsafe id makes nothing."""
    from p53hcc.tools.radiomics.extract import extract_cohort

    _rename(cohort, {"P000": "../../escaped"})
    out = tmp_path / "run"
    (out / "preprocessed").mkdir(parents=True)
    pd.DataFrame({"patient_id": ["../../escaped"], "phase": ["ap"], "image": ["x.nii.gz"], "mask": ["m.nii.gz"],
                  "key": ["k"]}).to_csv(out / "preprocessed" / "index.csv", index=False)
    with pytest.raises(P53hccError, match="escaped"):
        extract_cohort(cohort, out, params="demo", workers=1, progress=False)
    assert sorted(p.name for p in out.rglob("*")) == ["index.csv", "preprocessed"]


def test_gradcam_maps_and_figures_refuse_an_unsafe_id(tmp_path):
    """gradcam/<id>.npy (the maps) and gradcam/<id>.png (the figures)."""
    from p53hcc.tools.dl.gradcam import write_maps
    from p53hcc.tools.pipeline.explain import draw

    exp = SimpleNamespace(ids=["../escaped"], maps=np.zeros((1, 1, 4, 4)), units=("mc",), arm="mc", net="resnet18",
                          targets=[SimpleNamespace(warning=lambda: None, describe=lambda: "layer4")],
                          rho=np.zeros((1, 1)), differs=np.zeros((1, 1), bool), reason=np.array([[""]]),
                          images=np.zeros((1, 1, 4, 4)), masks=np.zeros((1, 1, 4, 4)), probs=np.zeros((1, 1)))
    dest = tmp_path / "g" / "gradcam"
    for write in (write_maps, draw):
        with pytest.raises(InputError, match="patient_id"):
            write(dest, exp)
    assert not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob("*.png"))


def test_deploy_scratch_folders_use_a_safe_stand_in(tmp_path, monkeypatch):
    """A DICOM PatientID cannot be renamed by the hospital: the app's one-patient cohort and predict's work folder
    get a safe stand-in, one per PatientID, and nothing is written outside the scratch folder."""
    from p53hcc.tools.deploy import combined
    from p53hcc.tools.pipeline import predict
    from p53hcc.tools.preprocessing import run

    seen = {}

    def fake_seed(out, pid, phase, *a, **k):
        seen.setdefault("seeded", []).append(patient_path(Path(out) / "preprocessed", pid))

    def fake_predict(model, cohort, out, dl_scorer=None, **k):
        ids = pd.read_csv(cohort, dtype={"patient_id": str})["patient_id"].tolist()
        seen["cohort"] = ids
        dest = Path(out) / "predictions.csv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"patient_id": ids, "probability": [0.5], "clinical": 0.5, "radiomics": 0.5,
                      "dl": dl_scorer()[ids[0]]}).to_csv(dest, index=False)
        return dest

    monkeypatch.setattr(run, "seed_preprocessed", fake_seed)
    monkeypatch.setattr(predict, "predict_cohort", fake_predict)
    monkeypatch.setattr(predict, "read_manifest", lambda _: {"threshold": 0.5, "preprocessing": {"config": {}}})
    pid = "../../12 345/x"
    result = combined.combined_result(tmp_path / "model", pid, {p: "i" for p in ("ap", "pvp", "dp")},
                                      {p: "m" for p in ("ap", "pvp", "dp")}, {"age": 60}, 0.7,
                                      preprocessed={"ap": {"image": None, "mask": None}})
    assert seen["cohort"] == [path_safe_id(pid)] and id_problem(seen["cohort"][0]) is None
    assert all(p.parent.name == "preprocessed" for p in seen["seeded"])
    assert result["components"]["dl"] == 0.7
    assert path_safe_id(pid) != path_safe_id(pid + "y") and path_safe_id("SYN0001") == "SYN0001"
