"""Both MONAI bundles (p53_mc, p53_ff) run through MONAI's own ConfigWorkflow with tiny settings: layout and
metadata, train -> evaluate -> inference (-> FF feature export), network in/out, TorchScript, N4 in the chain,
and DDP under torchrun (slow)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from p53hcc.tools.cohort.splits import select_items, write_datalist
from p53hcc.tools.dl.bundle import bundle_dir, bundle_parser
from p53hcc.tools.dl.nets import load_net
from tests.conftest import REFERENCE_DATA, make_tiny_cohort

SCHEMA = REFERENCE_DATA / "monai" / "meta_schema_20240725.json"
TINY = {"spatial_size": 32, "n4": False, "precision": "fp32", "device": "cpu", "net": "resnet18", "batch_size": 4,
        "num_workers": 0}
CHANNELS = {"mc": 3, "ff": 1}
PHASE = {"mc": {}, "ff": {"phase": "pvp"}}


def _workflow(arm: str, configs: list[str], workflow_type: str, **overrides):
    from monai.bundle import ConfigWorkflow

    folder = bundle_dir(arm) / "configs"
    wf = ConfigWorkflow(config_file=[str(folder / c) for c in configs], workflow_type=workflow_type,
                        meta_file=str(folder / "metadata.json"), logging_file=str(folder / "logging.conf"),
                        **overrides)
    wf.initialize()
    assert not wf.check_properties()  # None or [] = no required property missing
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    write_datalist(make_tiny_cohort(root / "cohort", n=12), root / "study", folds=2)
    return root / "study"


@pytest.fixture(scope="module", params=["mc", "ff"])
def trained(request, study, tmp_path_factory):
    arm = request.param
    work = tmp_path_factory.mktemp(f"bundle_{arm}")
    common = {"bundle_root": str(work), "work_dir": str(work), "dataset_dir": str(study),
              "ckpt_dir": str(work / "models"),
              "output_dir": str(work / "eval"), "cache_dir": str(work / "cache"), "fold": 0, **TINY, **PHASE[arm]}
    _workflow(arm, ["train.json"], "train", epochs=1, **common)
    return arm, work, common


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_layout_and_metadata(arm):
    from monai.bundle import verify_metadata

    root = bundle_dir(arm)
    for rel in ("configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "LICENSE"):
        assert (root / rel).is_file(), rel
    meta = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["version"] in meta["changelog"] and "optional_packages_version" not in meta
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == CHANNELS[arm]
    assert fmt["inputs"]["image"]["spatial_shape"] == [256, 256] and fmt["outputs"]["pred"]["num_channels"] == 2
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(SCHEMA))
    evaluate = json.loads((root / "configs" / "evaluate.json").read_text(encoding="utf-8"))
    assert "network_def" not in evaluate and "train" not in evaluate  # an override, not a copy


def test_train_evaluate_and_infer(trained):
    arm, work, common = trained
    ckpt = work / "models" / "model.pt"
    assert ckpt.is_file() and list((work / "eval").glob("events.out.tfevents*"))
    assert list((work / "cache").glob("*.pt"))  # deterministic transforms cached once per patient
    _workflow(arm, ["train.json", "evaluate.json"], "eval", **common)
    metrics = (work / "eval" / "metrics.csv").read_text(encoding="utf-8").strip().split(",")
    assert metrics[0] == "val_auc" and 0.0 <= float(metrics[1]) <= 1.0
    out = work / "infer" / "scores.csv"
    infer = {k: v for k, v in common.items() if k not in ("fold", "ckpt_dir")}
    _workflow(arm, ["inference.json"], "infer", infer_part="validation",
              predictions_path=str(out), ckpt_path=str(ckpt), **infer)
    scores = pd.read_csv(out, dtype={"patient_id": str})
    assert sorted(scores["patient_id"]) == ["P009", "P010", "P011"] and scores["score"].between(0, 1).all()
    assert {"patient_id", "label", "score"} <= set(scores.columns)
    if arm == "ff":  # penultimate features of every patient for the FF head
        feats_path = work / "infer" / "features.parquet"
        _workflow(arm, ["inference.json", "export.json"], "infer", features_path=str(feats_path),
                  ckpt_path=str(ckpt), **infer)
        feats = pd.read_parquet(feats_path)
        assert feats.shape == (12, 3 + 512) and (feats.phase == "pvp").all() and (feats.fold == -1).all()
        assert feats.filter(like="f").abs().sum().sum() > 0


def test_net_in_out_and_torchscript(trained, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out

    arm, work, _ = trained
    configs = bundle_dir(arm) / "configs"
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), net="resnet18", device="cpu")
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(work / "models" / "model.pt"),
                meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
                net="resnet18")
    x = torch.randn(1, CHANNELS[arm], 32, 32)
    assert torch.allclose(torch.jit.load(str(ts))(x), load_net(work / "models" / "model.pt", "resnet18")(x),
                          atol=1e-4)


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_deterministic_chain_with_n4_on(arm, study):
    """The bundle's own raw-image chain (load -> N4 -> 1 mm -> ROI) gives a finite crop per phase."""
    from monai.transforms import Compose

    parser = bundle_parser(arm, overrides={"n4": True, "spatial_size": 32, "dataset_dir": str(study)})
    chain = parser.get_parsed_content("deterministic_transforms")
    assert any(type(t).__name__ == "N4BiasFieldCorrectiond" for t in chain)
    item = select_items(study / "datalist.json", "validation", -1, PHASE[arm].get("phase"))[0]
    out = Compose(chain)(item)
    assert out["image"].shape == (CHANNELS[arm], 32, 32) and torch.isfinite(out["image"]).all()


def _rank_messages(text: str) -> str:
    """The lines that say why a rank died (C++ aborts, Python faults and errors), not the launcher's own trace."""
    keys = ("terminate called", "what():", "Fatal Python error", "Aborted", "Error", "Exception", "Signal")
    return "\n".join(ln for ln in text.splitlines() if any(k in ln for k in keys) and "raise" not in ln)[-4000:]


def _torchrun(configs: list, cwd, overrides: dict) -> None:
    """``monai.bundle run`` of ``configs`` under torchrun with 2 processes (gloo on the CPU). (Once retried when a
    rank died by a signal: that was holoscan's, imported by `import monai` while the Deploy SDK shared the
    environment; the study's environment has no SDK now.)"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", "[" + ",".join(f"'{c}'" for c in configs) + "]",
           *[a for k, v in overrides.items() for a in (f"--{k}", str(v))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    res = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, _rank_messages(res.stdout + res.stderr) + res.stderr[-1500:]


@pytest.mark.slow
def test_multi_gpu_train_and_evaluate_two_processes_on_cpu(trained, study, tmp_path):
    """multi_gpu_train.json under torchrun with 2 processes trains and saves one checkpoint;
    multi_gpu_evaluate.json scores every held-out patient once, gathered into one table by rank 0."""
    arm, _, _ = trained
    configs = bundle_dir(arm) / "configs"
    common = {"bundle_root": tmp_path, "work_dir": tmp_path, "dataset_dir": study,
              "logging_file": configs / "logging.conf",
              **{k: v for k, v in {**TINY, **PHASE[arm]}.items() if k != "device"}}
    _torchrun([configs / "train.json", configs / "multi_gpu_train.json"], tmp_path,
              {**common, "ckpt_dir": tmp_path / "models", "epochs": 1})
    assert (tmp_path / "models" / "model.pt").is_file()
    out = tmp_path / "eval" / "predictions.csv"
    _torchrun([configs / "train.json", configs / "evaluate.json", configs / "multi_gpu_evaluate.json"], tmp_path,
              {**common, "ckpt_path": tmp_path / "models" / "model.pt", "output_dir": tmp_path / "eval"})
    scores = pd.read_csv(out, dtype={"patient_id": str})
    held = [d["patient_id"] for d in select_items(study / "datalist.json", "val", 0, PHASE[arm].get("phase"))]
    assert sorted(scores["patient_id"]) == sorted(held)  # each held-out patient once, from both ranks
    shutil.rmtree(tmp_path / "models")
