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
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from p53hcc.tools.cohort.splits import cohort_items, select_items
from p53hcc.tools.dl.arms import get_arm, load_unit_network, read_config
from p53hcc.tools.dl.bundle import training_defaults
from p53hcc.tools.dl.engine import source_items
from p53hcc.tools.dl.nets import check_net_name, gradcam_layer
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, atomic_write_table
from p53hcc.tools.schema import PHASE_LABELS, PHASES


def gradcam_maps(net: nn.Module, x: torch.Tensor, class_idx: int = 1, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps ``[N, H, W]`` (each scaled to [0, 1] by MONAI) of ``class_idx`` for images ``x [N,C,H,W]``."""
    from monai.visualize import GradCAM

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
        ax.set_title(PHASE_LABELS[PHASES[i]] if n == 3 else f"channel {i}")
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


def gradcam_model(weights: Path, items: list[dict], crop_root: Path, dest: Path, arm: str, net: str | None = None
                  ) -> Path:
    """Grad-CAM PNG overlays, ``.npy`` maps and ``sanity.csv`` of a trained full-cohort folder for ``items``.

    Each arm explains itself on its own crops: MC one map per patient from the three-channel network; FF one map
    per phase from that phase's network (``.npy`` holds ``[3, H, W]``; ``sanity.csv`` has a ``phase`` column).
    """
    spec = get_arm(arm)
    params = read_config(weights)
    net = net or params["net"]
    ids = [d["patient_id"] for d in items]
    images, maps, sanity = [], [], []
    for unit in spec.units:
        x = spec.crops(crop_root, items, params, unit)
        model = load_unit_network(weights, unit, net)
        m = gradcam_maps(model, x)
        check = sanity_check(model, x, ids, maps=m)
        sanity.append(check if unit is None else check.assign(phase=unit))
        images.append(x.numpy())
        maps.append(m)
    images = np.concatenate(images, axis=1)
    per_patient = maps[0] if len(maps) == 1 else np.stack(maps, axis=1)
    what = "Grad-CAM (P53 mutated)" if len(maps) == 1 else "Grad-CAM per phase (P53 mutated)"
    for pid, img, m in zip(ids, images, per_patient):
        with atomic_path(dest / f"{pid}.npy") as tmp:
            np.save(tmp, m)
        save_overlay(dest / f"{pid}.png", img, m, title=f"{pid}  {spec.name}_{net}  {what}")
    atomic_write_table(dest / "sanity.csv", pd.concat(sanity, ignore_index=True))
    return dest


def gradcam_command(out: str | os.PathLike, arm: str = "mc", net: str | None = None, patients=None,
                    n: int = 4) -> str:
    """Grad-CAM of the full-cohort model of one arm for chosen patients of a study.

    Args:
        out: study folder (the arm must be trained for ``net``).
        arm: ``"mc"`` or ``"ff"``.
        net: network name (default: the bundle's).
        patients: comma-separated patient ids (default: the first ``n`` validation patients).
        n: number of patients when none are named.

    Returns:
        The output folder ``out/figures/gradcam/<arm>_<net>``.
    """
    out, spec = Path(out), get_arm(arm)
    net = check_net_name(net or training_defaults(spec.name)["net"])
    full = out / "dl" / spec.name / net / "full"
    if not full.is_dir():
        raise P53hccError(f"{full} not found: run `p53hcc train --arm {spec.name} --net {net}` first")
    items = source_items(_choose(select_items(out / "datalist.json", "all"), patients, n), out, read_config(full))
    return str(gradcam_model(full, items, out, out / "figures" / "gradcam" / f"{spec.name}_{net}", spec.name, net))


def gradcam_frozen(weights: str | os.PathLike, cohort_csv: str | os.PathLike, out: str | os.PathLike,
                   arm: str = "mc", net: str | None = None, work: str | os.PathLike | None = None) -> Path:
    """Grad-CAM of a frozen full-cohort folder for the new patients of ``cohort_csv`` into ``out``.

    ``work`` holds the new patients' ``preprocessed/`` volumes (needed when the model was trained on preprocessed
    volumes) and the crop cache; default ``out``.
    """
    weights, work = Path(weights), Path(work or out)
    items = source_items(cohort_items(cohort_csv), work, read_config(weights))
    return gradcam_model(weights, items, work, Path(out), arm, net)
