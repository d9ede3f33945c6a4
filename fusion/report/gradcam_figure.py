"""Drawing Grad-CAM maps the way radiologists read them (the report's gallery, paper Figure S2).

One figure per patient: the phases side by side (AP, PVP, DP), each crop in grey at its own window (1st-99th
percentile of that crop), the map on top in one colour scale for all panels with its opacity growing with the
value (transparent below a fifth of the patient's maximum, so the anatomy stays visible), the tumour contour (the
ROI mask cut and resized like the crop, drawn at 0.5), a colour bar and a caption naming the layer, its
feature-map size, the input resolution and the sanity check's Spearman rho. Crops are shown in radiological
convention (the crops are RAS arrays: patient's right on the viewer's left, anterior at the top).

Why not ``monai.visualize.utils.blend_images``: it blends a label at one fixed opacity (optionally transparent
where the label is exactly 0), which is the uniform wash this module avoids; matplotlib draws a per-pixel
opacity from an RGBA array, a contour and a colour bar directly.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from p53hcc.tools.io import atomic_path
from p53hcc.tools.schema import NET_LABELS, PHASE_LABELS, PHASES

CMAP = "jet"
#: Opacity of the map at its maximum; it falls linearly to 0 at ALPHA_FLOOR (a fraction of the patient's maximum),
#: so a diffuse low map does not wash over the anatomy and nothing is coloured where the map is ~0.
MAX_ALPHA, ALPHA_FLOOR = 0.7, 0.2
#: Crops are upsampled (bilinear) to at least this many pixels a side for display.
DISPLAY_PX = 256
WINDOW_PERCENTILES = (1.0, 99.0)


def radiological_view(a: np.ndarray, size: int) -> np.ndarray:
    """A ``[C, X, Y]`` RAS crop upsampled bilinearly to ``size`` (MONAI's upsampler) and turned into screen rows
    and columns in radiological convention (rows: anterior at the top; columns: patient's right on the left)."""
    from monai.visualize.visualizer import default_upsampler

    t = torch.as_tensor(np.asarray(a, dtype=np.float32))[None]
    if t.shape[-1] != size:
        t = default_upsampler((size, size))(t)
    return t[0].numpy().transpose(0, 2, 1)[:, ::-1, ::-1]


def window(img: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> tuple[float, float]:
    """Grey-level window of one crop: its own percentiles (z-scored crops have no fixed HU-like scale)."""
    lo, hi = np.percentile(img, percentiles)
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def opacity(v: np.ndarray, max_alpha: float = MAX_ALPHA, floor: float = ALPHA_FLOOR) -> np.ndarray:
    """Opacity of map values in [0, 1]: 0 up to ``floor``, then rising linearly to ``max_alpha`` at 1."""
    return max_alpha * np.clip((np.asarray(v) - floor) / (1.0 - floor), 0.0, 1.0)


def heat_rgba(cam: np.ndarray, cmap: str = CMAP) -> np.ndarray:
    """RGBA image of a map in [0, 1]: colour from ``cmap``, :func:`opacity` from the value (none where ~0)."""
    import matplotlib

    v = np.clip(cam, 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](v)
    rgba[..., 3] = opacity(v)
    return rgba


def figure_caption(arm: str, net: str, layer: str, rho: Sequence[float], differs: Sequence[bool],
                   reason: Sequence[str], units: Sequence[str | None], zero: bool = False) -> str:
    """The caption: class, ``layer`` (its name, feature-map size and input resolution), the sanity check (Spearman
    rho per map, whether every map ``differs`` from the randomised network's, and why a rho is undefined)."""
    label = NET_LABELS.get(net, net)
    what = (f"{label} MC (one map from the three-channel network)" if arm == "mc"
            else f"{label} FF (one map per phase network; P(mutated) of each phase network alone)")
    values = [f"{r:.2f}" if np.isfinite(r) else f"n/a ({why or 'constant map'})" for r, why in zip(rho, reason)]
    rhos = values[0] if len(values) == 1 else ", ".join(
        f"{PHASE_LABELS.get(u, u)} {v}" for u, v in zip(units, values))
    parts = [f"Grad-CAM of 'P53 mutated', {what}; {layer}, upsampled bilinearly.",
             f"Sanity check (weights re-initialised): Spearman rho {rhos} "
             + ("(the map depends on the learned weights)." if all(differs)
                else "(high or undefined: the map may show image structure, not what the model learned)."),
             (f"Colour: fraction of this patient's maximum, one scale for all panels, transparent below "
              f"{ALPHA_FLOOR:g}; white line: tumour contour; radiological view.")]
    if zero:
        parts.append("The map is 0 everywhere: nothing in these crops raises the 'P53 mutated' score at this layer.")
    return " ".join(parts)


def save_overlay(dest: str | os.PathLike, image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None,
                 title: str = "", panel_notes: Sequence[str] = (), caption: str = "", warning: str | None = None
                 ) -> Path:
    """PNG of the phases with the Grad-CAM map(s) drawn over them.

    Args:
        image: crops ``[P, S, S]`` (one per phase; the network's input, z-scored).
        cam: maps in [0, 1] on one scale: ``[S, S]`` or ``[1, S, S]`` (one map, drawn on every phase: MC) or
            ``[P, S, S]`` (one per phase: FF).
        mask: tumour masks ``[P, S, S]`` cut like the crops (contour at 0.5), or None.
        title: figure title; panel_notes: one note per map (e.g. the network's probability), shown in the
            panel titles (FF) or after the title (MC).
        caption: text under the panels (wrapped); warning: a line drawn in red above it (e.g. a coarse map).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    image = np.asarray(image)
    n = image.shape[0]
    cams = np.asarray(cam).reshape(-1, *image.shape[1:])
    size = max(DISPLAY_PX, image.shape[-1])
    grey, heat = radiological_view(image, size), radiological_view(cams, size)
    outline = radiological_view(mask, size) if mask is not None else None
    notes = list(panel_notes)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.1 * n + 0.5, 4.1), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * n + [0.06]})
    for i, ax in enumerate(axes[0][:n]):
        lo, hi = window(image[i])
        ax.imshow(grey[i], cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
        ax.imshow(heat_rgba(heat[i if len(heat) == n else 0]), interpolation="bilinear")
        if outline is not None and np.ptp(outline[i]) > 0:
            ax.contour(outline[i], levels=[0.5], colors="white", linewidths=1.3,
                       path_effects=[patheffects.withStroke(linewidth=2.6, foreground="black")])
        name = PHASE_LABELS[PHASES[i]] if n == len(PHASES) else f"channel {i}"
        ax.set_title(f"{name} · {notes[i]}" if len(cams) == n and len(notes) == n else name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    ramp = np.linspace(0.0, 1.0, 256)  # the bar shows each value as it is drawn: its colour at its opacity
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=ListedColormap(heat_rgba(ramp))), cax=axes[0][n])
    bar.set_label("Grad-CAM (fraction of max)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    head = title + (f" · {notes[0]}" if len(cams) == 1 and notes else "")
    fig.suptitle(head, fontsize=11, x=0.01, ha="left")
    lines = []
    if caption or warning:
        import textwrap

        lines = textwrap.wrap(caption, 140 if n > 1 else 55)
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", ha="left", color="#333333")
        if warning:
            fig.text(0.01, 0.03 + 0.035 * len(lines), f"WARNING: {warning}", fontsize=8, va="bottom", ha="left",
                     color="#b00020", fontweight="bold")
            lines.append(warning)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * len(lines), 1, 0.95))
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return dest
