"""Both DL arms with real networks on the study's preprocessed volumes: frozen scoring of new patients reproduces
the study's scores, and Grad-CAM explains each arm on its own crops."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from p53hcc.tools.cohort.splits import cohort_items, write_datalist
from p53hcc.tools.dl import arms
from p53hcc.tools.dl.crossfit import train_arm
from p53hcc.tools.dl.frozen import predict_frozen
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.pipeline.explain import gradcam_command, gradcam_frozen
from p53hcc.tools.preprocessing.run import preprocess_cohort, preprocessed_items
from p53hcc.tools.schema import PHASES
from tests.conftest import make_tiny_cohort

PARAMS = {"net": "resnet18", "epochs": 1, "device": "cpu", "spatial_size": 32, "batch_size": 4,
          "source": "preprocessed"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both arms (resnet18, 1 epoch) on 24 patients; the 6 validation patients as a 'new' cohort preprocessed on
    its own into ``root/work``, and each arm's full-cohort folder copied as a frozen model would be."""
    root = tmp_path_factory.mktemp("frozen")
    cohort = make_tiny_cohort(root / "cohort", n=24)
    out = root / "study"
    write_datalist(cohort, out, folds=2)
    preprocess_cohort(cohort, out, params="demo", workers=1, progress=False)
    crops_from: list[str] = []
    real = arms.cached_crops
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(arms, "cached_crops", lambda items, *a, **k: crops_from.extend(
            d.get("image") or d["ap"] for d in items) or real(items, *a, **k))
        mc = train_arm(cohort, out, arm="mc", **PARAMS)
        # a fixed, mild LASSO penalty: with 18 patients and 1 epoch the CV-chosen one may keep nothing, and a
        # constant (prevalence-only) head would make the reproduction checks below vacuous
        ff = train_arm(cohort, out, arm="ff", head_kwargs={"lasso_C": 1.0}, **PARAMS)
    df = pd.read_csv(cohort)
    new = cohort.parent / "new.csv"  # same folder, so the relative image paths still resolve
    df[df["split"] == "validation"].assign(split="external").to_csv(new, index=False)
    frozen = {}
    for arm in ("mc", "ff"):
        frozen[arm] = root / "model" / arm / "full"
        shutil.copytree(out / "dl" / arm / "resnet18" / "full", frozen[arm])  # must be self-contained
    preprocess_cohort(new, root / "work", params="demo", workers=1, progress=False)  # as predict_cohort does
    return {"cohort": cohort, "out": out, "scores": {"mc": mc, "ff": ff}, "new": new, "frozen": frozen,
            "root": root, "crops_from": crops_from}


def test_arms_read_the_preprocessed_volumes(trained):
    assert trained["crops_from"] and all("preprocessed" in p for p in trained["crops_from"])
    items = cohort_items(trained["cohort"])
    mapped = preprocessed_items(items, trained["out"])
    for raw, new in zip(items, mapped):
        for phase in PHASES:
            assert "preprocessed" in new[phase] and new[phase] != raw[phase]
            assert new[f"{phase}_mask"].endswith(f"{phase}_mask.nii.gz")
    with pytest.raises(P53hccError, match="patient NOPE"):
        preprocessed_items([{"patient_id": "NOPE", "ap": "x", "ap_mask": "y"}], trained["out"])


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_frozen_model_reproduces_the_study_scores_of_new_patients(trained, arm):
    got = predict_frozen(trained["frozen"][arm], trained["new"], trained["root"] / "work", arm=arm, device="cpu")
    study = pd.read_parquet(trained["scores"][arm]).set_index("patient_id")
    ids = pd.read_csv(trained["new"], dtype={"patient_id": str})["patient_id"]
    assert list(got.index) == list(ids) and got.name == "score"
    expected = study.loc[ids]
    assert (expected["fold"] == -1).all() and (expected["split"] == "validation").all()
    np.testing.assert_allclose(got.to_numpy(), expected["score"].to_numpy(), rtol=1e-5)
    assert got.nunique() > 1  # not a constant model, so the comparison means something


def test_predicting_into_a_used_folder_scores_the_new_images(trained, tmp_path):
    """Crops were keyed by patient ids: predicting again after fixing an image returned the old image's score."""
    cohort = tmp_path / "cohort"
    shutil.copytree(trained["cohort"].parent, cohort)
    new = cohort / "new.csv"
    pid = pd.read_csv(new, dtype={"patient_id": str})["patient_id"].iloc[0]

    def predict(work):
        preprocess_cohort(new, work, params="demo", workers=1, progress=False)
        return predict_frozen(trained["frozen"]["mc"], new, work, arm="mc", device="cpu")

    before = predict(tmp_path / "work")
    images = cohort / "images"
    for phase in PHASES:  # another patient's images under this patient's names
        shutil.copy(images / f"P000_{phase}.nii.gz", images / f"{pid}_{phase}.nii.gz")
    again, fresh = predict(tmp_path / "work"), predict(tmp_path / "fresh")
    pd.testing.assert_series_equal(again, fresh)
    assert again[pid] != before[pid]
    pd.testing.assert_series_equal(again.drop(pid), before.drop(pid))


def test_frozen_ff_without_its_head_is_a_clear_error(trained, tmp_path):
    broken = tmp_path / "full"
    shutil.copytree(trained["frozen"]["ff"], broken)
    (broken / "head.joblib").unlink()
    with pytest.raises(P53hccError, match="head.joblib"):
        predict_frozen(broken, trained["new"], trained["root"] / "work", arm="ff")
    (broken / "pvp" / "model.pt").unlink()
    with pytest.raises(P53hccError, match="pvp"):
        gradcam_frozen(broken, trained["new"], tmp_path / "cams", arm="ff", work=trained["root"] / "work")


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_gradcam_of_the_study_explains_each_arm_on_its_own_crops(trained, arm):
    dest = gradcam_command(trained["out"], arm=arm, net="resnet18", n=2)
    sanity = pd.read_csv(f"{dest}/sanity.csv", dtype={"patient_id": str})
    pids = sanity["patient_id"].unique()
    assert len(pids) == 2 and {"patient_id", "spearman_rho", "differs"} <= set(sanity.columns)
    shape = (32, 32) if arm == "mc" else (3, 32, 32)  # FF: one map per phase network
    for pid in pids:
        m = np.load(f"{dest}/{pid}.npy")
        assert m.shape == shape and np.isfinite(m).all()
        assert (trained["out"] / "figures" / "gradcam" / f"{arm}_resnet18" / f"{pid}.png").stat().st_size > 1000
    if arm == "ff":
        assert set(sanity["phase"]) == set(PHASES)
        assert (trained["out"] / "dl" / "ff" / "slices").is_dir()  # the FF arm's crops, not the MC stack
    meta = json.loads(Path(dest, "gradcam.json").read_text())
    layer = next(iter(meta["layers"].values()))  # at the 32 px input the 1x1 layer4 is never used
    assert (layer["name"], layer["cells"], layer["input_size"], layer["chosen_by"]) == ("layer1", [8, 8], [32, 32],
                                                                                         "auto")
    captions = json.loads(Path(dest, "captions.json").read_text())
    assert set(captions) == {f"{pid}.png" for pid in pids}
    for text in captions.values():
        assert "layer layer1 (8x8 cells) at 32x32 px input" in text and "Spearman rho" in text
    with pytest.raises(P53hccError, match="not in datalist"):
        gradcam_command(trained["out"], arm=arm, net="resnet18", patients="NOPE")


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_mask_crops_outline_the_tumour_inside_each_crop(trained, arm):
    spec, params = arms.get_arm(arm), arms.read_config(trained["out"] / "dl" / arm / "resnet18" / "full")
    items = preprocessed_items(cohort_items(trained["cohort"])[:3], trained["out"])
    for unit in spec.units:
        x, m = spec.crops(trained["out"], items, params, unit), spec.mask_crops(trained["out"], items, params, unit)
        assert m.shape == x.shape and float(m.min()) >= 0 and float(m.max()) <= 1
        assert (m.amax(dim=(-2, -1)) > 0.99).all()  # every phase's own tumour is in its crop
        border = torch.cat([m[..., 0, :], m[..., -1, :], m[..., :, 0], m[..., :, -1]], dim=-1)
        assert float(border.max()) < 0.5  # bbox + 10 px: the tumour never touches the crop's edge
        assert torch.equal(x, spec.crops(trained["out"], items, params, unit))  # the networks' crops unchanged
        again = spec.mask_crops(trained["out"], items, params, unit)  # from the stacked cache this time
        assert type(again) is torch.Tensor and torch.equal(again, m)


def test_gradcam_of_a_frozen_ff_model_gives_one_map_per_phase(trained):
    two = trained["new"].parent / "two.csv"  # two patients keep this CPU test short
    pd.read_csv(trained["new"]).head(2).to_csv(two, index=False)
    dest = gradcam_frozen(trained["frozen"]["ff"], two, trained["root"] / "cams", arm="ff",
                          work=trained["root"] / "work")
    ids = pd.read_csv(two, dtype={"patient_id": str})["patient_id"]
    m = np.load(dest / f"{ids.iloc[0]}.npy")
    assert m.shape == (3, 32, 32) and np.isfinite(m).all() and (m >= 0).all() and (m <= 1).all()
    sanity = pd.read_csv(dest / "sanity.csv", dtype={"patient_id": str})
    assert len(sanity) == 3 * len(ids) and set(sanity["phase"]) == set(PHASES)


def test_gradcam_runs_at_the_networks_thread_count_not_the_machines(trained, monkeypatch, tmp_path):
    """Like scoring, Grad-CAM of a frozen model runs at the thread count the study used (``cpu_threads``), so a
    bigger machine gives the same maps; the process's own setting is restored afterwards."""
    from p53hcc.tools.dl import gradcam

    seen, real = [], gradcam.gradcam_maps

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(gradcam, "gradcam_maps", recording)
    one = trained["new"].parent / "one.csv"
    pd.read_csv(trained["new"]).head(1).to_csv(one, index=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the machine's default, more than the study's one thread
    try:
        gradcam_frozen(trained["frozen"]["mc"], one, tmp_path / "cams", arm="mc", work=trained["root"] / "work")
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
