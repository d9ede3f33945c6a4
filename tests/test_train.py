"""Cross-fitting of the MC arm: out-of-fold bookkeeping, resume, frozen scoring, Grad-CAM on the trained study."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import make_tiny_cohort
from tools import train
from tools.cohort import write_datalist
from tools.errors import P53hccError

PARAMS = {"net": "resnet18", "epochs": 1, "device": "cpu", "spatial_size": 64, "n4": False, "batch_size": 4}


def _spy(calls):
    real = train._run_fold_fast

    def run(x_all, ids, items, fold, train_ids, score_ids, *args, **kwargs):
        calls.append((fold, list(train_ids), list(score_ids)))
        return real(x_all, ids, items, fold, train_ids, score_ids, *args, **kwargs)
    return run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    cohort = make_tiny_cohort(root / "cohort", n=8)
    out = root / "study"
    write_datalist(cohort, out, folds=2)
    calls: list = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "_run_fold_fast", _spy(calls))
        path = train.train_arm(cohort, out, workers=2, **PARAMS)  # two folds at a time (threads)
    return cohort, out, path, calls


def test_scores_are_out_of_fold(study):
    _cohort, out, path, calls = study
    splits = json.loads((out / "splits.json").read_text())
    scores = pd.read_parquet(path)
    assert list(scores.columns) == ["patient_id", "model", "fold", "split", "score"]
    assert set(scores["model"]) == {"mc_resnet18"} and scores["score"].between(0, 1).all()
    assert len(calls) == 3  # 2 folds + full
    for fold, train_ids, score_ids in calls:  # what each model was really fit on vs what it scored
        assert not set(train_ids) & set(score_ids)
        if fold >= 0:
            assert set(score_ids) == set(splits["folds"][fold]["val"])
            assert set(train_ids) == set(splits["folds"][fold]["train"])
    oof = scores[scores["split"] == "train"]
    assert dict(zip(oof["patient_id"], oof["fold"])) == splits["fold_of"]
    assert (scores.loc[scores["split"] != "train", "fold"] == -1).all()
    for k in (0, 1):
        assert (out / "dl" / "mc" / "resnet18" / f"fold{k}" / "model.pt").is_file()
    assert (out / "dl" / "mc" / "resnet18" / "full" / "model.pt").is_file()


def test_check_oof_catches_leak(study):
    _, out, path, _ = study
    splits = json.loads((out / "splits.json").read_text())
    scores = pd.read_parquet(path)
    train.check_oof(scores, splits)
    leaked = scores.copy()
    i = leaked.index[leaked["fold"] == 0][0]
    leaked.loc[i, "fold"] = 1  # now "scored by fold 1", whose model trained on this patient
    with pytest.raises(P53hccError, match="trained on"):
        train.check_oof(leaked, splits)
    with pytest.raises(P53hccError):
        train.check_oof(scores.assign(fold=np.where(scores["split"] == "train", scores["fold"], 0)), splits)


def test_frozen_model_reproduces_validation_scores(study, tmp_path):
    cohort, out, path, _ = study
    scores = pd.read_parquet(path).set_index("patient_id")
    frozen = train.predict_frozen(out / "dl" / "mc" / "resnet18" / "full", cohort, tmp_path, net="resnet18")
    val = scores[scores["split"] == "validation"]["score"]
    assert np.allclose(frozen.loc[val.index].to_numpy(), val.to_numpy(), atol=1e-5)


def test_gradcam_command_on_trained_study(study):
    from tools.gradcam import gradcam_command

    _, out, _, _ = study
    dest = gradcam_command(out, arm="mc", net="resnet18", n=2)
    sanity = pd.read_csv(f"{dest}/sanity.csv")
    assert len(sanity) == 2 and {"patient_id", "spearman_rho", "differs"} <= set(sanity.columns)
    for pid in sanity["patient_id"]:
        m = np.load(f"{dest}/{pid}.npy")
        assert m.shape == (64, 64) and np.isfinite(m).all()
        assert (out / "figures" / "gradcam" / "mc_resnet18" / f"{pid}.png").stat().st_size > 1000
    with pytest.raises(P53hccError, match="not in datalist"):
        gradcam_command(out, net="resnet18", patients="NOPE")


def test_datalist_parts(study):
    _, out, _, _ = study
    dl = out / "datalist.json"
    tr, va = train.datalist_part(dl, "train", 0), train.datalist_part(dl, "val", 0)
    assert {d["fold"] for d in tr} == {1} and {d["fold"] for d in va} == {0}
    assert len(train.datalist_part(dl, "train", -1)) == 6 and len(train.datalist_part(dl, "val", -1)) == 2
    w = train.class_weights([{"label": 0}] * 3 + [{"label": 1}])
    assert np.allclose(w.numpy(), [4 / 6, 4 / 2])


def test_resume_skips_finished_folds(study, monkeypatch):
    """Runs last in this module: it replaces fold 1 with a stub model."""
    import torch

    cohort, out, _path, _ = study
    root = out / "dl" / "mc" / "resnet18"
    before = {k: (root / k / "model.pt").stat().st_mtime_ns for k in ("fold0", "fold1", "full")}
    calls: list = []

    def fake(x_all, ids, items, fold, train_ids, score_ids, *args, **kwargs):  # records, trains nothing
        calls.append((fold, list(train_ids), list(score_ids)))
        return torch.nn.Linear(1, 1), np.full(len(score_ids), 0.5), pd.DataFrame({"epoch": [1]})
    monkeypatch.setattr(train, "_run_fold_fast", fake)
    train.train_arm(cohort, out, **PARAMS)
    assert calls == []
    (root / "fold1" / "done.json").unlink()
    train.train_arm(cohort, out, **PARAMS)
    assert [c[0] for c in calls] == [1]
    assert (root / "fold0" / "model.pt").stat().st_mtime_ns == before["fold0"]
    assert (root / "fold1" / "model.pt").stat().st_mtime_ns != before["fold1"]
