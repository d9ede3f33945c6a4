"""Image-derived values of new patients against the training cohort's range: images unlike anything the frozen
model was fitted on (another organ, another modality, another protocol) are flagged at predict / evaluate time,
never silently scored.

The values are those the study computes anyway, so nothing is preprocessed twice: from the radiomics table
(PyRadiomics on the preprocessed volumes, N4 -> 1 mm -> z-score), per phase, the tumour volume and maximum 3-D
diameter and the mean and SD of the z-scored intensity inside the ROI (:data:`IMAGE_FEATURES`, when the
parameter set extracts them), plus the frozen radiomics model's selected features; and from each phase's image
header the native voxel spacing (:data:`SPACING`; a header read, no voxels).

The range is min..max over the analysed training patients (:func:`p53hcc.tools.pipeline.freeze.freeze_model`
stores it in ``manifest.json`` ``image_ranges``), not a percentile band: a 0.5-99.5 % band flags about 1 % of
patients like the training ones per value by construction (with some 20-40 values per patient, most of them would
carry a warning), and its limits are noisy estimates of extreme quantiles at a few hundred patients. Min..max
says exactly "outside anything the model has seen" (it extrapolates there); a new patient exchangeable with the
training patients falls outside it with probability 2/(n+1) per value (1 % at n = 200).
"""
from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from p53hcc.tools.cohort.imageio import read_geometry
from p53hcc.tools.cohort.manifest import Problem, present
from p53hcc.tools.pipeline.checks import values_outside
from p53hcc.tools.schema import PHASES

#: Radiomics features (without the phase prefix) compared per phase, with the name a warning gives them.
IMAGE_FEATURES = {"original_shape_VoxelVolume": "tumour volume (mm^3)",
                  "original_shape_Maximum3DDiameter": "tumour maximum 3-D diameter (mm)",
                  "original_firstorder_Mean": "ROI mean intensity (z-scored)",
                  "original_firstorder_StandardDeviation": "ROI intensity SD (z-scored)"}
#: Native voxel spacing per phase (image header): the coarser in-plane axis and the third axis.
SPACING = {"spacing_inplane_mm": "in-plane voxel spacing (mm)", "spacing_slice_mm": "slice spacing (mm)"}


def image_value_columns(selected: Iterable[str]) -> list[str]:
    """Every value compared: :data:`IMAGE_FEATURES` and :data:`SPACING` per phase, then the selected features."""
    per_phase = [f"{p}_{name}" for p in PHASES for name in (*IMAGE_FEATURES, *SPACING)]
    return list(dict.fromkeys([*per_phase, *selected]))


def label(column: str) -> str:
    """How a warning names a value (``ap ROI mean intensity (z-scored)``)."""
    phase, _, rest = column.partition("_")
    names = {**IMAGE_FEATURES, **SPACING}
    if phase in PHASES and rest in names:
        return f"{phase} {names[rest]}"
    return f"radiomics feature {column}"


def spacing_values(cohort: pd.DataFrame, workers: int = 4) -> pd.DataFrame:
    """Native voxel spacing of each phase's image (header only, read in ``workers`` threads as ``validate`` does;
    NaN where a file cannot be read), one row per patient (index ``patient_id``)."""
    def one(r: dict) -> tuple[str, dict]:
        row = {}
        for phase in PHASES:
            try:
                spacing = read_geometry(r[phase]).spacing if present(r.get(phase)) else None
            except Exception:  # noqa: BLE001 - an unreadable image is the validation's to report, not this one's
                spacing = None
            row[f"{phase}_spacing_inplane_mm"] = float(max(spacing[:2])) if spacing else np.nan
            row[f"{phase}_spacing_slice_mm"] = float(spacing[2]) if spacing else np.nan
        return str(r["patient_id"]), row

    with ThreadPoolExecutor(max(1, workers)) as pool:
        rows = dict(pool.map(one, cohort.to_dict("records")))
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("patient_id")


def image_values(radiomics: pd.DataFrame, cohort: pd.DataFrame | None, columns: Iterable[str]) -> pd.DataFrame:
    """The ``columns`` (:func:`image_value_columns`) each patient has: radiomics values from ``radiomics``
    (``patient_id`` column or index), spacing read from ``cohort``'s image headers (only when asked for and
    ``cohort`` is given); one row per patient, column ``patient_id``."""
    columns = list(columns)
    rad = radiomics.set_index("patient_id") if "patient_id" in radiomics.columns else radiomics
    rad = rad.set_axis(rad.index.astype(str).rename("patient_id"), axis=0)  # a copy: the caller's table unchanged
    parts = [rad[[c for c in columns if c in rad.columns]].apply(pd.to_numeric, errors="coerce")]
    if cohort is not None and any(c.endswith(tuple(SPACING)) for c in columns):
        spacing = spacing_values(cohort)
        parts.append(spacing[[c for c in spacing.columns if c in columns]])
    return pd.concat(parts, axis=1).rename_axis("patient_id").reset_index()


def image_range_problems(values: pd.DataFrame, ranges: dict[str, list[float]]) -> list[Problem]:
    """A warning per image-derived value (:func:`image_values`) outside the training cohort's range."""
    return [Problem(pid, None, None, f"image out of the training range: {label(col)} {v:.4g} outside "
                    f"[{lo:.4g}, {hi:.4g}] (the model extrapolates)", "warning")
            for pid, col, v, lo, hi in values_outside(values, ranges)]
