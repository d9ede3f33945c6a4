"""The contract between the package and its bundles: the configs name only p53hcc.tools.dl.components, whose
public names behave as documented; the bundles' train.json is the one home of the training defaults."""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.cohort.splits import select_items, write_datalist
from p53hcc.tools.dl import components
from p53hcc.tools.dl.bundle import TRAINING_KEYS, bundle_dir, training_defaults, training_params
from p53hcc.tools.errors import P53hccError
from tests.conftest import make_tiny_cohort

ARMS = ("mc", "ff")


def _configs():
    return [(arm, path) for arm in ARMS for path in sorted((bundle_dir(arm) / "configs").glob("*.json"))
            if path.name != "metadata.json"]


@pytest.mark.parametrize("arm,path", _configs(), ids=lambda v: getattr(v, "name", v))
def test_configs_name_only_the_public_components(arm, path):
    text = path.read_text(encoding="utf-8")
    imports = [i for i in json.loads(text).get("imports", []) if "p53hcc" in i]
    assert imports in ([], ["$import p53hcc.tools.dl.components as p53"])
    targets = re.findall(r"p53hcc\.[\w.]+", text.replace("import p53hcc.tools.dl.components as p53", ""))
    assert all(t.rsplit(".", 1)[0] == "p53hcc.tools.dl.components" for t in targets), targets
    used = {t.rsplit(".", 1)[1] for t in targets} | set(re.findall(r"\bp53\.(\w+)", text))
    assert used <= set(components.__all__), used - set(components.__all__)
    for name in components.__all__:
        assert getattr(components, name).__doc__, f"components.{name} is undocumented"


def test_one_home_for_training_defaults():
    mc, ff = training_defaults("mc"), training_defaults("ff")
    assert mc == ff and set(mc) == set(TRAINING_KEYS)  # the two arms share the study's training values
    for arm in ARMS:
        infer = json.loads((bundle_dir(arm) / "configs" / "inference.json").read_text(encoding="utf-8"))
        for key in ("net", "spatial_size", "margin", "pixdim", "n4", "precision"):
            assert infer[key] == mc[key], (arm, key)  # inference crops exactly as training did
    params = training_params("mc", epochs=3, source="preprocessed", batch_size=None)
    assert params["epochs"] == 3 and params["batch_size"] == mc["batch_size"] and params["n4"] is False
    with pytest.raises(P53hccError, match="unknown training setting epoch; did you mean epochs"):
        training_params("mc", epoch=3)
    with pytest.raises(P53hccError, match="source = 'elsewhere': Input should be 'raw' or 'preprocessed'"):
        training_params("ff", source="elsewhere")


def test_select_items_is_the_one_rule_for_every_role(tmp_path):
    cohort = make_tiny_cohort(tmp_path / "cohort", n=8)
    dl = write_datalist(cohort, tmp_path / "study", folds=2)
    splits = json.loads((tmp_path / "study" / "splits.json").read_text(encoding="utf-8"))
    ids = lambda items: sorted(d["patient_id"] for d in items)
    for fold in splits["folds"]:
        assert ids(select_items(dl, "train", fold["fold"])) == fold["train"]
        assert ids(select_items(dl, "val", fold["fold"])) == fold["val"]
    training = sorted(splits["fold_of"])
    assert ids(select_items(dl, "train", -1)) == training
    assert ids(select_items(dl, "val", -1)) == training  # the full model never monitors the validation cohort
    assert ids(select_items(dl, "validation")) == ["P006", "P007"]
    assert len(select_items(dl, "all")) == 8
    phase = select_items(dl, "validation", -1, "dp")[0]
    assert phase["image"].endswith("P006_dp.nii.gz") and phase["mask"].endswith("P006_dp_mask.nii.gz")
    assert phase["phase"] == "dp" and phase["label"] == 0 and phase["split"] == "validation"
    with pytest.raises(P53hccError, match="unknown datalist part"):
        select_items(dl, "testing")
    with pytest.raises(P53hccError, match="unknown phase"):
        select_items(dl, "all", -1, "t2")


def test_class_weights_are_inverse_frequency_with_mean_one():
    w = components.class_weights([{"label": 0}] * 3 + [{"label": 1}] + [{"label": -1}])
    assert np.allclose(w.numpy(), [4 / 6, 4 / 2])


class _Engine:
    """The two attributes of an ignite engine's state that the writer reads."""

    def __init__(self, batch, output):
        self.state = type("State", (), {"batch": batch, "output": output})()


@pytest.mark.parametrize("mode", ["probability", "features"])
def test_patient_table_writer(tmp_path, mode):
    import torch

    writer = components.PatientTableWriter(tmp_path / f"{mode}.parquet", mode=mode, extra={"phase": "ap"})
    batch = [{"patient_id": "P1", "label": 1}, {"patient_id": "P2"}]
    output = [{"pred": torch.tensor([0.2, 0.8])}, {"pred": torch.tensor([0.9, 0.1])}]
    writer._reset(None)
    writer._collect(_Engine(batch, output))
    writer._write(None)
    table = pd.read_parquet(tmp_path / f"{mode}.parquet")
    assert table["patient_id"].tolist() == ["P1", "P2"] and (table["phase"] == "ap").all()
    if mode == "probability":
        assert table["label"].tolist() == [1, -1] and np.allclose(table["score"], [0.8, 0.1])
    else:
        assert np.allclose(table[["f0", "f1"]].to_numpy(), [[0.2, 0.8], [0.9, 0.1]])
    with pytest.raises(ValueError, match="mode"):
        components.PatientTableWriter(tmp_path / "x.csv", mode="logits")
