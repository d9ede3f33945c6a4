"""The DL arms can read the study's preprocessed volumes (N4 once per patient-phase) instead of raw images."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import make_tiny_cohort
from tools import train
from tools.cohort import write_datalist
from tools.errors import P53hccError
from tools.preprocess import preprocess_cohort, preprocessed_items

PARAMS = {"epochs": 1, "device": "cpu", "spatial_size": 32, "batch_size": 4, "source": "preprocessed"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    cohort = make_tiny_cohort(root / "cohort", n=24)
    out = root / "study"
    write_datalist(cohort, out, folds=2)
    preprocess_cohort(cohort, out, workers=1, progress=False)
    return cohort, out


def test_items_point_at_preprocessed_volumes(study):
    cohort, out = study
    items = train.cohort_items(cohort)
    mapped = preprocessed_items(items, out)
    for raw, new in zip(items, mapped):
        for phase in ("ap", "pvp", "dp"):
            assert "preprocessed" in new[phase] and new[phase] != raw[phase]
            assert new[f"{phase}_mask"].endswith(f"{phase}_mask.nii.gz")
    ff = preprocessed_items([{"patient_id": items[0]["patient_id"], "phase": "dp", "image": "x", "mask": "y"}], out)
    assert ff[0]["image"].endswith("dp.nii.gz")
    with pytest.raises(P53hccError, match="patient NOPE"):
        preprocessed_items([{"patient_id": "NOPE", "ap": "x", "ap_mask": "y"}], out)


def test_source_preprocessed_turns_n4_off_and_bundle_engine_refuses():
    assert train._params(None, {"source": "preprocessed"})["n4"] is False
    with pytest.raises(P53hccError, match="unknown source"):
        train._params(None, {"source": "elsewhere"})


def test_both_arms_train_from_preprocessed_volumes(study, monkeypatch):
    cohort, out = study
    seen: list[str] = []
    real = train.roi_tensors

    def spy(items, *args, **kwargs):
        seen.extend(items[0][k] for k in ("ap", "image") if k in items[0])
        return real(items, *args, **kwargs)

    monkeypatch.setattr(train, "roi_tensors", spy)
    scores = pd.read_parquet(train.train_arm(cohort, out, arm="mc", net="resnet18", **PARAMS))
    assert len(scores) == 24 and seen and all("preprocessed" in p for p in seen)
    ff = train.train_arm(cohort, out, arm="ff", net="resnet18", **PARAMS)
    assert len(pd.read_parquet(ff / "scores.parquet")) == 24
    with pytest.raises(P53hccError, match="engine 'bundle'"):
        train.train_arm(cohort, out, arm="mc", net="resnet18", engine="bundle", **PARAMS)
