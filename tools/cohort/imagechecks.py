"""Checks of one patient's voxels against what the study will need from them, run by ``validate``, the study's
validate stage, ``predict`` and ``evaluate`` before any heavy stage (through
:func:`p53hcc.tools.cohort.manifest.validate_cohort`): blank or constant series (nothing for N4 to correct), ROI
size for PyRadiomics and the DL crop, masks that are not tumour outlines, masks whose extent disagrees across the
phases, and phases that do not enhance in the order of a dynamic contrast-enhanced examination.

Mask extent. The three phases show one tumour; their masks may differ by motion and partial volume, not by an
order of magnitude. :func:`mask_extent_problems` warns for a phase whose mask lies on one slice while the others
span :data:`EXTENT_SLICES` or more, or whose volume is below :data:`EXTENT_RATIO` of the others' median (a
single-slice outline, a mask of another lesion, a phase mask left over from a draft).

Phase order. The liver parenchyma enhances mostly through the portal vein, so in every contrast protocol of the
study (extracellular or hepatobiliary agents) the liver is darker in the arterial phase than in the portal-venous
and delayed phases. :func:`phase_order_problem` measures the median signal of a shell 3-12 mm around the tumour
(mostly liver; robust to a shell partly outside the liver) in each phase and warns when it is clearly (5 %)
brighter in AP than in a later phase.
On the synthetic cohort (TISSUE liver levels 380/600/540 in AP/PVP/DP) PVP/AP is 1.52-1.62 and DP/AP
1.38-1.44 over 40 patients, so a swapped AP is caught with a wide margin; a PVP/DP swap is not detectable this way
(the two are close in every protocol) and is not checked. It is a warning, never an error: series of one
examination may be scaled differently by the scanner.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: The shell around the tumour whose median signal stands for the liver (mm from the tumour's edge).
RING_MM = (3.0, 12.0)
#: How much brighter than a later phase the liver must be in AP to warn (flat, unenhanced phases do not warn).
PHASE_MARGIN = 1.05
#: A phase's mask on one slice warns when the other phases' masks span at least this many slices.
EXTENT_SLICES = 3
#: A phase's mask volume below this fraction of the other phases' median volume warns.
EXTENT_RATIO = 0.25


@dataclass(frozen=True)
class ImageRequirements:
    """What the study's stages need from each image and mask.

    Attributes:
        min_roi_mm3: smallest ROI volume (PyRadiomics ``minimumROISize``, in voxels of the 1 mm grid = mm^3).
        min_roi_dims: axes along which the ROI must span at least 2 mm, i.e. 2 voxels of the 1 mm grid
            (PyRadiomics ``minimumROIDimensions``; the DL crop is cut around the ROI's largest axial slice).
        max_roi_fraction: a mask covering more of its image than this is not a tumour outline (PyRadiomics finds
            no label in a mask without background).
        phase_order: warn when the liver around the tumour is not darkest in the arterial phase.
    """

    min_roi_mm3: float = 10.0
    min_roi_dims: int = 2
    max_roi_fraction: float = 0.9
    phase_order: bool = True


def roi_problem(mask: np.ndarray, spacing: Sequence[float], req: ImageRequirements) -> str | None:
    """Why a binary mask cannot give radiomics features or a DL crop, or None when it can."""
    roi = np.asarray(mask) > 0
    n = int(roi.sum())
    if n == 0:
        return None  # reported as an empty mask by the manifest checks
    if n > req.max_roi_fraction * roi.size:
        return (f"mask covers {100 * n / roi.size:.0f}% of the image: a tumour outline is expected "
                "(PyRadiomics finds no label in a mask without background)")
    idx = np.nonzero(roi)
    extents = [(int(i.max()) - int(i.min()) + 1) * float(s) for i, s in zip(idx, spacing)]
    volume = n * float(np.prod(spacing))
    spanned = sum(e >= 2.0 for e in extents)
    size = f"{n} voxel(s), {volume:.1f} mm^3, extent {' x '.join(f'{e:.1f}' for e in extents)} mm"
    if n == 1 or spanned < req.min_roi_dims:
        return (f"ROI too thin ({size}): radiomics and the DL crop need at least 2 mm along {req.min_roi_dims} "
                "axes (PyRadiomics minimumROIDimensions on the 1 mm grid)")
    if volume < req.min_roi_mm3:
        return (f"ROI too small ({size}): radiomics needs at least {req.min_roi_mm3:g} mm^3 "
                "(PyRadiomics minimumROISize on the 1 mm grid)")
    return None


def ring_median(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
                ring_mm: tuple[float, float] = RING_MM) -> float | None:
    """Median signal of the non-zero voxels ``ring_mm`` from the ROI's edge (None without ROI or shell)."""
    from scipy import ndimage

    roi = np.asarray(mask) > 0
    if not roi.any() or image.shape != roi.shape:
        return None
    idx = np.nonzero(roi)
    pad = [int(np.ceil(ring_mm[1] / float(s))) + 1 for s in spacing]
    box = tuple(slice(max(0, int(i.min()) - p), int(i.max()) + p + 1) for i, p in zip(idx, pad))
    dist = ndimage.distance_transform_edt(~roi[box], sampling=[float(s) for s in spacing])
    values = np.asarray(image[box], dtype=np.float64)
    shell = (dist > ring_mm[0]) & (dist <= ring_mm[1]) & (values > 0) & np.isfinite(values)
    return float(np.median(values[shell])) if shell.any() else None


def phase_order_problem(liver: Mapping[str, float | None]) -> str | None:
    """A warning when the liver signal around the tumour (``ring_median`` per phase) is clearly higher in AP than
    in a later phase (by :data:`PHASE_MARGIN`)."""
    ap = liver.get("ap")
    later = {p: v for p, v in liver.items() if p != "ap" and v is not None}
    if ap is None or not later:
        return None
    brighter = [p for p, v in later.items() if ap >= PHASE_MARGIN * v]
    if not brighter:
        return None
    levels = ", ".join(f"{p.upper()} {v:.4g}" for p, v in liver.items() if v is not None)
    return (f"phase order implausible: the liver around the tumour is brighter in the arterial phase than in "
            f"{' and '.join(p.upper() for p in brighter)} "
            f"(median {levels}); the liver enhances mostly in the portal-venous phase: are the phase columns "
            "swapped?")


def blank_problem(image: np.ndarray) -> str | None:
    """Why a series carries no image (every voxel the same value: blank, all-zero), or None when it varies."""
    values = np.asarray(image)
    if values.size and np.nanmin(values) == np.nanmax(values):
        return (f"blank series: every voxel is {float(np.nanmin(values)):g} (an empty or failed export?); N4 bias "
                "correction, z-scoring and radiomics need an image")
    return None


def mask_extent(mask: np.ndarray, spacing: Sequence[float]) -> tuple[int, float]:
    """Slices (third voxel axis) a mask touches and its volume in mm^3."""
    roi = np.asarray(mask) > 0
    return int(roi.any(axis=(0, 1)).sum()), float(roi.sum() * np.prod([float(s) for s in spacing]))


def mask_extent_problems(extents: Mapping[str, tuple[int, float]]) -> dict[str, str]:
    """Per phase, a warning when its mask (``mask_extent``) is far smaller than the other phases' masks."""
    out = {}
    for phase, (slices, volume) in extents.items():
        others = {p: e for p, e in extents.items() if p != phase}
        if not others:
            continue
        their_slices = [e[0] for e in others.values()]
        their_volume = float(np.median([e[1] for e in others.values()]))
        names = " and ".join(p.upper() for p in others)
        if slices == 1 and min(their_slices) >= EXTENT_SLICES:
            out[phase] = (f"mask on 1 slice while the {names} masks span {', '.join(map(str, their_slices))} slices: "
                          "is the tumour outlined on every slice of this phase?")
        elif volume < EXTENT_RATIO * their_volume:
            out[phase] = (f"mask volume {volume:.0f} mm^3 is under {EXTENT_RATIO:.0%} of the {names} masks' "
                          f"(median {their_volume:.0f} mm^3): the same tumour outlined in every phase?")
    return out
