"""PyRadiomics features of every phase of every patient: parallel, cached, with provenance and reader ICC.

Input: the preprocessed volumes (N4 -> 1 mm -> z-score) listed in ``STUDY_DIR/preprocessed/index.csv``
(``p53hcc.tools.preprocessing.run`` is run first when that index is missing). Output (see docs/contracts.md):

* ``radiomics.parquet`` -- one row per patient with all three phases extracted: ``patient_id`` and
  ``<phase>_<pyradiomics feature name>`` columns, e.g. ``ap_original_firstorder_Mean``;
* ``radiomics_provenance.parquet`` -- one row per patient x phase x reader: status/error, pyradiomics,
  SimpleITK, numpy and PyWavelets versions, params hash, image/mask SHA-256, PyRadiomics diagnostics (JSON);
* ``radiomics_r2.parquet`` and ``radiomics_icc.csv`` -- when the cohort has second-reader masks (``*_mask_r2``):
  their features (same layout) and ICC(2,1) per feature over the re-drawn training patients.

Each patient x phase (x reader) is one task; tasks run inline, in a local process pool or, given a Dask scheduler
address, on the cluster, through the one executor of :func:`p53hcc.tools.parallel.run_tasks`. A task's
result is cached as JSON under ``radiomics_cache/`` keyed by image hash + mask hash + params hash + pyradiomics
version, so a re-run only hashes files. A failing task is reported with patient, phase and reason; the
others are kept.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from p53hcc.tools import parallel
from p53hcc.tools.cohort.dropped import apply_policy, check_on_failure
from p53hcc.tools.cohort.ids import patient_path
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, atomic_write_table, file_sha256, params_hash, read_table
from p53hcc.tools.parallel import single_threaded
from p53hcc.tools.radiomics.features import DEFAULT_PARAMS, extract_with_diagnostics, load_params, versions
from p53hcc.tools.radiomics.icc import icc_table
from p53hcc.tools.schema import PHASES

CACHE_DIR = "radiomics_cache"
R2_MASK_DIR = "radiomics_r2_masks"
log = logging.getLogger(__name__)
_PYRADIOMICS = __import__("radiomics").__version__  # part of every cache key
_TASK_LOCK = threading.Lock()

__all__ = ["extract_cohort", "extract_tasks", "load_radiomics"]


# ---------------------------------------------------------------------------------------------- tasks


def _resample_mask_to(mask_path: str, reference_path: str, dest: Path) -> Path:
    """Second-reader mask (native grid) -> preprocessed 1 mm grid, nearest neighbour, binarised, written atomically."""
    import SimpleITK as sitk

    from p53hcc.tools.cohort.imageio import read_image

    ref = sitk.ReadImage(str(reference_path))
    mask = read_image(mask_path) > 0
    out = sitk.Resample(sitk.Cast(mask, sitk.sitkUInt8), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(out).any():
        raise ValueError("second-reader mask is empty on the preprocessed grid (does it overlap the image?)")
    with atomic_path(dest) as tmp:
        sitk.WriteImage(out, str(tmp), True)
    return dest


def _run_task(task: dict) -> dict:
    """Extract one patient x phase x reader (runs in a worker); returns a result record, never raises.

    PyRadiomics is not thread-safe (its YAML schema validation and SimpleITK's global thread setting are shared
    state), so tasks in one process are serialised by a lock: parallelism comes from processes. Dask workers
    should therefore run one thread each (``dask worker --nworkers N --nthreads 1``).
    """
    with _TASK_LOCK:
        return _run_task_unlocked(task)


def _run_task_unlocked(task: dict) -> dict:
    with single_threaded():  # the same features whatever the worker count; parallelism is across tasks
        return _extract_task(task)


def _extract_task(task: dict) -> dict:
    t0 = time.perf_counter()
    rec = {k: task[k] for k in ("patient_id", "phase", "reader", "image_sha256", "mask_sha256", "params_hash")}
    try:
        mask = task["mask"]
        if task.get("resample_mask_to"):
            mask = str(_resample_mask_to(task["mask"], task["resample_mask_to"], Path(task["resampled_mask"])))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            features, diagnostics = extract_with_diagnostics(task["image"], mask, task["params"])
        rec.update(status="ok", error="", features=features, diagnostics=diagnostics)
        rec["seconds"] = time.perf_counter() - t0
        with atomic_path(task["cache"]) as tmp:
            tmp.write_text(json.dumps(rec))
    except Exception as exc:  # noqa: BLE001 -- reported per patient; the cohort run goes on
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}".strip(), features={}, diagnostics={},
                   seconds=time.perf_counter() - t0)
    return rec


def extract_tasks(tasks: list[dict], workers: int | None = None, scheduler: Any = None,
                  progress: bool = True) -> list[dict]:
    """Run extraction tasks in parallel (:func:`p53hcc.tools.parallel.run_tasks`); results in completion order."""
    return list(parallel.run_tasks(_run_task, tasks, workers, scheduler, progress, desc="radiomics", unit="task"))


# ---------------------------------------------------------------------------------------------- cohort


def _preprocessed_index(cohort_csv, out: Path, workers, scheduler, on_failure: str = "fail") -> pd.DataFrame:
    index = out / "preprocessed" / "index.csv"
    if not index.is_file():
        from p53hcc.tools.preprocessing.run import preprocess_cohort

        preprocess_cohort(cohort_csv, out, workers=workers, scheduler=scheduler, on_failure=on_failure)
    df = pd.read_csv(index, dtype={"patient_id": str})
    for col in ("image", "mask"):
        df[col] = [_resolve(p, out) for p in df[col]]
    return df


def _resolve(p: str, out: Path) -> str:
    p = Path(str(p))
    if p.is_absolute():
        return str(p)
    for base in (out / "preprocessed", out):
        if (base / p).exists():
            return str((base / p).resolve())
    return str((out / p).resolve())


def _task(pid, phase, reader, image, mask, img_sha, mask_sha, params, phash, out: Path, **extra) -> dict:
    key = params_hash([img_sha, mask_sha, phash, _PYRADIOMICS])
    cache = patient_path(out / CACHE_DIR, pid) / f"{phase}-{reader}-{key}.json"
    return dict(patient_id=pid, phase=phase, reader=reader, image=image, mask=mask, image_sha256=img_sha,
                mask_sha256=mask_sha, params=params, params_hash=phash, cache=str(cache), **extra)


def _build_tasks(cohort: pd.DataFrame, index: pd.DataFrame, params: dict, phash: str, out: Path,
                 progress: bool) -> tuple[list[dict], list[dict]]:
    """Tasks for every indexed patient x phase (+ second reader); unreadable inputs become failure records."""
    tasks, failures = [], []
    r2 = cohort.set_index("patient_id")
    rows = list(index.itertuples(index=False))
    for r in tqdm(rows, desc="hashing", unit="phase", disable=not progress, leave=False):
        pid, phase = str(r.patient_id), str(r.phase)
        col = f"{phase}_mask_r2"
        native = r2.at[pid, col] if col in r2.columns and pid in r2.index else None
        pairs = [("r1", r.mask, {})]
        if isinstance(native, str) and native:
            # resampled onto the preprocessed grid; the key (native mask + preprocessed image) fixes that grid
            resampled = patient_path(out / R2_MASK_DIR, pid) / f"{phase}_mask_r2.nii.gz"
            pairs.append(("r2", native, {"resample_mask_to": r.image, "resampled_mask": str(resampled)}))
        for reader, mask, extra in pairs:
            try:
                shas = [file_sha256(r.image), file_sha256(mask)]
            except OSError as exc:
                failures.append({"patient_id": pid, "phase": phase, "reader": reader, "status": "failed",
                                     "error": f"cannot read input: {exc}", "image_sha256": "", "mask_sha256": "",
                                     "params_hash": phash, "features": {}, "diagnostics": {}, "seconds": 0.0})
                continue
            tasks.append(_task(pid, phase, reader, r.image, mask, *shas, params, phash, out, **extra))
    return tasks, failures


def _load_cached(task: dict) -> dict | None:
    path = Path(task["cache"])
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # damaged cache entry: recompute


def _wide(results: list[dict], reader: str) -> pd.DataFrame:
    """One row per patient with every phase extracted, columns ``<phase>_<feature>``."""
    ok = [r for r in results if r["reader"] == reader and r["status"] == "ok"]
    frames = []
    for phase in PHASES:
        rows = {r["patient_id"]: r["features"] for r in ok if r["phase"] == phase}
        if rows:
            df = pd.DataFrame.from_dict(rows, orient="index").add_prefix(f"{phase}_")
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["patient_id"])
    wide = pd.concat(frames, axis=1, join="inner")
    wide.index.name = "patient_id"
    return wide.sort_index().reset_index()


def _provenance(results: list[dict], params_name: str) -> pd.DataFrame:
    vers = versions()
    rows = [{"patient_id": r["patient_id"], "phase": r["phase"], "reader": r["reader"], "status": r["status"],
             "error": r["error"], **{f"{k}_version": v for k, v in vers.items()}, "params": params_name,
             "params_hash": r["params_hash"], "image_sha256": r["image_sha256"], "mask_sha256": r["mask_sha256"],
             "seconds": float(r.get("seconds", np.nan)), "diagnostics": json.dumps(r["diagnostics"])}
            for r in results]
    return pd.DataFrame(rows).sort_values(["patient_id", "phase", "reader"]).reset_index(drop=True)


def extract_cohort(cohort_csv: str | os.PathLike, out: str | os.PathLike, params: str | dict | None = None,
                   workers: int | None = None, scheduler: Any = None, progress: bool = True,
                   on_failure: str = "fail") -> pd.DataFrame:
    """Extract radiomics for every patient x phase of a cohort (and second-reader masks when present).

    Args:
        cohort_csv: the cohort manifest.
        out: study folder; reads ``preprocessed/index.csv`` (running preprocessing if it is missing) and writes
            ``radiomics.parquet``, ``radiomics_provenance.parquet`` and, with second-reader masks,
            ``radiomics_icc.csv``.
        params: ``"demo"``, ``"paper"`` or a PyRadiomics YAML path (None: ``paper``, as ``p53hcc study``).
        workers: local worker processes (default: all cores; 1 runs inline).
        scheduler: Dask scheduler address (``tcp://host:port``) or ``distributed.Client``: run the tasks there.
        progress: show progress bars.
        on_failure: a patient without features (a failed extraction, or a phase missing from the preprocessed
            index, e.g. after a partly failed preprocessing) is named in ``out/dropped.csv``; then ``fail``
            raises (after writing the tables of the others), ``record`` leaves it out with a warning.

    Returns:
        The ``radiomics.parquet`` table (patients with all three phases extracted).

    Raises:
        P53hccError: no task succeeded, or (``on_failure="fail"``) some patient has no features; every failure is
            named with patient, phase and reason.
    """
    check_on_failure(on_failure)
    out = Path(out)
    params_name = "dict" if isinstance(params, dict) else str(params or DEFAULT_PARAMS)
    settings = load_params(params)
    phash = params_hash(settings)
    cohort = read_cohort(cohort_csv)
    index = _preprocessed_index(cohort_csv, out, workers, scheduler, on_failure)
    index = index[index["patient_id"].isin(cohort["patient_id"])]
    indexed = set(zip(index["patient_id"], index["phase"]))
    absent = [{"patient_id": pid, "phase": phase, "reason": "no preprocessed volume in preprocessed/index.csv "
               "(its preprocessing failed or has not run: see dropped.csv, rerun `p53hcc preprocess`)"}
              for pid in cohort["patient_id"] for phase in PHASES if (pid, phase) not in indexed]
    tasks, unreadable = _build_tasks(cohort, index, settings, phash, out, progress)
    cached = {t["cache"]: c for t in tasks if (c := _load_cached(t)) is not None}
    todo = [t for t in tasks if t["cache"] not in cached]
    results = list(cached.values()) + unreadable + (extract_tasks(todo, workers, scheduler, progress) if todo else [])
    failed = [r for r in results if r["status"] != "ok"]
    for r in (r for r in failed if r["reader"] != "r1"):  # r1 failures are named with the policy below
        log.warning("radiomics failed for patient %s, phase %s (second reader: left out of the ICC): %s",
                    r["patient_id"], r["phase"], r["error"])
    if results and len(failed) == len(results):
        raise P53hccError("radiomics failed for every task; first: "
                          + "; ".join(f"{r['patient_id']}/{r['phase']}: {r['error']}" for r in failed[:3]))
    table = _wide(results, "r1")
    atomic_write_table(out / "radiomics.parquet", table)
    atomic_write_table(out / "radiomics_provenance.parquet", _provenance(results, params_name))
    _write_icc(results, table, out, cohort)
    lost = absent + [{"patient_id": r["patient_id"], "phase": r["phase"], "reason": f"extraction failed: {r['error']}"}
                     for r in sorted(failed, key=lambda r: (r["patient_id"], r["phase"])) if r["reader"] == "r1"]
    apply_policy(out, "radiomics", lost, len(cohort) * len(PHASES), on_failure, "patient-phase(s)")
    return table


def _write_icc(results: list[dict], r1: pd.DataFrame, out: Path, cohort: pd.DataFrame) -> pd.DataFrame | None:
    """Second-reader features -> ``radiomics_r2.parquet``; ICC on the re-drawn TRAINING patients -> ``radiomics_icc.csv``.

    The ICC decides which features the model may use, so (like every other selection step) it is computed on
    training patients only; validation/external patients' re-drawn masks are extracted but not used for it.
    """
    r2 = _wide(results, "r2")
    if r2.empty:
        return None
    atomic_write_table(out / "radiomics_r2.parquet", r2)
    train = set(cohort.loc[cohort["split"] == "train", "patient_id"])
    r2 = r2[r2["patient_id"].isin(train)]
    if len(r2) < 2:
        log.warning("fewer than 2 training patients with second-reader masks: no ICC written")
        return None
    icc = icc_table(r1, r2)
    atomic_write_table(out / "radiomics_icc.csv", icc)
    return icc


def load_radiomics(out: str | os.PathLike) -> pd.DataFrame:
    """Read ``radiomics.parquet`` of a study folder (patient_id as string)."""
    df = read_table(Path(out) / "radiomics.parquet")
    df["patient_id"] = df["patient_id"].astype(str)
    return df
