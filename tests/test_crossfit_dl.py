"""The cross-fitting skeleton of both DL arms: which patients each network trains on, out-of-fold bookkeeping,
resume, partial runs and concurrent units. Crops are replaced by value-coded tensors (the crop value says which
patient it is) and the network by a tiny CNN, so every fit is checked patient by patient in seconds; the real
crops and networks are tested in test_frozen_dl.py and the bundle tests."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from p53hcc.tools.cohort.splits import select_items, write_datalist
from p53hcc.tools.dl import arms, crossfit
from p53hcc.tools.errors import P53hccError
from tests.conftest import TinyNet, make_tiny_cohort

PARAMS = {"net": "resnet18", "epochs": 1, "device": "cpu", "spatial_size": 16, "n4": False, "precision": "fp32",
          "batch_size": 4}
HEAD = {"n_components": 2, "lasso_C": 1.0}


@pytest.fixture
def fake(monkeypatch):
    """Value-coded crops (patient i's crop is i + noise in every pixel) and a tiny network; records each fit."""
    fits: list[dict] = []

    def crops(self, study, items, params, unit):
        g = torch.Generator().manual_seed(7)
        channels = 3 if unit is None else 1
        x = torch.arange(len(items), dtype=torch.float32)[:, None, None, None] * 10
        return x + 0.1 * torch.randn(len(items), channels, 16, 16, generator=g)

    real_fit = crossfit.fit

    def decode(x: torch.Tensor) -> set[int]:
        return set(torch.round(x.mean(dim=(1, 2, 3)) / 10).long().tolist())

    def spy(x_tr, y_tr, net, params, device=None, x_va=None, y_va=None, desc="", **kw):
        fits.append({"desc": desc, "train": decode(x_tr), "held": decode(x_va) if x_va is not None else set()})
        return real_fit(x_tr, y_tr, net, params, device, x_va, y_va, desc=desc, **kw)

    monkeypatch.setattr(arms.MCArm, "crops", crops)
    monkeypatch.setattr(arms.FFArm, "crops", crops)
    monkeypatch.setattr("p53hcc.tools.dl.engine.build_net", lambda name, in_channels=3, **kw: TinyNet(in_channels))
    monkeypatch.setattr("p53hcc.tools.dl.nets.build_net", lambda name, in_channels=3, **kw: TinyNet(in_channels))
    monkeypatch.setattr(crossfit, "fit", spy)
    return fits


@pytest.fixture
def study(tmp_path):
    cohort = make_tiny_cohort(tmp_path / "cohort", n=16)
    write_datalist(cohort, tmp_path / "study", folds=2)
    return cohort, tmp_path / "study"


def _index(out) -> dict[str, int]:
    return {d["patient_id"]: i for i, d in enumerate(select_items(out / "datalist.json", "all"))}


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_each_network_trains_on_its_folds_and_scores_out_of_fold(arm, study, fake):
    cohort, out = study
    path = crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, **PARAMS)
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    index = _index(out)
    units = 1 if arm == "mc" else 3
    assert len(fake) == units * (len(splits["folds"]) + 1)
    for fold in splits["folds"]:  # every unit of fold k: trained on the other folds, monitored on fold k only
        mine = [f for f in fake if f["desc"].endswith(f"fold {fold['fold']}")]
        assert len(mine) == units
        for f in mine:
            assert f["train"] == {index[p] for p in fold["train"]}
            assert f["held"] == {index[p] for p in fold["val"]}
    full = [f for f in fake if f["desc"].endswith("fold -1")]
    assert all(f["train"] == {index[p] for p in splits["fold_of"]} and f["held"] == set() for f in full)
    scores = pd.read_parquet(path)
    assert list(scores.columns) == ["patient_id", "model", "fold", "split", "score"]
    assert set(scores["model"]) == {f"{arm}_resnet18"} and scores["score"].between(0, 1).all()
    crossfit.check_oof(scores, splits)
    assert dict(zip(*scores[scores["split"] == "train"][["patient_id", "fold"]].T.values)) == splits["fold_of"]
    assert (scores.loc[scores["split"] != "train", "fold"] == -1).all()
    arm_dir = out / "dl" / arm / "resnet18"
    for k in ("fold0", "fold1", "full"):
        assert json.loads((arm_dir / k / "config.json").read_text(encoding="utf-8"))["net"] == "resnet18"
    if arm == "ff":
        assert (arm_dir / "full" / "head.joblib").is_file() and (arm_dir / "features.parquet").is_file()
        assert set(json.loads((arm_dir / "lasso.json").read_text(encoding="utf-8"))["n_selected"]) == {"fold0", "fold1", "full"}


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_resume_retrains_only_unfinished_networks(arm, study, fake):
    cohort, out = study
    crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, **PARAMS)
    arm_dir = out / "dl" / arm / "resnet18"
    before = (arm_dir / "scores.parquet").read_bytes()
    fake.clear()
    crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, **PARAMS)
    assert fake == []
    unit = arm_dir / "fold1" if arm == "mc" else arm_dir / "fold1" / "pvp"
    (unit / "done.json").unlink()
    crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, **PARAMS)
    assert [f["desc"] for f in fake] == [f"{arm}_resnet18{'' if arm == 'mc' else ' pvp'} fold 1"]
    assert (arm_dir / "scores.parquet").read_bytes() == before  # same seed, same network, same scores
    fake.clear()
    crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, **{**PARAMS, "epochs": 2})  # a new parameter
    assert len(fake) == (3 if arm == "mc" else 9)


def test_a_replaced_image_retrains_every_network(study, fake):
    """done.json was keyed by parameters and splits only: a fixed image kept networks trained on the old one."""
    cohort, out = study
    crossfit.train_arm(cohort, out, arm="mc", **PARAMS)
    fake.clear()
    image = cohort.parent / "images" / "P003_ap.nii.gz"
    image.write_bytes((cohort.parent / "images" / "P004_ap.nii.gz").read_bytes())
    crossfit.train_arm(cohort, out, arm="mc", **PARAMS)
    assert len(fake) == 3  # both folds and the full-cohort network saw P003 (in training or in scoring)
    fake.clear()
    crossfit.train_arm(cohort, out, arm="mc", **PARAMS)
    assert fake == []


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_pair_units_train_outside_both_folds_and_give_inner_scores(arm, tmp_path, fake):
    """inner=True adds one network per pair of folds, fitted without either fold; a study that already has its
    fold networks trains only the pairs; the inner scores of outer fold k never come from fold k's patients."""
    cohort = make_tiny_cohort(tmp_path / "cohort", n=24)
    out = tmp_path / "study"
    write_datalist(cohort, out, folds=3)
    crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, **PARAMS)
    arm_dir = out / "dl" / arm / "resnet18"
    assert not (arm_dir / "inner_scores.parquet").exists()
    fake.clear()
    crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, inner=True, **PARAMS)
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    index, folds = _index(out), {f["fold"]: set(f["val"]) for f in splits["folds"]}
    units = 1 if arm == "mc" else 3
    assert len(fake) == units * 3  # pairs {0,1}, {0,2}, {1,2} only: the fold networks were done
    for k, m in ((0, 1), (0, 2), (1, 2)):
        mine = [f for f in fake if f["desc"].endswith(f"folds {k}+{m}")]
        assert len(mine) == units
        for f in mine:
            assert f["train"] == {index[p] for j, ids in folds.items() if j not in (k, m) for p in ids}
            assert f["held"] == {index[p] for p in folds[k] | folds[m]}
    assert not list(arm_dir.glob("pair*/**/model.pt")) and list(arm_dir.glob("pair0-1/**/done.json"))
    inner = pd.read_parquet(arm_dir / "inner_scores.parquet")
    assert list(inner.columns) == ["outer", "patient_id", "score"] and inner["score"].between(0, 1).all()
    crossfit.check_inner(inner, splits)
    for k, ids in folds.items():
        assert set(inner.loc[inner["outer"] == k, "patient_id"]) == set(splits["fold_of"]) - ids
    leaked = inner.copy()
    leaked.loc[leaked.index[0], "outer"] = splits["fold_of"][leaked.loc[leaked.index[0], "patient_id"]]
    with pytest.raises(P53hccError, match="own patients"):
        crossfit.check_inner(leaked, splits)
    fake.clear()
    crossfit.train_arm(cohort, out, arm=arm, head_kwargs=HEAD, **PARAMS)  # nesting switched off: file removed
    assert fake == [] and not (arm_dir / "inner_scores.parquet").exists()


def test_pair_units_need_three_folds(study):
    cohort, out = study
    with pytest.raises(P53hccError, match="at least 3 folds"):
        crossfit.train_arm(cohort, out, arm="mc", inner=True, **PARAMS)


def test_partial_folds_defer_the_scores(study, fake):
    cohort, out = study
    arm_dir = crossfit.train_arm(cohort, out, arm="ff", folds=[0], head_kwargs=HEAD, **PARAMS)
    assert arm_dir == out / "dl" / "ff" / "resnet18"
    assert (arm_dir / "fold0" / "ap" / "done.json").is_file() and not (arm_dir / "full").exists()
    assert not (arm_dir / "scores.parquet").exists()


def test_concurrent_networks_match_sequential(tmp_path, fake):
    """workers=2 (threads; one CUDA stream each on a GPU) trains the same networks as one at a time."""
    cohort = make_tiny_cohort(tmp_path / "cohort", n=16)
    scores = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        write_datalist(cohort, out, folds=2)
        scores.append(pd.read_parquet(crossfit.train_arm(cohort, out, arm="mc", workers=workers, **PARAMS)))
    pd.testing.assert_frame_equal(scores[0], scores[1])


def test_check_oof_catches_a_leak(study, fake):
    cohort, out = study
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    scores = pd.read_parquet(crossfit.train_arm(cohort, out, arm="mc", **PARAMS))
    leaked = scores.copy()
    leaked.loc[leaked.index[leaked["fold"] == 0][0], "fold"] = 1  # "scored by fold 1", which trained on it
    with pytest.raises(P53hccError, match="trained on"):
        crossfit.check_oof(leaked, splits)
    with pytest.raises(P53hccError):
        crossfit.check_oof(scores.assign(fold=np.where(scores["split"] == "train", scores["fold"], 0)), splits)
    with pytest.raises(P53hccError, match="full-cohort"):
        crossfit.check_oof(pd.concat([scores, scores[scores["fold"] == 0].assign(fold=-1)]), splits)


def test_bad_arm_engine_and_source_are_named(study):
    cohort, out = study
    with pytest.raises(P53hccError, match="unknown arm"):
        crossfit.train_arm(cohort, out, arm="xx", **PARAMS)
    with pytest.raises(P53hccError, match="unknown engine"):
        crossfit.train_arm(cohort, out, engine="slow", **PARAMS)
    with pytest.raises(P53hccError, match="engine 'bundle'"):
        crossfit.train_arm(cohort, out, engine="bundle", source="preprocessed", **PARAMS)
    with pytest.raises(P53hccError, match="unknown network"):
        crossfit.train_arm(cohort, out, **{**PARAMS, "net": "vgg16"})
