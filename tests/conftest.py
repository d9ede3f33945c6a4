"""Shared fixtures: a tiny, valid cohort written from scratch (fast; no synthetic generator needed)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from p53hcc.tools.schema import PHASES

# The file-hash store of this test session (and of the commands it starts), not the user's ~/.cache.
os.environ.setdefault("P53HCC_HASH_CACHE", str(Path(tempfile.mkdtemp(prefix="p53hcc-test-hashes-")) / "sha256.sqlite"))


def write_nifti(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 4.0), dtype=np.float32) -> Path:
    """Write a (x, y, z) array as NIfTI with a diagonal affine of the given spacing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(dtype), np.diag([*spacing, 1.0])), str(path))
    return path


def make_tiny_cohort(root: Path, n: int = 8, shape=(24, 24, 6), seed: int = 0) -> Path:
    """n patients (half P53+), three phases each, a sphere tumour brighter in P53+; returns cohort.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    for i in range(n):
        pid, label = f"P{i:03d}", i % 2
        centre = np.array(shape) / 2 + rng.uniform(-1, 1, 3)
        dist = np.sqrt((((grid.T - centre) * [1.5, 1.5, 4.0]) ** 2).sum(-1)).T
        mask = (dist < 8 + rng.uniform(0, 2)).astype(np.uint8)
        row = {"patient_id": pid, "split": "train" if i < int(n * 0.75) else "validation", "p53": label,
               "age": 55 + i, "sex": "M" if i % 3 else "F", "afp": 10.0 * (i + 1), "cea": 2.0, "ca199": 20.0,
               "grade": 2 + label, "mvi": label, "ltd_mm": 30.0 + i, "rim_aphe": label, "washout": "nonperipheral",
               "delayed_central": 0, "capsule": 1}
        for phase in PHASES:
            img = rng.normal(100, 5, shape) + mask * (30 + 20 * label)
            write_nifti(root / "images" / f"{pid}_{phase}.nii.gz", img)
            write_nifti(root / "masks" / f"{pid}_{phase}_mask.nii.gz", mask, dtype=np.uint8)
            row[phase] = f"images/{pid}_{phase}.nii.gz"
            row[f"{phase}_mask"] = f"masks/{pid}_{phase}_mask.nii.gz"
        rows.append(row)
    path = root / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_cohort(tmp_path: Path) -> Path:
    """Path of a valid 8-patient cohort.csv of 24x24x6 volumes (6 train, 2 validation)."""
    return make_tiny_cohort(tmp_path / "cohort")


class Killed(Exception):
    """Stands for a run killed inside a stage."""


@pytest.fixture
def fake_image_stages(monkeypatch):
    """Replace the image-heavy stage functions (synth images, preprocess, radiomics, CNN training, Grad-CAM) by
    fast deterministic fakes, so the real orchestration, fusion, statistics, figures, report and freezing run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import p53hcc.tools.cohort.manifest
    import p53hcc.tools.cohort.synth.cohort
    import p53hcc.tools.dl.crossfit
    import p53hcc.tools.radiomics.extract
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    state = {"kill": None, "calls": [], "drop": None}

    def make_cohort(n, out, seed=0, size="demo", second_reader=True, profile="internal"):
        cohort, truth = sample_patients(n, seed=seed, profile=profile)
        for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
            cohort[col] = "x.nii.gz"
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        cohort.to_csv(out / "cohort.csv", index=False)
        truth.to_csv(out / "truth.csv", index=False)
        return out

    def truth_of(cohort_csv):
        return pd.read_csv(Path(cohort_csv).parent / "truth.csv", dtype={"patient_id": str})

    def preprocess_cohort(cohort_csv, out, workers=None, scheduler=None, params=None, on_failure="fail"):
        state["calls"].append("preprocess")

    def extract_cohort(cohort_csv, out, params="demo", workers=None, scheduler=None, on_failure="fail"):
        from p53hcc.tools.cohort.dropped import apply_policy

        state["calls"].append("radiomics")
        t = truth_of(cohort_csv)
        rng = np.random.default_rng(1)
        rad = pd.DataFrame(rng.normal(size=(len(t), 8)), columns=[f"ap_original_firstorder_F{i}" for i in range(8)])
        rad.iloc[:, 0] += t["bayes_logit"]
        rad.insert(0, "patient_id", t["patient_id"])
        rad = rad[rad["patient_id"] != state["drop"]]  # state["drop"]: a patient whose extraction "fails"
        rad.to_parquet(Path(out) / "radiomics.parquet", index=False)
        failed = [{"patient_id": state["drop"], "phase": "dp", "reason": "extraction failed: ValueError: mask only "
                   "contains 1 segmented voxel!"}] if state["drop"] else []
        apply_policy(out, "radiomics", failed, 3 * len(t), on_failure, "patient-phase(s)")

    def train_arm(cohort_csv, out, arm="mc", net="resnet18", epochs=None, device=None, **kw):
        assert kw["source"] == "preprocessed" and kw["seed"] == 0  # the study's training values reach the arm
        state["calls"].append(f"{arm}_{net}")
        if state["kill"] == f"{arm}_{net}":
            raise Killed(f"killed while training {arm}_{net}")
        datalist = json.loads((Path(out) / "datalist.json").read_text(encoding="utf-8"))
        t = truth_of(cohort_csv)  # the datalist's patients, as the real arms
        t = t[t["patient_id"].isin({d["patient_id"] for section in datalist.values() for d in section})]
        splits = json.loads((Path(out) / "splits.json").read_text(encoding="utf-8"))
        rng = np.random.default_rng([ord(arm[0]), len(net), int(epochs)])
        s = 1 / (1 + np.exp(-(t["bayes_logit"] + rng.normal(0, 1.5, len(t)))))
        d = Path(out) / "dl" / arm / net
        (d / "full").mkdir(parents=True, exist_ok=True)
        (d / "full" / "model.pt").write_bytes(b"w")
        for f in splits["folds"]:  # each fold network's training history, as the real engine writes it
            for unit in [""] if arm == "mc" else ["ap", "pvp", "dp"]:
                (d / f"fold{f['fold']}" / unit).mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"epoch": range(1, int(epochs) + 1), "train_loss": 0.7, "val_auc": 0.6}).to_csv(
                    d / f"fold{f['fold']}" / unit / "history.csv", index=False)
        pd.DataFrame({"patient_id": t["patient_id"], "model": f"{arm}_{net}",
                      "fold": [splits["fold_of"].get(p, -1) for p in t["patient_id"]], "split": t["split"],
                      "score": s}).to_parquet(d / "scores.parquet", index=False)

    def gradcam_command(out, arm="mc", net="resnet18", patients=None, n=4, layer=None):
        fig, ax = plt.subplots(figsize=(1, 1), dpi=30)
        ax.imshow(np.eye(4))
        (Path(out) / "gradcam").mkdir(exist_ok=True)
        fig.savefig(Path(out) / "gradcam" / f"{arm}_{net}.png")
        plt.close(fig)

    monkeypatch.setattr(p53hcc.tools.cohort.synth.cohort, "make_cohort", make_cohort)
    monkeypatch.setattr(p53hcc.tools.cohort.manifest, "validate_cohort", lambda path, **kw: [])
    monkeypatch.setattr("p53hcc.tools.pipeline.checks.validate_cohort", lambda path, **kw: [])
    monkeypatch.setattr(p53hcc.tools.radiomics.extract, "extract_cohort", extract_cohort)
    monkeypatch.setattr(p53hcc.tools.dl.crossfit, "train_arm", train_arm)
    monkeypatch.setattr("p53hcc.tools.preprocessing.run.preprocess_cohort", preprocess_cohort)
    monkeypatch.setattr("p53hcc.tools.pipeline.explain.gradcam_command", gradcam_command)
    return state


#: Reference data vendored with the tests (source and licence of each set in tests/data/README.md).
REFERENCE_DATA = Path(__file__).resolve().parent / "data"


class TinyNet(torch.nn.Module):
    """A small CNN with the ResNet interface (``fc`` classifier) so CPU tests train in milliseconds; each test keeps
    its own ``width`` and first-convolution ``stride``."""

    def __init__(self, in_channels: int = 3, width: int = 4, stride: int = 4):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 3, stride=stride),
                                        torch.nn.BatchNorm2d(width), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten())
        self.fc = torch.nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(self.body(x))


# ------------------------------------------------------------------ fusion -> statistics -> frozen model -> predict
@pytest.fixture(scope="session")
def fused_study(tmp_path_factory):
    """A study folder up to the DL stages made from cheap fakes (radiomics with signal, DL scores from the truth),
    then the real fusion, statistics and freeze stages; ``(root, cohort, radiomics)``. Tests only read it (or copy
    it), so it is made once per session."""
    import yaml

    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.cohort.synth.cohort import sample_patients
    from p53hcc.tools.pipeline.config import resolve_config

    root = tmp_path_factory.mktemp("fused")
    cohort, truth = sample_patients(90, seed=5)
    for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
        cohort[col] = "x.nii.gz"
    csv = root / "cohort" / "cohort.csv"
    csv.parent.mkdir()
    cohort.to_csv(csv, index=False)
    truth.to_csv(csv.parent / "truth.csv", index=False)
    write_datalist(csv, root, folds=3, seed=0)
    splits = json.loads((root / "splits.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(2)
    ids, logit = truth["patient_id"].to_numpy(), truth["bayes_logit"].to_numpy()
    rad = pd.DataFrame(rng.normal(size=(len(ids), 12)), columns=[f"ap_original_firstorder_F{i}" for i in range(12)])
    rad.iloc[:, 0] += 0.8 * logit
    rad.insert(0, "patient_id", ids)
    rad.to_parquet(root / "radiomics.parquet", index=False)
    fold_of = splits["fold_of"]
    split = cohort.set_index("patient_id")["split"]
    for arm, noise in (("mc", 8.0), ("ff", 0.5)):
        s = 1 / (1 + np.exp(-(logit + rng.normal(0, noise, len(ids)))))
        d = root / "dl" / arm / "resnet18"
        d.mkdir(parents=True)
        pd.DataFrame({"patient_id": ids, "model": f"{arm}_resnet18", "fold": [fold_of.get(p, -1) for p in ids],
                      "split": split.loc[ids].to_numpy(), "score": s}).to_parquet(d / "scores.parquet")
        (d / "full").mkdir()
        (d / "full" / "model.pt").write_bytes(b"weights")
    cfg = resolve_config(nets="resnet18", folds=3)
    cfg.update(cohort=str(csv), cohort_generated=True)
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    from p53hcc.tools.pipeline.fit import run_fusion
    from p53hcc.tools.pipeline.freeze import freeze_model
    from p53hcc.tools.pipeline.statistics import run_statistics

    run_fusion(root, csv, cfg)
    run_statistics(root, csv, cfg)
    freeze_model(root)
    return root, cohort, rad


def snapshot(root) -> dict:
    """Content hashes of every output (markers hold timings, so they are compared by key only; the log is a
    record of the runs, not an output)."""
    from p53hcc.tools.io import file_sha256

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "study.log":
            rel = p.relative_to(root).as_posix()
            out[rel] = json.loads(p.read_text(encoding="utf-8"))["key"] if rel.startswith(".stages/") else file_sha256(p)
    return out
