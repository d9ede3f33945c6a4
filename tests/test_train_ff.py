"""Cross-fitting of the FF arm (tools.train_ff): files, fold bookkeeping, no leakage, resume."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"spatial_size": 32, "n4": False, "amp": False, "batch_size": 8}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO))
    from benchmarks.train_sweep import tiny_cohort

    return tiny_cohort(tmp_path_factory.mktemp("ffarm") / "data", n=16, n_validation=4)


@pytest.fixture
def fake_crops(monkeypatch):
    """Random 32x32 crops instead of the image pipeline (tested in test_bundle_ff): fast, still real CNNs."""
    import tools.train_ff as tf

    def crops(study, items, phase, params, bundle_dir=None):
        g = torch.Generator().manual_seed(len(phase))
        return torch.randn(len(items), 1, 32, 32, generator=g)

    monkeypatch.setattr(tf, "phase_crops", crops)


class TinyNet(torch.nn.Module):
    """A 6-feature CNN with the ResNet interface (``fc`` classifier) so CPU tests train in milliseconds."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, stride=4), torch.nn.BatchNorm2d(6),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture
def tiny_net(monkeypatch):
    """Replace the network factory (the six real networks are tested in test_bundle_ff)."""
    import tools.nets

    monkeypatch.setattr(tools.nets, "build_net", lambda *a, **k: TinyNet())


def test_phase_crops_are_one_channel_per_patient(cohort, tmp_path):
    from tools.cohort import write_datalist
    from tools.train_ff import phase_crops, phase_datalist

    write_datalist(cohort, tmp_path, folds=2)
    items = phase_datalist(tmp_path / "datalist.json", "all", -1, "ap")[:4]
    x = phase_crops(tmp_path, items, "ap", {"spatial_size": 32, "margin": 10, "pixdim": 1.0, "n4": False})
    assert x.shape == (4, 1, 32, 32)
    assert torch.allclose(x.mean(dim=(1, 2, 3)), torch.zeros(4), atol=0.2)  # z-scored crops
    again = phase_crops(tmp_path, items, "ap", {"spatial_size": 32, "margin": 10, "pixdim": 1.0, "n4": False})
    assert torch.equal(x, again)  # cached
    assert sorted({d["image"].rsplit("_", 1)[-1] for d in items}) == ["ap.nii.gz"]


def test_crossfit_files_bookkeeping_and_resume(cohort, tmp_path, fake_crops, tiny_net, monkeypatch):
    import tools.train as tr
    from tools.cohort import write_datalist
    from tools.train_ff import train_ff_arm

    seen: list[int] = []
    real_fit = tr.fit_fast

    def spy(x_tr, y_tr, *args, **kwargs):
        seen.append(len(x_tr))
        return real_fit(x_tr, y_tr, *args, **kwargs)

    monkeypatch.setattr(tr, "fit_fast", spy)
    write_datalist(cohort, tmp_path, folds=2)
    arm = train_ff_arm(cohort, tmp_path, net="resnet18", epochs=1, device="cpu", folds=None,
                       head_kwargs={"n_components": 4, "lasso_C": 1.0}, **PARAMS)
    splits = json.loads((tmp_path / "splits.json").read_text())
    n_train = len(splits["fold_of"])
    # every phase CNN of fold k trained on exactly the other folds' patients; full models on all of them
    expected = [n_train - len(f["val"]) for f in splits["folds"] for _ in range(3)] + [n_train] * 3
    assert seen == expected
    for k in (0, 1):
        for phase in ("ap", "pvp", "dp"):
            assert (arm / f"fold{k}" / phase / "model.pt").is_file()
    assert (arm / "full" / "dp" / "model.pt").is_file()

    feats = pd.read_parquet(arm / "features.parquet")
    assert list(feats.columns[:3]) == ["patient_id", "phase", "fold"] and feats.shape[1] == 3 + 6
    assert len(feats) == 3 * 3 * 16 and not feats.duplicated(["patient_id", "phase", "fold"]).any()

    scores = pd.read_parquet(arm / "scores.parquet")
    assert list(scores.columns) == ["patient_id", "model", "fold", "split", "score"]
    assert (scores.model == "ff_resnet18").all() and scores.score.between(0, 1).all()
    tr.check_oof(scores, splits)  # each training patient scored once, by the fold that held it out
    assert set(scores.loc[scores.fold == -1, "split"]) == {"validation"}
    lasso = json.loads((arm / "lasso.json").read_text())
    assert set(lasso["n_selected"]) == {"fold0", "fold1", "full"}
    from tools.train_ff import lasso_table

    table = lasso_table(tmp_path)
    assert table.net.tolist() == ["resnet18"] and table.paper_n_selected.tolist() == [18]
    assert table.n_selected_full.tolist() == [lasso["n_selected"]["full"]]

    # resume: nothing retrains; a removed marker retrains just that model
    seen.clear()
    train_ff_arm(cohort, tmp_path, net="resnet18", epochs=1, device="cpu",
                 head_kwargs={"n_components": 4, "lasso_C": 1.0}, **PARAMS)
    assert seen == []
    (arm / "fold1" / "pvp" / "done.json").unlink()
    train_ff_arm(cohort, tmp_path, net="resnet18", epochs=1, device="cpu",
                 head_kwargs={"n_components": 4, "lasso_C": 1.0}, **PARAMS)
    assert seen == [n_train - len(splits["folds"][1]["val"])]
    np.testing.assert_allclose(pd.read_parquet(arm / "scores.parquet").score.to_numpy() >= 0, True)


def test_partial_folds_defer_the_head(cohort, tmp_path, fake_crops, tiny_net):
    from tools.train_ff import train_ff_arm

    arm = train_ff_arm(cohort, tmp_path, net="resnet18", epochs=1, device="cpu", folds=[0], phases=("ap",),
                       **PARAMS)
    assert (arm / "fold0" / "ap" / "done.json").is_file()
    assert not (arm / "scores.parquet").exists() and not (arm / "full").exists()


def test_train_arm_delegates_ff(cohort, tmp_path, fake_crops, tiny_net):
    from tools.train import train_arm

    arm = train_arm(cohort, tmp_path, arm="ff", net="resnet18", epochs=1, device="cpu", folds=[-1],
                    phases=("dp",), **PARAMS)
    assert Path(arm) == tmp_path / "dl" / "ff" / "resnet18"
    assert (Path(arm) / "full" / "dp" / "model.pt").is_file()


def test_concurrent_phase_models_match_sequential(cohort, tmp_path, fake_crops, tiny_net):
    """workers=2 (threads; one CUDA stream each on a GPU) trains the same models as one at a time."""
    from tools.cohort import write_datalist
    from tools.train_ff import train_ff_arm

    feats = []
    for workers in (1, 2):
        study = tmp_path / f"w{workers}"
        write_datalist(cohort, study, folds=2)
        arm = train_ff_arm(cohort, study, net="resnet18", epochs=1, device="cpu", folds=[0], phases=("ap", "dp"),
                           workers=workers, **PARAMS)
        feats.append(pd.concat([pd.read_parquet(arm / "fold0" / p / "features.parquet") for p in ("ap", "dp")]))
    pd.testing.assert_frame_equal(feats[0], feats[1])
