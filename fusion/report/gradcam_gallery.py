"""The report's Grad-CAM gallery: the figures of each Grad-CAM folder under a note on how they were made.

The note comes from the folder's ``gradcam.json`` (arm, network, target layer, its feature-map size and the input size, written
by ``p53hcc.tools.dl.gradcam``) and ``sanity.csv`` (Spearman rho between the maps of the trained network and of
the same network with re-initialised weights, per patient and phase). A folder without them (figures made by an
older version) gets no note. The figures themselves (drawn by ``p53hcc.fusion.report.gradcam_figure``) carry their
caption: layer, resolution and the sanity check's rho per map.
"""
from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.tools.io import read_table
from p53hcc.tools.schema import NET_LABELS

#: At most this many figures in the gallery (the report embeds them).
MAX_FIGURES = 24


def _cells(v) -> str:
    return "x".join(str(int(c)) for c in v)


def gradcam_note(folder: Path) -> tuple[str, str | None]:
    """``(note, warning)`` for one Grad-CAM folder; ``("", None)`` when it lacks ``gradcam.json``."""
    meta_path = folder / "gradcam.json"
    if not meta_path.is_file():
        return "", None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    layers = list(meta.get("layers", {}).values())
    if not layers:
        return "", None
    first = layers[0]
    chosen = ("chosen automatically: the deepest stage with at least "
              f"{meta.get('min_cells', 7)}x{meta.get('min_cells', 7)} cells" if first.get("chosen_by") == "auto"
              else "chosen by the user")
    what = "one map per phase network" if meta.get("arm") == "ff" else "one map from the three-channel network"
    note = (f"{str(meta.get('arm', '')).upper()} {NET_LABELS.get(meta.get('net'), meta.get('net'))} ({what}): "
            f"target layer <code>{html.escape(str(first['name']))}</code>, {_cells(first['cells'])} cells at "
            f"{_cells(first['input_size'])} px input ({chosen}).")
    sanity = folder / "sanity.csv"
    if sanity.is_file():
        table = read_table(sanity)
        rho = pd.to_numeric(table["spearman_rho"], errors="coerce").to_numpy()
        finite = rho[np.isfinite(rho)]
        median = f"median {np.median(finite):.2f}" if len(finite) else "not computable (constant maps)"
        differ = int(table["differs"].astype(str).str.lower().eq("true").sum())
        note += (f" Sanity check (model randomisation): Spearman rho between trained and re-initialised-weight maps "
                 f"{median}; {differ} of {len(rho)} maps differ from the randomised network's (depend on the "
                 "learned weights).")
    warning = None
    if min(first["cells"]) <= 2:
        warning = (f"The {_cells(first['cells'])} feature map of {html.escape(str(first['name']))} at {_cells(first['input_size'])} px "
                   "shows at most which part of the crop matters; use a larger input or a shallower layer.")
    return note, warning


def gradcam_files(study_dir: Path) -> list[Path]:
    """The study's Grad-CAM figures (``figures/gradcam/<arm>_<net>/*.png``; ``gradcam/`` of predict), at most
    :data:`MAX_FIGURES`."""
    return sorted([*study_dir.glob("figures/gradcam/**/*.png"), *study_dir.glob("gradcam/**/*.png")])[:MAX_FIGURES]


def gallery_html(files: list[Path], img: Callable[[Path, str], str]) -> str:
    """The gallery of ``files``, folder by folder: the folder's note (and warning), then its figures drawn by
    ``img(path, caption)`` (the report's embedding of a PNG)."""
    out = []
    for folder in dict.fromkeys(f.parent for f in files):
        note, warning = gradcam_note(folder)
        figures = "".join(img(f, f.relative_to(f.parents[1]).as_posix()) for f in files if f.parent == folder)
        out.append((f'<p class="note">{note}</p>' if note else "")
                   + (f'<div class="warn">{warning}</div>' if warning else "")
                   + f'<div class="gallery">{figures}</div>')
    return "".join(out) + ('<p class="note">Grad-CAM of the chosen network\'s full-training-cohort model on '
                           "validation patients (target class: P53 mutated).</p>")
