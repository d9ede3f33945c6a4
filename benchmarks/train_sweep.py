"""Benchmark the paper's whole deep-learning sweep: 6 nets x (K folds + 1) x (1 MC + 3 FF phase models).

For every network it measures, in the same run and on the same device:

* the **compute limit**: a steady-state training step (forward, backward, AdamW) on device-resident random inputs,
  batch 64, 3x256x256 (and 1x256x256 for the FF phase models), bf16 autocast + channels_last on CUDA;
* the **sweep throughput**: training images per second of ``p53hcc.tools.dl.crossfit.train_arm`` for both arms over
  all folds + the full-cohort model, and its ratio to the limit;
* the total wall time of the sweep (crop caching reported apart).

On a GPU it uses a paper-size synthetic cohort (``p53hcc.tools.cohort.synth``); without one it runs a tiny CPU
variant (tiny images, 1 epoch, 2 folds, 2 small nets) that proves the script works and records "GPU figures not measured".
Writes ``benchmarks/results/train_sweep_<device>.json`` and prints a table::

    python benchmarks/train_sweep.py                 # GPU if present, else the tiny CPU variant
    python benchmarks/train_sweep.py --device cpu --nets resnet18 --n 12
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ALL_NETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121")
GPU_DEFAULTS = {"n": 320, "folds": 5, "epochs": 100, "spatial_size": 256, "batch_size": 16, "nets": ALL_NETS,
                "limit_batch": 64, "limit_steps": 30}
CPU_DEFAULTS = {"n": 12, "folds": 2, "epochs": 1, "spatial_size": 32, "batch_size": 4,
                "nets": ("resnet18", "resnet34"), "limit_batch": 4, "limit_steps": 3}


def tiny_cohort(out: str | Path, n: int = 16, shape: tuple[int, int, int] = (24, 24, 6), seed: int = 0,
                n_validation: int = 4) -> Path:
    """Write a tiny three-phase cohort (NIfTI volumes + masks, label-dependent ROI contrast) for CPU runs.

    A bright ellipsoid tumour sits in each volume; its contrast differs by P53 label and phase, so per-phase
    CNNs have something to learn. Returns the path of ``cohort.csv``.
    """
    import nibabel as nib

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    n_train = n - n_validation
    for i in range(n):
        pid = f"T{i:03d}"
        label = i % 2
        row = {"patient_id": pid, "split": "train" if i < n_train else "validation", "p53": label}
        for j, phase in enumerate(("ap", "pvp", "dp")):
            c = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
            radii = np.array([shape[0] / 4, shape[1] / 5, max(shape[2] / 3, 1.5)]) * rng.uniform(0.8, 1.2)
            mask = (((grid - c) / radii) ** 2).sum(-1) <= 1
            img = rng.normal(100, 10, shape) + mask * (40 + 30 * label * (j + 1) / 3)
            affine = np.diag([1.0, 1.0, 2.0, 1.0])
            nib.save(nib.Nifti1Image(img.astype(np.float32), affine), out / "images" / f"{pid}_{phase}.nii.gz")
            nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), out / "masks" / f"{pid}_{phase}_mask.nii.gz")
            row[phase] = f"images/{pid}_{phase}.nii.gz"
            row[f"{phase}_mask"] = f"masks/{pid}_{phase}_mask.nii.gz"
        rows.append(row)
    path = out / "cohort.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def compute_limit(net_name: str, device: torch.device, in_channels: int = 3, batch: int = 64, size: int = 256,
                  steps: int = 30, warmup: int = 5) -> float:
    """Images/s of a steady-state training step on device-resident random inputs (the throughput ceiling).

    bf16 autocast + channels_last on CUDA (fp32 on CPU); AdamW; weighted cross-entropy as in training.
    """
    from p53hcc.tools.dl.nets import build_net

    torch.manual_seed(0)
    net = build_net(net_name, in_channels=in_channels, num_classes=2).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.ones(2, device=device))
    x = torch.randn(batch, in_channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_epoch(splits: dict) -> int:
    """Training images one model set sees per epoch: every fold model (K-1 folds) plus the full model."""
    n = len(splits["fold_of"])
    return sum(n - len(f["val"]) for f in splits["folds"]) + n


def make_study(out: Path, cfg: dict, gpu: bool, seed: int = 0) -> Path:
    """Synthetic cohort (paper size on GPU, tiny on CPU) + datalist/splits in ``out/study``; returns the CSV."""
    from p53hcc.tools.cohort.splits import write_datalist

    if gpu:
        from p53hcc.tools.cohort.synth.cohort import make_cohort

        csv = Path(make_cohort(n=cfg["n"], out=out / "cohort", seed=seed, size="paper", second_reader=False))
        csv = csv if csv.suffix == ".csv" else csv / "cohort.csv"
    else:
        csv = tiny_cohort(out / "cohort", n=cfg["n"], n_validation=max(2, cfg["n"] // 4), seed=seed)
    write_datalist(csv, out / "study", folds=cfg["folds"], seed=seed)
    return csv


def run_sweep(cfg: dict, device: torch.device, out: Path) -> dict:
    """Cache crops, then train both arms for every net; returns the result record."""
    from p53hcc.tools.cohort.splits import select_items
    from p53hcc.tools.dl.arms import get_arm
    from p53hcc.tools.dl.bundle import training_params
    from p53hcc.tools.dl.crossfit import train_arm

    gpu = device.type == "cuda"
    t_start = time.perf_counter()
    csv = make_study(out, cfg, gpu)
    study = out / "study"
    splits = json.loads((study / "splits.json").read_text())
    params = training_params("mc", spatial_size=cfg["spatial_size"], batch_size=cfg["batch_size"], n4=False,
                             precision="bf16" if gpu else "fp32", epochs=cfg["epochs"])
    t0 = time.perf_counter()
    items = select_items(study / "datalist.json", "all")
    for arm in ("mc", "ff"):
        for unit in get_arm(arm).units:
            get_arm(arm).crops(study, items, params, unit)
    crop_s = time.perf_counter() - t0
    per_epoch = images_per_epoch(splits)
    train_kw = {**{k: params[k] for k in ("spatial_size", "batch_size", "n4", "precision")},
                "workers": int(cfg.get("workers", 1))}
    rows = []
    for net in cfg["nets"]:
        row = {"net": net}
        for ch in (3, 1):
            row[f"limit_{ch}ch"] = compute_limit(net, device, ch, cfg["limit_batch"], cfg["spatial_size"],
                                                 cfg["limit_steps"])
        t = time.perf_counter()
        train_arm(csv, study, arm="mc", net=net, epochs=cfg["epochs"], device=str(device), **train_kw)
        mc_s = time.perf_counter() - t
        t = time.perf_counter()
        train_arm(csv, study, arm="ff", net=net, epochs=cfg["epochs"], device=str(device), **train_kw)
        ff_s = time.perf_counter() - t
        for arm, secs, images, limit in (("mc", mc_s, per_epoch * cfg["epochs"], row["limit_3ch"]),
                                         ("ff", ff_s, 3 * per_epoch * cfg["epochs"], row["limit_1ch"])):
            row[arm] = {"seconds": secs, "images": images, "images_per_s": images / secs,
                        "ratio_to_limit": images / secs / limit}
        rows.append(row)
        print_table(rows)
    total = time.perf_counter() - t_start
    return {"rows": rows, "crop_cache_s": crop_s, "sweep_train_s": sum(r["mc"]["seconds"] + r["ff"]["seconds"]
                                                                        for r in rows), "total_s": total}


def device_tag(device: torch.device) -> str:
    """``cpu`` or the GPU's name made file-safe (``cuda_NVIDIA_H100_80GB_HBM3``)."""
    if device.type != "cuda":
        return "cpu"
    return "cuda_" + re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(device)).strip("_")


def print_table(rows: list[dict]) -> None:
    """Images/s per network next to the same-run limit."""
    print(f"{'net':<12}{'limit 3ch':>11}{'MC img/s':>10}{'MC ratio':>9}{'limit 1ch':>11}{'FF img/s':>10}"
          f"{'FF ratio':>9}{'MC s':>8}{'FF s':>8}")
    for r in rows:
        print(f"{r['net']:<12}{r['limit_3ch']:>11.1f}{r['mc']['images_per_s']:>10.1f}{r['mc']['ratio_to_limit']:>9.2f}"
              f"{r['limit_1ch']:>11.1f}{r['ff']['images_per_s']:>10.1f}{r['ff']['ratio_to_limit']:>9.2f}"
              f"{r['mc']['seconds']:>8.1f}{r['ff']['seconds']:>8.1f}")


def main(argv: list[str] | None = None) -> Path:
    """Parse options, run the sweep, write ``benchmarks/results/train_sweep_<device>.json``; returns its path."""
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--nets", default=None, help="comma-separated networks (default: all six on GPU, 2 on CPU)")
    for key in ("n", "folds", "epochs", "spatial_size", "batch_size", "limit_batch", "limit_steps"):
        ap.add_argument(f"--{key}", type=int, default=None)
    ap.add_argument("--workers", type=int, default=1, help="models trained concurrently per arm (small nets)")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--results", default=str(RESULTS), help="folder of the JSON result")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    cfg = dict(GPU_DEFAULTS if gpu else CPU_DEFAULTS)
    cfg.update({k: v for k, v in vars(args).items() if k in cfg and v is not None})
    if args.nets:
        cfg["nets"] = tuple(n.strip() for n in args.nets.split(",") if n.strip())
    with tempfile.TemporaryDirectory(prefix="train_sweep_") as tmp:
        result = run_sweep({**cfg, "workers": args.workers}, device, Path(args.work or tmp))
    record = {
        "benchmark": "train_sweep", "device": device_tag(device),
        "gpu_measured": gpu,
        "note": ("Measured on the GPU in this run." if gpu else
                 "GPU figures not measured: no GPU was available to this run. This is the tiny CPU variant "
                 "(tiny images, 1 epoch, 2 folds, 2 small nets) that proves the script works; its images/s and "
                 "ratios are CPU numbers for tiny inputs and say nothing about GPU throughput."),
        "config": {**cfg, "nets": list(cfg["nets"]), "workers": args.workers, "amp_bf16": gpu, "channels_last": True, "n4": False,
                   "limit_input": f"batch {cfg['limit_batch']}, Cx{cfg['spatial_size']}x{cfg['spatial_size']}"},
        **result,
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda if gpu else None},
    }
    from p53hcc.tools.io import atomic_write_json

    dest = atomic_write_json(Path(args.results) / f"train_sweep_{device_tag(device)}.json", record)
    print_table(result["rows"])
    print(f"crop cache {result['crop_cache_s']:.1f} s, sweep training {result['sweep_train_s']:.1f} s, "
          f"total {result['total_s']:.1f} s -> {dest}")
    if not gpu:
        print("GPU figures not measured (no GPU in this run).")
    return dest


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
