"""bundles/p53_ff on CPU with tiny settings: metadata, feature widths, train/export/inference/evaluate, DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "p53_ff"
CONFIGS = BUNDLE / "configs"
from tests.conftest import reference_data

SCHEMA = reference_data() / "monai" / "meta_schema_20240725.json"
TINY = {"spatial_size": 32, "n4": False, "amp": False, "device": "cpu", "net": "resnet18", "batch_size": 4,
        "num_workers": 0}
# Penultimate widths stated by the paper's networks (ResNet basic blocks 512, bottleneck 2048, DenseNet121 1024).
WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
          "densenet121": 1024}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO))
    from benchmarks.train_sweep import tiny_cohort
    from tools.cohort import write_datalist

    root = tmp_path_factory.mktemp("ffbundle")
    write_datalist(tiny_cohort(root / "data", n=12, n_validation=4), root / "study", folds=2)
    return root / "study"


def _workflow(configs: list[str], workflow_type: str, **overrides):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=[str(CONFIGS / c) for c in configs], workflow_type=workflow_type,
                        meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                        **overrides)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return wf


def test_layout_and_metadata():
    from monai.bundle import verify_metadata

    for rel in ("configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                "configs/export.json", "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md",
                "LICENSE"):
        assert (BUNDLE / rel).is_file(), rel
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "optional_packages_version" not in meta
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [256, 256]
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
    if SCHEMA.is_file():
        verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("name", list(WIDTHS))
def test_penultimate_width_of_every_network(name):
    from tools.nets import build_net, feature_extractor, penultimate_dim

    net = build_net(name, in_channels=1, num_classes=2).eval()
    with torch.no_grad():
        feats = feature_extractor(net)(torch.randn(2, 1, 64, 64))
    assert feats.shape == (2, WIDTHS[name]) == (2, penultimate_dim(name))


def test_train_export_inference_evaluate(study, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out

    common = {"bundle_root": str(tmp_path), "dataset_dir": str(study), "phase": "pvp", **TINY}
    _workflow(["train.json"], "train", fold=0, epochs=1, **common)
    ckpt = tmp_path / "models" / "pvp" / "model.pt"  # the per-phase checkpoint convention
    assert ckpt.is_file()

    _workflow(["inference.json", "export.json"], "infer", **common)
    feats = pd.read_parquet(tmp_path / "eval" / "pvp" / "features.parquet")
    datalist = json.loads((study / "datalist.json").read_text())
    everyone = {d["patient_id"] for s in datalist.values() for d in s}
    assert feats.shape == (len(everyone), 3 + 512)
    assert set(feats.patient_id) == everyone and not feats.patient_id.duplicated().any()
    assert (feats.phase == "pvp").all() and (feats.fold == -1).all()
    assert feats.filter(like="f").abs().sum().sum() > 0

    _workflow(["inference.json"], "infer", **common)
    preds = pd.read_csv(tmp_path / "eval" / "pvp" / "predictions.csv")
    assert set(preds.patient_id) == {d["patient_id"] for d in datalist["validation"]}
    assert preds.score.between(0, 1).all()

    _workflow(["train.json", "evaluate.json"], "train", fold=0, **common)
    metrics = (tmp_path / "eval" / "pvp" / "metrics.csv").read_text()
    assert metrics.startswith("val_auc,")

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), device="cpu", net="resnet18")
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=str(CONFIGS / "metadata.json"),
                config_file=str(CONFIGS / "inference.json"), net="resnet18")
    assert torch.jit.load(str(ts))(torch.zeros(1, 1, 64, 64)).shape == (1, 2)


@pytest.mark.slow
def test_multi_gpu_train_two_processes_on_cpu(study, tmp_path):
    """multi_gpu_train.json under torchrun with 2 processes (gloo on CPU) trains and saves one checkpoint."""
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", configs, "--bundle_root", str(tmp_path), "--dataset_dir", str(study), "--epochs", "1",
           "--phase", "dp", "--logging_file", str(CONFIGS / "logging.conf"),
           *[a for k, v in TINY.items() if k != "device" for a in (f"--{k}", str(v))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (tmp_path / "models" / "dp" / "model.pt").is_file()
