"""The bundle's train.json is the training recipe of both engines: an edited copy (SGD instead of AdamW, another
loss weighting, no augmentation) is what the fast engine and ``--engine bundle`` instantiate, what each network's
recipe.json records, and what the study's settings and resume keys hold."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from p53hcc.tools.cohort.splits import write_datalist
from p53hcc.tools.dl import bundle as bundle_module
from p53hcc.tools.schema import ARMS
from tests.conftest import TinyNet, make_tiny_cohort

CREATED: list[tuple[str, object]] = []


class RecordingSGD(torch.optim.SGD):
    """SGD that records its settings when a config instantiates it."""

    def __init__(self, params, **kwargs):
        CREATED.append(("optimizer", dict(kwargs)))
        super().__init__(params, **kwargs)


class RecordingLoss(torch.nn.CrossEntropyLoss):
    """Cross-entropy that records the class weights a config gives it."""

    def __init__(self, weight=None, **kwargs):
        CREATED.append(("loss", None if weight is None else [round(float(w), 4) for w in weight]))
        super().__init__(weight=weight, **kwargs)


EDIT = {"optimizer": {"_target_": "tests.test_recipe.RecordingSGD", "params": "$@network.parameters()",
                      "lr": "@learning_rate", "momentum": 0.9},
        "loss": {"_target_": "tests.test_recipe.RecordingLoss",
                 "weight": "$torch.tensor([1.0, 3.0]).to(torch.device(@device))"},
        "batch_augmentation": None}


@pytest.fixture
def edited_bundles(tmp_path, monkeypatch):
    """Copies of both bundles whose train.json carries :data:`EDIT`, in place of the shipped ones."""
    root = tmp_path / "bundles"
    for arm in ARMS:
        dest = root / bundle_module.BUNDLE_NAMES[arm]
        shutil.copytree(bundle_module.bundle_dir(arm), dest)
        train = dest / "configs" / "train.json"
        train.write_text(json.dumps({**json.loads(train.read_text(encoding="utf-8")), **EDIT}, indent=4),
                         encoding="utf-8")

    def edited(arm: str):
        return root / bundle_module.BUNDLE_NAMES[bundle_module.check_arm(arm)]

    for module in ("p53hcc.tools.dl.bundle", "p53hcc.tools.dl.arms"):
        monkeypatch.setattr(f"{module}.bundle_dir", edited)
    bundle_module._train_config.cache_clear()
    augmented = []
    monkeypatch.setattr("p53hcc.tools.dl.roi.BatchRandCropFlip.forward",
                        lambda self, x: augmented.append(1) or x)
    monkeypatch.setattr("p53hcc.tools.dl.engine.build_net", lambda name, in_channels=3, **kw: TinyNet(in_channels))
    monkeypatch.setattr("p53hcc.tools.dl.components.build_net",
                        lambda name="", in_channels=3, **kw: TinyNet(in_channels))
    CREATED.clear()
    yield augmented
    bundle_module._train_config.cache_clear()


@pytest.mark.parametrize("engine", ["fast", "bundle"])
def test_both_engines_train_with_the_edited_recipe(edited_bundles, tmp_path, engine):
    from p53hcc.tools.dl.crossfit import train_arm

    csv = make_tiny_cohort(tmp_path / "cohort", n=8)
    study = tmp_path / "study"
    write_datalist(csv, study, folds=2)
    train_arm(csv, study, arm="mc", net="resnet18", epochs=1, device="cpu", engine=engine, folds=[0],
              spatial_size=16, n4=False, batch_size=2, precision="fp32")
    kinds = [kind for kind, _ in CREATED]
    assert kinds.count("optimizer") == 1 and kinds.count("loss") == 1  # fold 0's network, built from the copy
    assert dict(CREATED)["optimizer"]["momentum"] == 0.9
    assert dict(CREATED)["loss"] == [1.0, 3.0]  # the edited weighting, not the inverse-frequency one
    assert edited_bundles == []  # no batch was augmented
    if engine == "fast":
        recipe = json.loads((study / "dl" / "mc" / "resnet18" / "fold0" / "recipe.json").read_text("utf-8"))
        assert recipe["optimizer"] == "tests.test_recipe.RecordingSGD"
        assert recipe["loss"] == "tests.test_recipe.RecordingLoss" and recipe["loss_class_weights"] == [1.0, 3.0]
        assert recipe["batch_augmentation"] is None and recipe["precision"] == "fp32"


def test_the_shipped_recipe_augments_and_weights_by_class_frequency(tmp_path, monkeypatch):
    """The control: with the shipped train.json the same run augments every batch and weights the loss by the
    inverse class frequency of the training patients (so the test above sees the edit, not a default)."""
    from p53hcc.tools.dl.crossfit import train_arm

    augmented = []
    monkeypatch.setattr("p53hcc.tools.dl.roi.BatchRandCropFlip.forward", lambda self, x: augmented.append(1) or x)
    monkeypatch.setattr("p53hcc.tools.dl.engine.build_net", lambda name, in_channels=3, **kw: TinyNet(in_channels))
    csv = make_tiny_cohort(tmp_path / "cohort", n=8)
    write_datalist(csv, tmp_path / "study", folds=2)
    train_arm(csv, tmp_path / "study", arm="mc", net="resnet18", epochs=1, device="cpu", folds=[0],
              spatial_size=16, n4=False, batch_size=2, precision="fp32")
    recipe = json.loads((tmp_path / "study" / "dl" / "mc" / "resnet18" / "fold0" / "recipe.json").read_text("utf-8"))
    assert recipe["optimizer"] == "torch.optim.adamw.AdamW" and recipe["optimizer_settings"]["lr"] == 1e-4
    assert recipe["batch_augmentation"] == "p53hcc.tools.dl.roi.BatchRandCropFlip" and augmented


def test_the_edited_recipe_reaches_the_study_settings_and_keys(edited_bundles, monkeypatch):
    from p53hcc.tools.pipeline.config import resolve_config
    from p53hcc.tools.pipeline.stages import stage_key
    from p53hcc.tools.pipeline.study import build_stages

    def dl_key() -> str:
        stage = next(s for s in build_stages(resolve_config(nets="resnet18"), cohort_given=True)
                     if s.name == "dl_mc_resnet18")
        return stage_key(stage, {"datalist": "d", "preprocess": "p"})

    cfg = resolve_config(nets="resnet18")
    assert cfg["dl"]["optimizer"]["_target_"] == "tests.test_recipe.RecordingSGD"
    assert cfg["dl"]["loss"]["_target_"] == "tests.test_recipe.RecordingLoss"
    assert cfg["dl"]["batch_augmentation"] is None
    edited = dl_key()
    monkeypatch.undo()  # the shipped bundles again
    bundle_module._train_config.cache_clear()
    assert dl_key() != edited  # a changed recipe retrains: it is in the DL stage's key
