"""Grad-CAM heat maps of the DL arms (paper Figure S2) with the model-randomisation sanity check.

Maps come from ``monai.visualize.GradCAM`` on the last convolutional stage of the network, for the class
"P53 mutated". They are saved as ``.npy`` arrays and as PNG overlays on the three phases (AP, PVP, DP).

Sanity check (Adebayo et al., NeurIPS 2018): a saliency method that explains the *model* must give different
maps when the model's weights are re-initialised. For every patient the Spearman rank correlation between the
map of the trained network and that of the same architecture with re-initialised weights is reported
(``sanity.csv``); a high correlation means the map shows image structure (edges), not what the model learned.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from tools.errors import P53hccError
from tools.io_utils import atomic_path, atomic_write_table

PHASES = ("ap", "pvp", "dp")


def gradcam_maps(net: nn.Module, x: torch.Tensor, class_idx: int = 1, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps ``[N, H, W]`` (each scaled to [0, 1] by MONAI) of ``class_idx`` for images ``x [N,C,H,W]``."""
    from monai.visualize import GradCAM

    from tools.nets import gradcam_layer

    net = net.eval()
    cam = GradCAM(nn_module=net, target_layers=layer or gradcam_layer(net))
    maps = [cam(x=x[i:i + 1].float(), class_idx=class_idx).detach() for i in range(len(x))]
    return torch.cat(maps)[:, 0].cpu().numpy() if maps else np.zeros((0, *x.shape[2:]))


def randomised_copy(net: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``net`` with every layer's weights re-initialised (full model randomisation)."""
    torch.manual_seed(seed)
    clone = copy.deepcopy(net)
    for module in clone.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return clone.eval()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (NaN when either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def sanity_check(net: nn.Module, x: torch.Tensor, ids: list[str], seed: int = 0,
                 maps: np.ndarray | None = None, threshold: float = 0.5) -> pd.DataFrame:
    """Spearman rho between trained-model and randomised-model Grad-CAM maps per patient.

    Returns:
        ``patient_id, spearman_rho, differs`` (``differs`` = rho below ``threshold``, i.e. the map depends on
        the learned weights).
    """
    trained = gradcam_maps(net, x) if maps is None else maps
    rand = gradcam_maps(randomised_copy(net, seed), x)
    rho = [spearman(a, b) for a, b in zip(trained, rand)]
    return pd.DataFrame({"patient_id": ids, "spearman_rho": rho,
                         "differs": [bool(r < threshold) if np.isfinite(r) else True for r in rho]})


def save_overlay(dest: str | os.PathLike, image: np.ndarray, cam: np.ndarray | list, title: str = "") -> Path:
    """PNG of the phases (grey) with the Grad-CAM map overlaid; ``cam`` is one map or one per phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = image.shape[0]
    cams = list(cam) if np.ndim(cam) == 3 else [cam] * n
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(image[i].T, cmap="gray", origin="lower")
        ax.imshow(cams[i].T, cmap="jet", alpha=0.4, vmin=0, vmax=1, origin="lower")
        ax.set_title(PHASES[i].upper() if n == 3 else f"channel {i}")
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return dest


def _choose(items: list[dict], patients: str | list | None, n: int) -> list[dict]:
    if patients:
        wanted = [p.strip() for p in patients.split(",")] if isinstance(patients, str) else [str(p) for p in patients]
        by_id = {d["patient_id"]: d for d in items}
        missing = [p for p in wanted if p not in by_id]
        if missing:
            raise P53hccError(f"Grad-CAM: patients not in datalist.json: {', '.join(missing)}")
        return [by_id[p] for p in wanted]
    pool = [d for d in items if d.get("split") == "validation"] or items
    return pool[:n]


def gradcam_command(out: str | os.PathLike, arm: str = "mc", net: str = "resnet34", patients=None,
                    n: int = 4) -> str:
    """Grad-CAM of the full-cohort model of one arm for chosen patients; writes PNG, .npy and ``sanity.csv``.

    Args:
        out: study folder (``tools.train.train_arm`` must have run for ``arm``/``net``).
        arm: ``"mc"`` (one 3-channel model) or ``"ff"`` (one 1-channel model per phase, ``full/<phase>``).
        net: network name.
        patients: comma-separated patient ids (default: the first ``n`` validation patients).
        n: number of patients when none are named.

    Returns:
        The output folder ``out/figures/gradcam/<arm>_<net>``.
    """
    from tools.nets import check_net_name, load_net
    from tools.train import DEFAULTS, datalist_part, roi_tensors, source_items

    out, net = Path(out), check_net_name(net)
    full = out / "dl" / arm / net / "full"
    if not full.is_dir():
        raise P53hccError(f"{full} not found: run `p53hcc train --arm {arm} --net {net}` first")
    cfg = full / "config.json"
    params = {**DEFAULTS, **(json.loads(cfg.read_text()) if cfg.is_file() else {})}
    items = source_items(_choose(datalist_part(out / "datalist.json", "all"), patients, n), out, params)
    x = roi_tensors(items, out, params)
    ids = [d["patient_id"] for d in items]
    dest = out / "figures" / "gradcam" / f"{arm}_{net}"
    if arm == "mc":
        model = load_net(full / "model.pt", net)
        maps = gradcam_maps(model, x)
        sanity = sanity_check(model, x, ids, maps=maps)
        per_patient = [m for m in maps]
    else:
        phase_maps, rows = [], []
        for i, phase in enumerate(PHASES):
            model = load_net(full / phase / "model.pt", net)
            xi = x[:, i:i + 1]
            m = gradcam_maps(model, xi)
            phase_maps.append(m)
            rows.append(sanity_check(model, xi, ids, maps=m).assign(phase=phase))
        sanity = pd.concat(rows, ignore_index=True)
        per_patient = list(np.stack(phase_maps, axis=1))
    for pid, img, m in zip(ids, x.numpy(), per_patient):
        with atomic_path(dest / f"{pid}.npy") as tmp:
            np.save(tmp, m)
        save_overlay(dest / f"{pid}.png", img, m, title=f"{pid}  {arm}_{net}  Grad-CAM (P53 mutated)")
    atomic_write_table(dest / "sanity.csv", sanity)
    return str(dest)


def gradcam_frozen(weights: str | os.PathLike, cohort_csv: str | os.PathLike, out: str | os.PathLike,
                   arm: str = "mc", net: str = "resnet34", work: str | Path | None = None) -> Path:
    """Grad-CAM PNG/.npy (and ``sanity.csv``) of a frozen model folder (``.../full``) for new patients.

    MC: one map per patient from the 3-channel network. FF: one map per phase from that phase's network, on the
    crops the FF arm was trained with (``.npy`` holds ``[3, H, W]``; ``sanity.csv`` has a ``phase`` column).
    ``work`` is the folder holding the new patients' ``preprocessed/`` volumes (needed when the model was trained
    on preprocessed volumes); default ``out``.
    """
    from tools.nets import load_net
    from tools.train import DEFAULTS, cohort_items, roi_tensors, source_items

    weights, out = Path(weights), Path(out)
    if arm == "ff":
        return _gradcam_frozen_ff(weights, cohort_csv, out, net, Path(work or out))
    if arm != "mc":
        raise P53hccError(f"Grad-CAM of a frozen model: unknown arm {arm!r} (mc or ff)")
    cfg = weights / "config.json"
    params = {**DEFAULTS, **(json.loads(cfg.read_text()) if cfg.is_file() else {})}
    items = source_items(cohort_items(cohort_csv), work or out, params)
    ids = [d["patient_id"] for d in items]
    x = roi_tensors(items, out, params)
    model = load_net(weights / "model.pt", net)
    maps = gradcam_maps(model, x)
    for pid, img, m in zip(ids, x.numpy(), maps):
        with atomic_path(out / f"{pid}.npy") as tmp:
            np.save(tmp, m)
        save_overlay(out / f"{pid}.png", img, m, title=f"{pid}  {arm}_{net}  Grad-CAM (P53 mutated)")
    atomic_write_table(out / "sanity.csv", sanity_check(model, x, ids, maps=maps))
    return out


def _gradcam_frozen_ff(weights: Path, cohort_csv, out: Path, net: str, work: Path) -> Path:
    """Per-phase Grad-CAM of a frozen FF folder (``full/<phase>/model.pt``) on the FF arm's own phase crops."""
    from tools.nets import load_net
    from tools.train_ff import frozen_phase_crops

    images, maps, rows, ids = [], [], [], None
    for phase in PHASES:
        path = weights / phase / "model.pt"
        if not path.is_file():
            raise P53hccError(f"{path} not found: the frozen FF model lacks its {phase} network")
        ids, x, _ = frozen_phase_crops(weights, cohort_csv, work, phase)
        model = load_net(path, net)
        m = gradcam_maps(model, x)
        images.append(x[:, 0].numpy())
        maps.append(m)
        rows.append(sanity_check(model, x, ids, maps=m).assign(phase=phase))
    images, maps = np.stack(images, axis=1), np.stack(maps, axis=1)
    for pid, img, m in zip(ids, images, maps):
        with atomic_path(out / f"{pid}.npy") as tmp:
            np.save(tmp, m)
        save_overlay(out / f"{pid}.png", img, m, title=f"{pid}  ff_{net}  Grad-CAM per phase (P53 mutated)")
    atomic_write_table(out / "sanity.csv", pd.concat(rows, ignore_index=True))
    return out
