"""Cohort manifest (``cohort.csv``): reading, and validation that lists every problem at once.

The manifest is the one input of the study (columns in ``docs/contracts.md``). ``validate_cohort`` checks every
row and every file before any stage runs, so a user fixes all problems in one pass instead of one per run.
"""
from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from p53hcc.tools.cohort.ids import id_problems
from p53hcc.tools.cohort.imagechecks import (
    ImageRequirements,
    blank_problem,
    mask_extent,
    mask_extent_problems,
    phase_order_problem,
    ring_median,
    roi_problem,
)
from p53hcc.tools.cohort.imageio import read_geometry, read_voxels_strict
from p53hcc.tools.errors import InputError, P53hccError
from p53hcc.tools.schema import (
    BINARY_COLUMNS,
    CATEGORICAL_LEVELS,
    MASK_COLUMNS,
    NUMERIC_RANGES,
    PHASES,
    R2_MASK_COLUMNS,
    REQUIRED_COLUMNS,
    SPLITS,
)


@dataclass(frozen=True)
class Problem:
    """One validation finding, naming the patient, the column, the file and the reason."""

    patient_id: str | None
    column: str | None
    path: str | None
    problem: str
    severity: str = "error"

    def __str__(self) -> str:
        return str(InputError(self.patient_id, self.problem, self.column, self.path))


def read_cohort(path: str | Path, check_ids: bool = True) -> pd.DataFrame:
    """Read ``cohort.csv``: paths made absolute (relative to the CSV), one ``mask`` column expanded per phase.

    Rows whose every cell is blank (trailing ``,,,,`` lines of a spreadsheet export) are dropped; their line
    numbers are kept in ``df.attrs["blank_lines"]`` so validation can say so.

    Args:
        path: the cohort CSV.
        check_ids: refuse ids that cannot name a file (:mod:`p53hcc.tools.cohort.ids`); validation, which lists
            them with every other problem, reads with False.

    Raises:
        P53hccError: the file is missing, empty, not UTF-8, not comma-separated, has no patients, a row without
            ``patient_id``, a patient id outside the safe alphabet or differing from another only by case, or
            lacks required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise P53hccError(f"cohort file not found: {path}")
    df = _read_csv(path)
    df.columns = [str(c).strip() for c in df.columns]
    if "mask" in df.columns:
        for col in MASK_COLUMNS:
            if col not in df.columns:
                df[col] = df["mask"]
    missing = [c for c in (*REQUIRED_COLUMNS, *MASK_COLUMNS) if c not in df.columns]
    if missing:
        raise P53hccError(f"{path}: missing column(s) {', '.join(missing)} (see docs/contracts.md)")
    no_id = [int(i) + 2 for i, v in df["patient_id"].items() if not present(v)]
    if no_id:
        raise P53hccError(f"{path}: no patient_id on line(s) {', '.join(map(str, no_id[:10]))}"
                          f"{' ...' if len(no_id) > 10 else ''}")
    df["patient_id"] = df["patient_id"].astype(str).str.strip()
    bad = id_problems(df["patient_id"]) if check_ids else []
    if bad:
        listed = "; ".join(f"patient {pid}: {why}" for pid, why in bad[:5])
        raise P53hccError(f"{path}: {len(bad)} unusable patient id(s): {listed}"
                          f"{' ...' if len(bad) > 5 else ''} (run `p53hcc validate {path}` for every problem)")
    df["split"] = df["split"].astype(str).str.strip().str.lower()
    base = path.resolve().parent
    for col in (*PHASES, *MASK_COLUMNS, *R2_MASK_COLUMNS):
        if col in df.columns:
            df[col] = [str((base / str(v).strip()).resolve()) if present(v) else None for v in df[col]]
    return df


#: Delimiters of spreadsheet exports that are not CSV in the contract's sense (comma-separated).
_OTHER_DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "vertical bars"}


def _read_csv(path: Path) -> pd.DataFrame:
    """The CSV as text columns (``patient_id`` kept as written), with one clear error per malformed file."""
    raw = path.read_bytes()
    if not raw.strip():
        raise P53hccError(f"{path}: the file is empty (expected a header line and one line per patient)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise P53hccError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save it as UTF-8 "
                          "(e.g. 'CSV UTF-8' in Excel)") from None
    header = text.splitlines()[0]
    for sep, name in _OTHER_DELIMITERS.items():
        if header.count(sep) > header.count(","):
            raise P53hccError(f"{path}: the columns are separated by {name}, not commas; save it as a "
                              "comma-separated CSV (decimal point '.')")
    rows = list(csv.reader(io.StringIO(text)))
    long = [k + 1 for k, r in enumerate(rows) if len(r) > len(rows[0])]
    if long:  # pandas would silently take the extra leading fields as an index and shift every column
        raise P53hccError(f"{path}: not a well-formed CSV: line(s) {', '.join(map(str, long[:10]))} have more "
                          f"fields than the header ({len(rows[0])}); quote values that contain commas")
    try:
        df = pd.read_csv(io.StringIO(text), dtype={"patient_id": str}, keep_default_na=True, index_col=False)
    except pd.errors.ParserError as err:
        raise P53hccError(f"{path}: not a well-formed CSV: {str(err).strip()}") from None
    blank = df.apply(lambda col: col.map(present)).sum(axis=1) == 0 if len(df) else pd.Series(dtype=bool)
    df = df[~blank].reset_index(drop=True) if len(df) else df
    df.attrs["blank_lines"] = [int(i) + 2 for i in blank[blank].index]
    if df.empty:
        raise P53hccError(f"{path}: no patients (the file has a header line only)")
    return df


def cohort_files(path: str | Path) -> list[Path]:
    """The cohort CSV and every image and mask file (or DICOM folder) it names: what a study's results depend on.

    An unreadable CSV gives the CSV alone (validation then says what is wrong with it).
    """
    path = Path(path)
    try:
        df = read_cohort(path)
    except P53hccError:
        return [path]
    cols = [c for c in (*PHASES, *MASK_COLUMNS, *R2_MASK_COLUMNS) if c in df.columns]
    return [path, *sorted({Path(v) for c in cols for v in df[c] if present(v)})]


def present(value) -> bool:
    """True when a CSV cell holds a value (not None, NaN or blank)."""
    return not (value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "")


def validate_cohort(path: str | Path, check_voxels: bool = True, workers: int = 4,
                    progress: bool = True, requirements: ImageRequirements | None = None) -> list[Problem]:
    """Check every row, value and file of a manifest; return all problems (empty list when valid).

    Args:
        path: the cohort CSV.
        check_voxels: also read masks (empty / non-binary) and images (NaN / infinite voxels).
        workers: threads reading files in parallel.
        progress: show a progress bar over patients.
        requirements: also check each ROI and the phases against what the study's stages need
            (:mod:`p53hcc.tools.cohort.imagechecks`; implies ``check_voxels``).
    """
    check_voxels = check_voxels or requirements is not None
    df = read_cohort(path, check_ids=False)
    problems = _table_problems(df)
    if df.attrs.get("blank_lines"):
        lines = df.attrs["blank_lines"]
        problems.append(Problem(None, None, str(path), f"{len(lines)} blank row(s) ignored (line(s) "
                                f"{', '.join(map(str, lines[:10]))}{' ...' if len(lines) > 10 else ''})", "warning"))
    rows = list(df.itertuples(index=False))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(lambda r: _file_problems(r._asdict(), check_voxels, requirements), rows)
        for found in tqdm(results, total=len(rows), desc="validate", unit="patient", disable=not progress):
            problems.extend(found)
    return problems


def _table_problems(df: pd.DataFrame) -> list[Problem]:
    """Problems visible in the table itself: ids, splits, labels, clinical values, missing phases."""
    out = [Problem(pid, "patient_id", None, why) for pid, why in id_problems(df["patient_id"])]
    for pid in df.loc[df["patient_id"].duplicated(), "patient_id"].unique():
        out.append(Problem(pid, "patient_id", None, f"duplicate patient_id ({(df['patient_id'] == pid).sum()} rows)"))
    for row in df.itertuples(index=False):
        r = row._asdict()
        pid = r["patient_id"]
        if r["split"] not in SPLITS:
            out.append(Problem(pid, "split", None, f"unknown split {r['split']!r} (expected one of {', '.join(SPLITS)})"))
        label = r["p53"]
        if present(label):
            if str(label).strip() not in ("0", "1", "0.0", "1.0"):
                out.append(Problem(pid, "p53", None, f"label {label!r} is not 0 or 1"))
        elif r["split"] != "predict":
            out.append(Problem(pid, "p53", None, "label missing (only split 'predict' may lack it)"))
        for col in (*PHASES, *MASK_COLUMNS):
            if not present(r.get(col)):
                out.append(Problem(pid, col, None, "missing phase: no path given"))
        out.extend(clinical_value_problems(pid, r))
    return out


def clinical_value_problems(pid: str, r: dict) -> list[Problem]:
    """Values of one patient's clinical columns that the study cannot use: non-numeric or implausible numbers,
    binary columns not 0/1, categories outside their levels (columns that are absent or blank are not checked)."""
    out = []
    for col, (lo, hi) in NUMERIC_RANGES.items():
        if col not in r or not present(r[col]):
            continue
        try:
            value = float(r[col])
        except (TypeError, ValueError):
            out.append(Problem(pid, col, None, f"non-numeric value {r[col]!r}"))
            continue
        if not np.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            out.append(Problem(pid, col, None, f"implausible value {value:g} (expected {lo}..{hi if hi else 'inf'})"))
    for col in BINARY_COLUMNS:
        if col in r and present(r[col]) and str(r[col]).strip() not in ("0", "1", "0.0", "1.0"):
            out.append(Problem(pid, col, None, f"value {r[col]!r} is not 0 or 1"))
    for col, levels in CATEGORICAL_LEVELS.items():
        if col in r and present(r[col]) and str(r[col]).strip() not in levels:
            out.append(Problem(pid, col, None, f"value {r[col]!r} not one of {', '.join(levels)}"))
    return out


def _file_problems(r: dict, check_voxels: bool, req: ImageRequirements | None = None) -> list[Problem]:
    """Problems of one patient's files: missing, unreadable, geometry mismatch, empty / non-binary mask, NaNs,
    blank series; with ``req`` also ROIs the study cannot use, masks far smaller in one phase than in the others
    and an implausible phase order (warnings)."""
    pid = r["patient_id"]
    out: list[Problem] = []
    liver: dict[str, float | None] = {}
    extents: dict[str, tuple[int, float]] = {}
    for phase in PHASES:
        image_col, mask_cols = phase, [f"{phase}_mask"] + ([f"{phase}_mask_r2"] if present(r.get(f"{phase}_mask_r2")) else [])
        image_geom = _checked_geometry(pid, image_col, r.get(image_col), out)
        image = None
        if image_geom is not None and check_voxels:
            image = _check_image_voxels(pid, image_col, r[image_col], out)
        for mask_col in mask_cols:
            mask_geom = _checked_geometry(pid, mask_col, r.get(mask_col), out)
            if mask_geom is None:
                continue
            same_grid = image_geom is not None and not image_geom.mismatch(mask_geom)
            if image_geom is not None and not same_grid:
                out.append(Problem(pid, mask_col, r[mask_col], "mask geometry does not match image "
                                   f"{r[image_col]}: {'; '.join(image_geom.mismatch(mask_geom))}"))
            if not check_voxels:
                continue
            mask = _check_mask_voxels(pid, mask_col, r[mask_col], out)
            if req is None or mask is None:
                continue
            why = roi_problem(mask, mask_geom.spacing, req)
            if why:
                out.append(Problem(pid, mask_col, r[mask_col], why))
            if mask_col == f"{phase}_mask":
                extents[phase] = mask_extent(mask, mask_geom.spacing)
            if req.phase_order and mask_col == f"{phase}_mask" and image is not None and same_grid:
                liver[phase] = ring_median(image, mask, image_geom.spacing)
    for phase, why in mask_extent_problems(extents).items():
        out.append(Problem(pid, f"{phase}_mask", r[f"{phase}_mask"], why, "warning"))
    if req is not None and req.phase_order and len(liver) == len(PHASES):
        why = phase_order_problem(liver)
        if why:
            out.append(Problem(pid, ", ".join(PHASES), None, why, "warning"))
    return out


def _checked_geometry(pid, col, path, out):
    if not present(path):
        return None  # reported as a missing phase by the table checks
    if not Path(path).exists():
        out.append(Problem(pid, col, path, "file not found"))
        return None
    try:
        geom = read_geometry(path)
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
        out.append(Problem(pid, col, path, f"unreadable image: {str(err).strip().splitlines()[-1][:200]}"))
        return None
    if len(geom.size) != 3 or min(geom.size) < 2:
        shape = "x".join(map(str, geom.size))
        what = f"{len(geom.size)}-D image" if len(geom.size) != 3 else "single-slice volume"
        out.append(Problem(pid, col, path, f"{what} of size {shape}: a 3-D volume (x, y, z, each > 1) is expected"))
        return None
    return geom


def _strict_voxels(pid, col, path, out, what: str):
    """Voxels of ``path``, or None after recording why they cannot be read (truncated / corrupt volume)."""
    try:
        return read_voxels_strict(path)
    except Exception as err:  # noqa: BLE001 - any failure here means the volume is unusable
        out.append(Problem(pid, col, path, f"unreadable {what} data (corrupt volume?): {str(err).strip()[:200]}"))
        return None


def _check_image_voxels(pid, col, path, out) -> np.ndarray | None:
    """The image's voxels (None when unreadable), recording NaN / infinite voxels."""
    arr = _strict_voxels(pid, col, path, out, "image")
    if arr is None:
        return None
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        out.append(Problem(pid, col, path, f"{int((~np.isfinite(arr)).sum())} NaN/infinite voxels"))
        return None
    why = blank_problem(arr)
    if why:
        out.append(Problem(pid, col, path, why))
        return None
    return arr


def _check_mask_voxels(pid, col, path, out) -> np.ndarray | None:
    """The mask's voxels when it is a usable binary mask, else None after recording why."""
    arr = _strict_voxels(pid, col, path, out, "mask")
    if arr is None:
        return None
    values = np.unique(arr)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6])
        out.append(Problem(pid, col, path, f"mask is not binary (values {shown}{'...' if len(values) > 6 else ''})"))
        return None
    if not (arr == 1).any():
        out.append(Problem(pid, col, path, "empty mask (no foreground voxel)"))
        return None
    return arr
