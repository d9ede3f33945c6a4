"""The two shipped bundles as one source: their configs and metadata may differ only where the arms differ (the
phase keys, the input channels, the feature export and the descriptions; docs/architecture.md, "Configuration")."""
from __future__ import annotations

import json
import re

import pytest

from p53hcc.tools.dl.bundle import bundle_dir

#: Config ids (``#``-joined paths, as MONAI's ConfigParser names them) allowed to differ between p53_mc and p53_ff;
#: each pattern covers the id and everything below it.
PHASE_KEYS = (r"phase", r"phases", r"image_keys", r"mask_keys", r"datalist_mask_keys", r"all_keys", r"work_dir",
              r"output_dir", r"ckpt_dir", r"cache_dir", r"input_channels")
ARM_DIFFERENCES = {
    "train.json": (*PHASE_KEYS, r"network_def#in_channels", r"load_transforms",
                   r"spatial_transforms#0#mode", r"roi_transforms", r"(train|validate)#datalist"),
    "inference.json": (*PHASE_KEYS, r"network_def#in_channels", r"load_transforms",
                       r"spatial_transforms#0#mode", r"roi_transforms", r"dataset#data",
                       r"handlers#2#extra"),
    "evaluate.json": (r"validate#datalist", r"validate#handlers#3#extra"),
    "deploy.json": (*PHASE_KEYS, r"network_def#in_channels", r"input_transforms",
                    r"spatial_transforms#0#mode", r"roi_transforms"),
    "multi_gpu_train.json": (),
    "multi_gpu_evaluate.json": (),
    "metadata.json": (r"name", r"task", r"description", r"image_classes", r"changelog#0\.1\.0",
                      r"network_data_format#inputs#image#(num_channels|channel_def)"),
}
#: What only one arm has: the FF arm's penultimate-feature export.
ONLY_FF = {"export.json"}


def _flat(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}#{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(node, list):
        out = {}
        for i, v in enumerate(node):
            out.update(_flat(v, f"{prefix}#{i}"))
        return out or {prefix: []}
    return {prefix: node}


def _config(arm: str, name: str) -> dict:
    return json.loads((bundle_dir(arm) / "configs" / name).read_text(encoding="utf-8"))


def _allowed(name: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})(?:#.*)?" for p in ARM_DIFFERENCES[name]) or "(?!)")


def differences(mc: dict, ff: dict) -> set[str]:
    """Config ids whose value differs or that only one of the two configs has."""
    a, b = _flat(mc), _flat(ff)
    return {k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>")}


def test_the_two_bundles_ship_the_same_configs():
    names = {arm: {p.name for p in (bundle_dir(arm) / "configs").glob("*.json")} for arm in ("mc", "ff")}
    assert names["ff"] - names["mc"] == ONLY_FF and not names["mc"] - names["ff"]
    assert set(ARM_DIFFERENCES) == names["mc"]


@pytest.mark.parametrize("name", sorted(ARM_DIFFERENCES))
def test_configs_differ_only_where_the_arms_differ(name):
    allowed = _allowed(name)
    extra = sorted(k for k in differences(_config("mc", name), _config("ff", name)) if not allowed.fullmatch(k))
    assert extra == []


def test_the_parity_check_sees_a_drift():
    mc, ff = _config("mc", "train.json"), _config("ff", "train.json")
    ff["optimizer"]["_target_"] = "torch.optim.SGD"
    allowed = _allowed("train.json")
    assert [k for k in differences(mc, ff) if not allowed.fullmatch(k)] == ["optimizer#_target_"]


def test_metadata_agrees_and_holds_no_placeholder():
    mc, ff = _config("mc", "metadata.json"), _config("ff", "metadata.json")
    for key in ("authors", "copyright", "data_type", "required_packages_version", "version", "monai_version",
                "pytorch_version", "numpy_version", "intended_use"):
        assert mc[key] == ff[key], key
    for meta in (mc, ff):  # measured numbers only: a shipped (untrained) bundle has none
        assert "eval_metrics" not in meta or all(isinstance(v, (int, float)) for v in meta["eval_metrics"].values())


def test_inference_output_and_dataset_are_one_name():
    for arm in ("mc", "ff"):
        cfg = _config(arm, "inference.json")
        assert "predictions_path" in cfg and "scores_file" not in cfg
        assert cfg["dataset"]["_target_"] == "Dataset"
        writer = [h for h in cfg["handlers"] if h["_target_"].endswith("PatientTableWriter")]
        assert [w["output_path"] for w in writer] == ["@predictions_path"]
        assert _config(arm, "evaluate.json")["validate#handlers"][-1]["output_path"] == "@predictions_path"


def test_ddp_handlers_are_chosen_by_name():
    for arm in ("mc", "ff"):
        cfg = _config(arm, "multi_gpu_train.json")
        handlers = cfg["train#trainer#train_handlers"]
        assert "@rank0_handlers" in handlers and not re.search(r"\[\s*:?\s*-?\d", handlers)  # no list position
        assert set(cfg["rank0_handlers"]) <= {h["_target_"] for h in _config(arm, "train.json")["train"]["handlers"]}
