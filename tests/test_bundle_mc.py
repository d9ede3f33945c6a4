"""bundles/p53_mc: train / evaluate / inference through ConfigWorkflow, metadata schema, net in/out, export."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from tests.conftest import make_tiny_cohort
from tools.cohort import write_datalist
from tools.train import BUNDLE_MC

CONFIGS = BUNDLE_MC / "configs"
from tests.conftest import reference_data

SCHEMA = reference_data() / "monai" / "meta_schema_20240725.json"


def _workflow(config_file, workflow_type, **overrides):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=config_file, meta_file=str(CONFIGS / "metadata.json"),
                        logging_file=str(CONFIGS / "logging.conf"), workflow_type=workflow_type, **overrides)
    wf.initialize()
    assert not wf.check_properties()  # None or [] = no required property missing
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle_mc")
    cohort = make_tiny_cohort(root / "cohort", n=8)
    study = root / "study"
    write_datalist(cohort, study, folds=2)
    work = root / "work"
    common = {"bundle_root": str(BUNDLE_MC), "dataset_dir": str(study), "ckpt_dir": str(work / "models"),
                  "output_dir": str(work / "eval"), "cache_dir": str(work / "cache"), "net": "resnet18", "device": "cpu",
                  "spatial_size": 32, "n4": False, "batch_size": 4, "fold": 0}
    _workflow(str(CONFIGS / "train.json"), "train", epochs=1, **common)
    return study, work, common


def test_train_writes_checkpoint_and_tensorboard(trained):
    _, work, _ = trained
    assert (work / "models" / "model.pt").is_file()
    assert list((work / "eval").glob("events.out.tfevents*"))
    assert list((work / "cache").glob("*.pt"))  # deterministic transforms cached once per patient


def test_evaluate_writes_auc(trained):
    _study, work, common = trained
    _workflow([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], "eval", **common)
    metrics = (work / "eval" / "metrics.csv").read_text().strip().split(",")
    assert metrics[0] == "val_auc" and 0.0 <= float(metrics[1]) <= 1.0
    scores = pd.read_csv(work / "eval" / "scores.csv")
    assert len(scores) == 3 and scores["patient_id"].str.startswith("P").all()  # fold-0 held-out patients


def test_inference_writes_patient_probabilities(trained):
    _study, work, common = trained
    out = work / "infer" / "scores.csv"
    _workflow(str(CONFIGS / "inference.json"), "infer", infer_part="validation", scores_file=str(out),
              ckpt_path=str(work / "models" / "model.pt"),
              **{k: v for k, v in common.items() if k not in ("fold", "ckpt_dir")})
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["patient_id", "label", "score"]
    assert sorted(scores["patient_id"]) == ["P006", "P007"] and scores["score"].between(0, 1).all()


def test_metadata_net_in_out_and_export(trained, tmp_path):
    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

    _, work, _ = trained
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # present locally -> MONAI skips the download
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema))
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), net="resnet18", device="cpu")
    ts = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(work / "models" / "model.pt"),
                meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"),
                net="resnet18")
    scripted = torch.jit.load(str(ts))
    from tools.nets import load_net

    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(scripted(x), load_net(work / "models" / "model.pt", "resnet18")(x), atol=1e-4)


def test_required_bundle_files_and_changelog():
    import json

    for rel in ("configs/metadata.json", "configs/train.json", "configs/evaluate.json", "configs/inference.json",
                "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "LICENSE"):
        assert (BUNDLE_MC / rel).is_file(), rel
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "optional_packages_version" not in meta
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    assert "network_def" not in evaluate and "train" not in evaluate  # an override, not a copy


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("P53HCC_SLOW"), reason="set P53HCC_SLOW=1 (about 60 s)")
def test_multi_gpu_config_runs_with_two_gloo_processes(trained):
    import subprocess
    import sys

    study, work, _ = trained
    root = work / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run",
           "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']",
           "--bundle_root", str(root), "--dataset_dir", str(study), "--epochs", "1", "--spatial_size", "32",
           "--n4", "false", "--net", "resnet18", "--batch_size", "2", "--logging_file", str(CONFIGS / "logging.conf")]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    errors = [ln for ln in (res.stdout + res.stderr).splitlines() if "Error" in ln and "raise" not in ln]
    assert res.returncode == 0, "\n".join(errors[-20:]) + res.stderr[-1500:]
    assert (root / "models" / "model.pt").is_file()
    assert "val_auc" in res.stdout + res.stderr


def test_deterministic_chain_with_n4_on(trained):
    """The one N4-on check: the bundle's cached chain (load -> N4 -> 1 mm -> ROI) gives a 3-channel crop."""
    from monai.transforms import Compose

    from tools.train import _parser, datalist_part

    study, _, _ = trained
    parser = _parser(BUNDLE_MC, {"n4": True, "spatial_size": 32, "dataset_dir": str(study)})
    chain = parser.get_parsed_content("deterministic_transforms")
    assert any(type(t).__name__ == "N4BiasFieldCorrectiond" for t in chain)
    out = Compose(chain)(datalist_part(study / "datalist.json", "validation")[0])
    assert out["image"].shape == (3, 32, 32) and torch.isfinite(out["image"]).all()
