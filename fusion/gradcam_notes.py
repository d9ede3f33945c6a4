"""What the report says about a folder of Grad-CAM figures: how the maps were made and their sanity check.

Reads the folder's ``gradcam.json`` (arm, network, target layer, its feature-map size and the input size, written
by ``p53hcc.tools.dl.gradcam``) and ``sanity.csv`` (Spearman rho between the maps of the trained network and of
the same network with re-initialised weights, per patient and phase). A folder without them (figures made by an
older version) gets no note.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.tools.io import read_table
from p53hcc.tools.schema import NET_LABELS


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
