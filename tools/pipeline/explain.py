"""Grad-CAM figures of a study's trained arm (``p53hcc gradcam``, the study's gradcam stage) and of a frozen model
for new patients (``p53hcc predict``): the maps of :mod:`p53hcc.tools.dl.gradcam` drawn by
:mod:`p53hcc.fusion.report.gradcam_figure`.

A folder holds per patient ``<id>.npy`` (the maps) and ``<id>.png`` (the figure), and ``sanity.csv``,
``gradcam.json`` (the layer used) and ``captions.json`` (each figure's caption, read by the report's gallery).
"""
from __future__ import annotations

import os
from pathlib import Path

from p53hcc.fusion.report.gradcam_figure import figure_caption, save_overlay
from p53hcc.tools.cohort.ids import patient_path
from p53hcc.tools.dl.gradcam import (
    Explanation,
    explain,
    model_threads,
    new_patients,
    study_patients,
    write_maps,
)
from p53hcc.tools.io import atomic_write_json
from p53hcc.tools.schema import NET_LABELS


def draw(dest: Path, exp: Explanation) -> Path:
    """One figure per patient (``<id>.png``) and ``captions.json``."""
    captions = {}
    warning = exp.targets[0].warning()
    for i, pid in enumerate(exp.ids):
        caption = figure_caption(exp.arm, exp.net, exp.targets[0].describe(), exp.rho[i], exp.differs[i],
                                 exp.reason[i], exp.units, zero=not exp.maps[i].any())
        captions[f"{pid}.png"] = caption + (f" WARNING: {warning}." if warning else "")
        save_overlay(patient_path(dest, pid, ".png"), exp.images[i], exp.maps[i], exp.masks[i],
                     title=f"{pid} · {exp.arm.upper()} {NET_LABELS.get(exp.net, exp.net)}",
                     panel_notes=[f"P(mutated) {p:.2f}" for p in exp.probs[i]], caption=caption, warning=warning)
    atomic_write_json(dest / "captions.json", captions)
    return dest


def gradcam_figures(weights: Path, items: list[dict], crop_root: Path, dest: Path, arm: str, net: str | None = None,
                    layer: str | None = None) -> Path:
    """Grad-CAM maps and figures of a trained full-cohort folder for ``items`` into ``dest``."""
    with model_threads(weights):  # the figures upsample the crops with torch: the study's thread count too
        exp = explain(weights, items, crop_root, arm, net, layer=layer)
        write_maps(dest, exp)
        return draw(dest, exp)


def gradcam_command(out: str | os.PathLike, arm: str = "mc", net: str | None = None, patients=None,
                    n: int = 4, layer: str | None = None) -> str:
    """Grad-CAM of the full-cohort model of one arm for chosen patients of a study.

    Args:
        out: study folder (the arm must be trained for ``net``).
        arm: ``"mc"`` or ``"ff"``.
        net: network name (default: the bundle's).
        patients: comma-separated patient ids (default: the first ``n`` validation patients).
        n: number of patients when none are named.
        layer: target layer (default: the deepest stage with at least ``MIN_CELLS`` cells a side at the
            study's input size; e.g. ``layer3`` for a ResNet, ``features.transition3.relu`` for DenseNet121).

    Returns:
        The output folder ``out/figures/gradcam/<arm>_<net>``.
    """
    out = Path(out)
    full, items, arm, net = study_patients(out, arm, net, patients, n)
    return str(gradcam_figures(full, items, out, out / "figures" / "gradcam" / f"{arm}_{net}", arm, net, layer=layer))


def gradcam_frozen(weights: str | os.PathLike, cohort_csv: str | os.PathLike, out: str | os.PathLike,
                   arm: str = "mc", net: str | None = None, work: str | os.PathLike | None = None,
                   layer: str | None = None) -> Path:
    """Grad-CAM of a frozen full-cohort folder for the new patients of ``cohort_csv`` into ``out``.

    ``work`` holds the new patients' ``preprocessed/`` volumes (needed when the model was trained on preprocessed
    volumes) and the crop cache; default ``out``.
    """
    weights, work = Path(weights), Path(work or out)
    return gradcam_figures(weights, new_patients(weights, cohort_csv, work), work, Path(out), arm, net, layer=layer)
