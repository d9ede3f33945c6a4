"""Grad-CAM heat maps of the DL arms (paper Figure S2) with the model-randomisation sanity check.

Maps come from ``monai.visualize.GradCAM`` for the class "P53 mutated", upsampled bilinearly (MONAI's
``default_upsampler``) to the network's input crop. They are kept in their own units (non-negative, the ReLU of
the gradient-weighted activations): MONAI's default post-processing would min-max scale each map *and invert it*
(``default_normalizer`` maps the maximum to 0; Project-MONAI/tutorials#1796), and a per-map scale would put the
FF arm's three phase networks on different colour scales. Each patient's maps are scaled together by their
common maximum when they are saved (``.npy``, in [0, 1]) and drawn (:mod:`p53hcc.fusion.report.gradcam_figure`,
called by :mod:`p53hcc.tools.pipeline.explain`).

Target layer: the map has one cell per position of the layer's feature map, and each ResNet/DenseNet stage
halves it; at the demo's 32 px input the last stage is 1x1 (one value: no location at all), at the paper's
256 px it is 8x8. :func:`choose_layer` takes the deepest stage whose map has at least :data:`MIN_CELLS` cells a
side at the actual input size (or the user's layer), refuses a 1x1 map and warns about a 2x2 one.

Sanity check (Adebayo et al., NeurIPS 2018): a saliency method that explains the *model* must give different
maps when the model's weights are re-initialised. For every patient the Spearman rank correlation between the
map of the trained network and that of the same architecture with re-initialised weights is reported
(``sanity.csv``, and in each figure's caption); a high correlation means the map shows image structure (edges),
not what the model learned.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from p53hcc.tools.cohort.ids import patient_path
from p53hcc.tools.cohort.splits import cohort_items, select_items
from p53hcc.tools.dl.arms import get_arm, load_unit_network, read_config
from p53hcc.tools.dl.bundle import training_defaults
from p53hcc.tools.dl.engine import predict_scores, source_items
from p53hcc.tools.dl.nets import check_net_name, feature_map_sizes
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, atomic_write_json, atomic_write_table
from p53hcc.tools.parallel import fixed_threads

log = logging.getLogger(__name__)
#: Smallest feature map (cells a side) the automatic choice of the target layer accepts.
MIN_CELLS = 7
#: Maps this coarse (cells a side) or coarser are drawn with a warning in the log and the caption.
COARSE_CELLS = 2
#: A map "differs" from the randomised network's (depends on the learned weights) when their rho is below this.
SANITY_RHO = 0.5


@dataclass(frozen=True)
class TargetLayer:
    """The Grad-CAM target layer of one network at one input size, and how it was chosen."""

    name: str
    cells: tuple[int, ...]
    input_size: tuple[int, ...]
    chosen_by: str  # "auto" (deepest with >= MIN_CELLS cells a side) or "user"

    @property
    def coarse(self) -> bool:
        return min(self.cells) <= COARSE_CELLS

    def describe(self) -> str:
        """E.g. ``layer layer1 (8x8 cells) at 32x32 px input``."""
        return (f"layer {self.name} ({'x'.join(map(str, self.cells))} cells) at "
                f"{'x'.join(map(str, self.input_size))} px input")

    def warning(self) -> str | None:
        """A one-line warning for a coarse map, else None."""
        if not self.coarse:
            return None
        return (f"coarse map: {self.describe()} shows at most which part of the crop matters; use a larger "
                f"input (spatial_size) or a shallower layer")


def choose_layer(net: nn.Module, input_shape: tuple[int, ...], layer: str | None = None,
                 min_cells: int = MIN_CELLS) -> TargetLayer:
    """The target layer for inputs ``[C, H, W]``: ``layer`` if given, else the deepest candidate stage whose
    feature map has at least ``min_cells`` cells a side (the shallowest stage when none has).

    Raises:
        P53hccError: the layer does not exist, or its map would be 1x1 (a single value, no location).
    """
    sizes = feature_map_sizes(net, tuple(input_shape), None if layer is None else (layer,))
    if layer is None:
        fine = [name for name, cells in sizes.items() if min(cells) >= min_cells]
        name = fine[-1] if fine else next(iter(sizes))
    else:
        name = layer
    target = TargetLayer(name, sizes[name], tuple(input_shape[1:]), "auto" if layer is None else "user")
    if max(target.cells) <= 1:
        options = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in feature_map_sizes(
            net, tuple(input_shape)).items())
        raise P53hccError(f"Grad-CAM: {target.describe()} is a single value, which says nothing about where; "
                          f"choose a shallower layer (feature maps: {options}) or a larger input")
    if target.coarse:
        log.warning("Grad-CAM %s", target.warning())
    return target


def gradcam_maps(net: nn.Module, x: torch.Tensor, class_idx: int = 1, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps ``[N, H, W]`` of ``class_idx`` for images ``x [N, C, H, W]`` at ``layer`` (default
    :func:`choose_layer`), upsampled bilinearly to ``H x W``, unscaled (>= 0; all 0 where nothing supports the class).
    """
    from monai.visualize import GradCAM

    layer = layer or choose_layer(net, tuple(x.shape[1:])).name
    # MONAI's hooks cannot be removed: they go on a copy, so the caller's network is left as it was
    cam = GradCAM(nn_module=copy.deepcopy(net).eval(), target_layers=layer, postprocessing=lambda m: m)
    maps = [cam(x=x[i:i + 1].float(), class_idx=class_idx).detach() for i in range(len(x))]
    return torch.cat(maps)[:, 0].cpu().numpy() if maps else np.zeros((0, *x.shape[2:]))


def scale_maps(maps: np.ndarray) -> np.ndarray:
    """Maps divided by their common maximum (one colour scale for all of them); all zeros stay zeros."""
    top = float(np.max(maps)) if np.size(maps) else 0.0
    return maps / top if top > 0 else np.zeros_like(maps)


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
                 maps: np.ndarray | None = None, threshold: float = SANITY_RHO, layer: str | None = None
                 ) -> pd.DataFrame:
    """Spearman rho between trained-model and randomised-model Grad-CAM maps (same layer) per patient.

    Returns:
        ``patient_id, spearman_rho, differs, reason``: ``differs`` = rho below ``threshold``, i.e. the map
        depends on the learned weights. Rho is NaN when a map is constant (``reason`` says which): a constant
        trained map shows nothing (``differs`` False); a constant randomised map (Grad-CAM's ReLU often leaves
        nothing of a random network's map) beside a structured trained one means the structure comes from the
        learned weights (``differs`` True).
    """
    layer = layer or choose_layer(net, tuple(x.shape[1:])).name
    trained = gradcam_maps(net, x, layer=layer) if maps is None else maps
    rand = gradcam_maps(randomised_copy(net, seed), x, layer=layer)
    rho = [spearman(a, b) for a, b in zip(trained, rand)]
    reason = ["trained map constant" if np.ptp(a) == 0 else "randomised map constant" if np.ptp(b) == 0 else ""
              for a, b in zip(trained, rand)]
    differs = [bool(r < threshold) if np.isfinite(r) else why == "randomised map constant"
               for r, why in zip(rho, reason)]
    return pd.DataFrame({"patient_id": ids, "spearman_rho": rho, "differs": differs, "reason": reason})


def choose_patients(items: list[dict], patients: str | list | None, n: int) -> list[dict]:
    """The items of the named ``patients`` (comma-separated or a list), else the first ``n`` validation patients."""
    if patients:
        wanted = [p.strip() for p in patients.split(",")] if isinstance(patients, str) else [str(p) for p in patients]
        by_id = {d["patient_id"]: d for d in items}
        missing = [p for p in wanted if p not in by_id]
        if missing:
            raise P53hccError(f"Grad-CAM: patients not in datalist.json: {', '.join(missing)}")
        return [by_id[p] for p in wanted]
    pool = [d for d in items if d.get("split") == "validation"] or items
    return pool[:n]


@dataclass
class Explanation:
    """Grad-CAM of one trained full-cohort folder for some patients: the maps and everything a figure shows.

    Arrays are per patient (first axis, in ``ids`` order): ``images`` and ``masks`` the crops ``[N, C, S, S]``,
    ``maps`` ``[N, units, S, S]`` scaled by each patient's maximum (in [0, 1]), ``probs`` ``[N, units]``, and the
    sanity check's ``rho``, ``differs``, ``reason`` ``[N, units]``; ``sanity`` is the tidy ``sanity.csv``."""

    arm: str
    net: str
    units: tuple[str | None, ...]
    ids: list[str]
    images: np.ndarray
    masks: np.ndarray
    maps: np.ndarray
    probs: np.ndarray
    rho: np.ndarray
    differs: np.ndarray
    reason: np.ndarray
    sanity: pd.DataFrame
    targets: list[TargetLayer]


def explain(weights: Path, items: list[dict], crop_root: Path, arm: str, net: str | None = None,
            layer: str | None = None) -> Explanation:
    """Grad-CAM maps and their sanity check of a trained full-cohort folder for ``items``.

    Each arm explains itself on its own crops: MC one map per patient from the three-channel network; FF one map
    per phase from that phase's network. Each patient's maps are scaled by their common maximum.
    """
    with model_threads(weights):
        return _explain(weights, items, crop_root, arm, net, layer)


def model_threads(weights: Path):
    """:func:`~p53hcc.tools.parallel.fixed_threads` at the thread count the networks of a trained folder were
    trained and scored with in the study, so maps (and their upsampled display) are the same bits on any machine."""
    return fixed_threads(int(read_config(weights).get("cpu_threads", 1)))


def _explain(weights: Path, items: list[dict], crop_root: Path, arm: str, net: str | None, layer: str | None
             ) -> Explanation:
    spec = get_arm(arm)
    params = read_config(weights)
    net = net or params["net"]
    ids = [d["patient_id"] for d in items]
    images, masks, maps, probs, sanity, targets = [], [], [], [], [], []
    for unit in spec.units:
        x = spec.crops(crop_root, items, params, unit)
        model = load_unit_network(weights, unit, net)
        target = choose_layer(model, tuple(x.shape[1:]), layer)
        m = gradcam_maps(model, x, layer=target.name)
        check = sanity_check(model, x, ids, maps=m, layer=target.name)
        sanity.append(check if unit is None else check.assign(phase=unit))
        images.append(x.numpy())
        masks.append(spec.mask_crops(crop_root, items, params, unit).numpy())
        maps.append(m)
        probs.append(predict_scores(model, x, "cpu", precision="fp32"))
        targets.append(target)
    per_patient = np.stack(maps, axis=1)  # [N, units, H, W]
    rho, differs, reason = (np.stack([s[c].to_numpy() for s in sanity], axis=1)
                            for c in ("spearman_rho", "differs", "reason"))
    return Explanation(spec.name, net, tuple(spec.units), ids, np.concatenate(images, axis=1),
                       np.concatenate(masks, axis=1), np.stack([scale_maps(m) for m in per_patient]),
                       np.stack(probs, axis=1), rho, differs, reason, pd.concat(sanity, ignore_index=True), targets)


def write_maps(dest: Path, exp: Explanation) -> Path:
    """The data of an explanation: ``<patient>.npy`` (``[H, W]`` for MC, ``[3, H, W]`` for FF, in [0, 1]),
    ``sanity.csv`` and ``gradcam.json`` (the layer used per network)."""
    for pid, scaled in zip(exp.ids, exp.maps):
        with atomic_path(patient_path(dest, pid, ".npy")) as tmp:
            np.save(tmp, scaled[0] if len(exp.units) == 1 else scaled)
    atomic_write_table(dest / "sanity.csv", exp.sanity)
    atomic_write_json(dest / "gradcam.json", {"arm": exp.arm, "net": exp.net, "min_cells": MIN_CELLS,
                                              "layers": {str(u or exp.arm): asdict(t)
                                                         for u, t in zip(exp.units, exp.targets)}})
    return dest


def study_patients(out: str | os.PathLike, arm: str = "mc", net: str | None = None, patients=None,
                   n: int = 4) -> tuple[Path, list[dict], str, str]:
    """``(full-cohort folder, items, arm, net)`` of a study's trained arm for the chosen patients (see
    :func:`choose_patients`); the arm must be trained for ``net`` (default: the bundle's)."""
    out, spec = Path(out), get_arm(arm)
    net = check_net_name(net or training_defaults(spec.name)["net"])
    full = out / "dl" / spec.name / net / "full"
    if not full.is_dir():
        raise P53hccError(f"{full} not found: run `p53hcc train --arm {spec.name} --net {net}` first")
    items = source_items(choose_patients(select_items(out / "datalist.json", "all"), patients, n), out,
                         read_config(full))
    return full, items, spec.name, net


def new_patients(weights: str | os.PathLike, cohort_csv: str | os.PathLike, work: str | os.PathLike) -> list[dict]:
    """The items of a new cohort for a frozen full-cohort folder; ``work`` holds their ``preprocessed/`` volumes
    (needed when the model was trained on preprocessed volumes) and the crop cache."""
    return source_items(cohort_items(cohort_csv), Path(work), read_config(Path(weights)))
