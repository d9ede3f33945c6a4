"""Frozen FF model: the saved full-cohort head + phase CNNs reproduce the study's FF scores of new patients."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_tiny_cohort
from tools import train
from tools.cohort import write_datalist
from tools.errors import P53hccError
from tools.preprocess import preprocess_cohort

PARAMS = {"epochs": 1, "device": "cpu", "spatial_size": 32, "batch_size": 4, "source": "preprocessed"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """FF arm (resnet18, 1 epoch) trained on 18 patients; a 'new' cohort CSV of the 6 validation patients,
    preprocessed on its own into ``root/work``."""
    root = tmp_path_factory.mktemp("ffpred")
    cohort = make_tiny_cohort(root / "cohort", n=24)
    out = root / "study"
    write_datalist(cohort, out, folds=2)
    preprocess_cohort(cohort, out, workers=1, progress=False)
    # a fixed, mild LASSO penalty: with 18 patients and 1 epoch the CV-chosen one may keep nothing, and a constant
    # (prevalence-only) head would make the reproduction check below vacuous
    arm = train.train_arm(cohort, out, arm="ff", net="resnet18", head_kwargs={"lasso_C": 1.0}, **PARAMS)
    df = pd.read_csv(cohort)
    new = cohort.parent / "new.csv"  # same folder, so the relative image paths still resolve
    df[df["split"] == "validation"].assign(split="external").to_csv(new, index=False)
    frozen = root / "model" / "full"
    shutil.copytree(arm / "full", frozen)  # what freeze_model copies: the frozen folder must be self-contained
    preprocess_cohort(new, root / "work", workers=1, progress=False)  # as predict_cohort does, in a fresh folder
    return arm, new, frozen, root


def test_full_head_is_saved_next_to_the_phase_models(trained):
    arm, _, frozen, _ = trained
    assert (arm / "full" / "head.joblib").is_file()
    for phase in ("ap", "pvp", "dp"):
        assert (frozen / phase / "model.pt").is_file()
    assert (frozen / "config.json").is_file()


def test_predict_frozen_reproduces_study_ff_scores(trained):
    arm, new, frozen, root = trained
    got = train.predict_frozen(frozen, new, root / "work", arm="ff", net="resnet18", device="cpu")
    study = pd.read_parquet(arm / "scores.parquet").set_index("patient_id")
    ids = pd.read_csv(new, dtype={"patient_id": str})["patient_id"]
    assert list(got.index) == list(ids) and got.name == "score"
    expected = study.loc[ids]
    assert (expected["fold"] == -1).all() and (expected["split"] == "validation").all()
    np.testing.assert_allclose(got.to_numpy(), expected["score"].to_numpy(), rtol=1e-5)
    assert got.nunique() > 1  # not a constant (prevalence-only) head, so the comparison means something


def test_missing_head_is_a_clear_error(trained, tmp_path):
    _, new, frozen, root = trained
    broken = tmp_path / "full"
    shutil.copytree(frozen, broken)
    (broken / "head.joblib").unlink()
    with pytest.raises(P53hccError, match="head.joblib"):
        train.predict_frozen(broken, new, root / "work", arm="ff", net="resnet18")


def test_gradcam_frozen_ff_gives_one_map_per_phase(trained):
    from tools.gradcam import gradcam_frozen

    _, new, frozen, root = trained
    two = new.parent / "two.csv"  # two patients keep this CPU test short
    pd.read_csv(new).head(2).to_csv(two, index=False)
    dest = gradcam_frozen(frozen, two, root / "cams", arm="ff", net="resnet18", work=root / "work")
    ids = pd.read_csv(two, dtype={"patient_id": str})["patient_id"]
    m = np.load(dest / f"{ids.iloc[0]}.npy")
    assert m.shape == (3, 32, 32) and np.isfinite(m).all() and (m >= 0).all() and (m <= 1).all()
    assert (dest / f"{ids.iloc[0]}.png").stat().st_size > 1000
    sanity = pd.read_csv(dest / "sanity.csv", dtype={"patient_id": str})
    assert len(sanity) == 3 * len(ids) and set(sanity["phase"]) == {"ap", "pvp", "dp"}
