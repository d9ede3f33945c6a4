"""Cohort preprocessing: N4 -> 1 mm -> z-score for every patient and phase, cached, parallel, failure-tolerant.

Layout under ``STUDY_DIR/preprocessed/`` (docs/contracts.md):

* ``<pid>/<phase>.nii.gz`` (float32, z-scored) and ``<pid>/<phase>_mask.nii.gz`` (uint8 0/1), both on the 1 mm
  RAS grid; ``<pid>/<phase>.json`` is the sidecar written last (cache key, timings), so a file pair without a
  matching sidecar is never trusted.
* ``.cache/n4/<n4_key>.nii.gz``: the N4-corrected native-grid image, keyed by the image content and the
  orientation + N4 parameters only, so changing the spacing or the normalisation reuses it.
* ``index.csv``: ``patient_id, phase, image, mask, key`` (paths relative to ``preprocessed/``).

Cache keys: ``n4_key = hash(sha256(image), orientation, N4 params)``; ``key = hash(n4_key, sha256(mask), pixdim,
normalisation)``. Input hashing runs in the main process (threads), so a re-run with nothing to do starts no
workers. Work is spread over local processes or, given ``scheduler="tcp://..."``, over a Dask distributed cluster,
through the one executor :func:`p53hcc.tools.parallel.run_tasks`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from p53hcc.tools.cohort.dropped import apply_policy, check_on_failure
from p53hcc.tools.cohort.ids import patient_path
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, atomic_write_json, atomic_write_table, file_sha256, params_hash
from p53hcc.tools.parallel import run_tasks, single_threaded
from p53hcc.tools.preprocessing.params import CACHE_VERSION, resolve_params
from p53hcc.tools.schema import PHASES

INDEX_COLUMNS = ["patient_id", "phase", "image", "mask", "key"]
def _keys(image_sha: str, mask_sha: str | None, p: Mapping[str, Any]) -> tuple[str, str]:
    n4 = {k: v for k, v in p["n4"].items() if k != "n_threads"}
    n4_key = params_hash({"v": CACHE_VERSION, "image": image_sha, "orientation": p["orientation"], "n4": n4})
    key = params_hash({"v": CACHE_VERSION, "n4": n4_key, "mask": mask_sha, "pixdim": list(p["pixdim"]),
                       "normalize_nonzero": bool(p["normalize_nonzero"])})
    return n4_key, key


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _sidecar_key(sidecar: Path) -> str | None:
    found = _json_or_none(sidecar)
    return found.get("key") if isinstance(found, dict) else None


def _save_nifti(dest: Path, tensor: Any, dtype, stored: bool = False) -> None:
    """Write a channel-first MetaTensor (one channel) as NIfTI with its RAS affine, atomically.

    Huffman-only gzip: z-scored float32 barely compresses, and full deflate here cost more than N4 itself.
    The gzip header carries no timestamp, so identical voxels give identical bytes (downstream caches key on
    file content). ``stored``: gzip without compression (a scratch copy read once, where time counts).
    """
    import zlib

    import nibabel as nib

    arr = np.asarray(tensor.detach().cpu().numpy()[0], dtype=dtype)
    affine = np.asarray(tensor.affine.detach().cpu().numpy(), dtype=np.float64)
    packer = (zlib.compressobj(0, zlib.DEFLATED, 31) if stored  # wbits 31: gzip container
              else zlib.compressobj(1, zlib.DEFLATED, 31, 8, zlib.Z_HUFFMAN_ONLY))
    payload = packer.compress(nib.Nifti1Image(arr, affine).to_bytes()) + packer.flush()
    with atomic_path(dest) as tmp:
        tmp.write_bytes(payload)


def _n4_image(task: dict, p: dict) -> tuple[Any, float, bool]:
    """The N4-corrected native-grid image: from the N4 cache, else computed and cached. Returns (img, s, cached)."""
    from p53hcc.tools.preprocessing.chain import preprocessing_chain

    cache = Path(task["n4_cache"])
    if cache.is_file():
        loaded = preprocessing_chain(p, ["image"], [], load=True, n4=False, resample=False)({"image": str(cache)})
        return loaded["image"], 0.0, True
    task["_stage"], task["_path"] = "reading image", task["image"]
    img = preprocessing_chain(p, ["image"], [], load=True, n4=False, resample=False)({"image": task["image"]})
    task["_stage"], task["_path"] = "N4 bias correction", task["image"]
    t0 = time.perf_counter()
    img = preprocessing_chain(p, ["image"], [], load=False, n4=True, resample=False)(img)["image"]
    seconds = time.perf_counter() - t0
    _save_nifti(cache, img, np.float32)
    return img, seconds, False


def _check_grid(img: Any, mask: Any) -> None:
    if tuple(img.shape[1:]) != tuple(mask.shape[1:]) or not np.allclose(img.affine, mask.affine, atol=1e-2):
        raise ValueError(f"mask grid {tuple(mask.shape[1:])} does not match image grid {tuple(img.shape[1:])} "
                         "(size/spacing/origin/direction differ)")


def _save_result(dest: Path, phase: str, data: Mapping[str, Any], sidecar: dict, stored: bool = False) -> None:
    """One patient-phase's preprocessed image (and mask, binarised) and, last, its sidecar (cache key)."""
    _save_nifti(dest / f"{phase}.nii.gz", data["image"], np.float32, stored)
    if "mask" in data:
        _save_nifti(dest / f"{phase}_mask.nii.gz", data["mask"] > 0.5, np.uint8, stored)
    atomic_write_json(dest / f"{phase}.json", sidecar)


def process_one(task: dict) -> dict:
    """Preprocess one patient-phase (runs in a worker). Never raises: failures come back as ``error`` records.

    One ITK and one torch thread whether it runs in a pool worker, inline or on a Dask worker, so its output is
    the same bits wherever and however it is resumed (:mod:`p53hcc.tools.parallel`).
    """
    with single_threaded():
        return _process_one(task)


def _process_one(task: dict) -> dict:
    from p53hcc.tools.preprocessing.chain import preprocessing_chain

    t0 = time.perf_counter()
    p = task["params"]
    out = {"patient_id": task["patient_id"], "phase": task["phase"], "key": task["key"]}
    try:
        img, n4_seconds, n4_cached = _n4_image(task, p)
        data = {"image": img}
        if task["mask"]:
            task["_stage"], task["_path"] = "reading mask", task["mask"]
            mask = preprocessing_chain(p, [], ["mask"], load=True, n4=False, resample=False)({"mask": task["mask"]})
            _check_grid(img, mask["mask"])
            data["mask"] = mask["mask"]
        task["_stage"], task["_path"] = "resampling/normalisation", task["image"]
        data = preprocessing_chain(p, ["image"], ["mask"] if task["mask"] else [], load=False, n4=False)(data)
        if task["mask"] and not bool((data["mask"] > 0.5).any()):
            task["_path"] = task["mask"]
            raise ValueError("mask is empty on the 1 mm grid")
        out.update(seconds_n4=n4_seconds, n4_cached=n4_cached, seconds=time.perf_counter() - t0, cached=False)
        _save_result(Path(task["dest"]), task["phase"], data, {**out, "n4_key": task["n4_key"], "params": p,
                                                               "image_source": task["image"],
                                                               "mask_source": task["mask"]})
        return out
    except Exception as exc:  # noqa: BLE001 - reported per patient, the others go on
        return {**out, "error": f"{task.get('_stage', 'preprocessing')} failed: {type(exc).__name__}: {exc}",
                "path": task.get("_path", task["image"])}


def _hash_inputs(items: list[dict], progress: bool) -> list[dict]:
    """sha256 of every image and mask (threads: hashlib releases the GIL); unreadable files become failures."""
    def one(item: dict) -> dict:
        for col in ("image", "mask"):
            path = item[col]
            if not path:
                item[f"{col}_sha"] = None
                continue
            try:
                item[f"{col}_sha"] = file_sha256(path)
            except OSError as exc:
                item["error"], item["path"] = f"cannot read {col}: {exc.strerror or exc}", path
                break
        return item

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(tqdm(pool.map(one, items), total=len(items), desc="hashing inputs", unit="phase",
                         disable=not progress or not items))


def _items(cohort: pd.DataFrame, phases: Iterable[str]) -> list[dict]:
    items = []
    for row in cohort.itertuples(index=False):
        r = row._asdict()
        for phase in phases:
            image, mask = r.get(phase), r.get(f"{phase}_mask")
            item = {"patient_id": str(r["patient_id"]), "phase": phase, "image": image or None, "mask": mask or None}
            if not item["image"]:
                item["error"], item["path"] = f"no image in column {phase}", None
            items.append(item)
    return items


def _reason(f: dict) -> str:
    return (f"file {f['path']}: " if f.get("path") else "") + f["error"]


def _format_failure(f: dict) -> str:
    return f"patient {f['patient_id']} phase {f['phase']}: {_reason(f)}"


def preprocess_cohort(cohort_csv: str | os.PathLike, out: str | os.PathLike, workers: int | None = None,
                      scheduler: Any = None, params: Mapping[str, Any] | str | None = None,
                      progress: bool = True, on_failure: str = "fail") -> pd.DataFrame:
    """Run the preprocessing chain for every patient and phase of a cohort, with caching.

    Args:
        cohort_csv: cohort manifest (docs/contracts.md).
        out: study folder; writes ``preprocessed/``.
        workers: local worker processes (default: all cores; 1 runs in this process).
        scheduler: Dask distributed scheduler address ``tcp://host:port`` (or a ``distributed.Client``); when
            given, tasks run on that cluster instead of local processes.
        params: preset name ("demo", "paper"), or overrides of the default preset (keys of
            :data:`~p53hcc.tools.preprocessing.params.CHAIN_DEFAULTS`; ``n4`` merged key by key); None: the
            default preset (``paper``, as ``p53hcc study`` on a user's cohort).
        progress: show progress bars.
        on_failure: a patient-phase that cannot be preprocessed is named in ``out/dropped.csv``
            (:mod:`p53hcc.tools.cohort.dropped`), then ``fail`` raises, ``record`` leaves it out with a warning.

    Returns:
        One row per successful patient-phase: the index columns plus ``cached`` (nothing recomputed),
        ``n4_cached``, ``seconds_n4`` and ``seconds`` (wall time of the task).

    Raises:
        P53hccError: with ``on_failure="fail"``, after every other patient-phase has finished (and been written
            and indexed), listing each failed one with patient, file and reason.
    """
    check_on_failure(on_failure)
    p = resolve_params(params)
    cohort, phases = read_cohort(cohort_csv), PHASES
    root = Path(out) / "preprocessed"
    items = _hash_inputs(_items(cohort, phases), progress)
    failures = [i for i in items if "error" in i]
    rows, todo = [], []
    for item in (i for i in items if "error" not in i):
        n4_key, key = _keys(item["image_sha"], item["mask_sha"], p)
        dest = patient_path(root, item["patient_id"])
        files = [dest / f"{item['phase']}.nii.gz"] + ([dest / f"{item['phase']}_mask.nii.gz"] if item["mask"] else [])
        if _sidecar_key(dest / f"{item['phase']}.json") == key and all(f.is_file() for f in files):
            rows.append({"patient_id": item["patient_id"], "phase": item["phase"], "key": key, "cached": True,
                         "n4_cached": True, "seconds_n4": 0.0, "seconds": 0.0})
            continue
        todo.append(dict(item, n4_key=n4_key, key=key, params=p, dest=str(dest),
                         n4_cache=str(root / ".cache" / "n4" / f"{n4_key}.nii.gz")))
    for res in run_tasks(process_one, todo, workers, scheduler, progress, desc="preprocess", unit="phase"):
        if "error" in res:
            failures.append(res)
            tqdm.write(f"FAILED {_format_failure(res)}", file=sys.stderr)
        else:
            rows.append(res)
    df = pd.DataFrame(rows, columns=[*INDEX_COLUMNS, "cached", "n4_cached", "seconds_n4", "seconds"])
    has_mask = {(i["patient_id"], i["phase"]): bool(i["mask"]) for i in items}
    df["image"] = [f"{pid}/{ph}.nii.gz" for pid, ph in zip(df["patient_id"], df["phase"])]
    df["mask"] = [f"{pid}/{ph}_mask.nii.gz" if has_mask[(pid, ph)] else "" for pid, ph in
                  zip(df["patient_id"], df["phase"])]
    order = {ph: k for k, ph in enumerate(phases)}
    df = df.sort_values(["patient_id", "phase"], key=lambda s: s.map(order) if s.name == "phase" else s)
    df = df.reset_index(drop=True)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_table(root / "index.csv", df[INDEX_COLUMNS])
    if _json_or_none(root / "params.json") != p:  # what ran (the report's methods read it); a rerun touches nothing
        atomic_write_json(root / "params.json", p)
    apply_policy(out, "preprocess", [{"patient_id": f["patient_id"], "phase": f["phase"], "reason": _reason(f)}
                                     for f in failures], len(items), on_failure, "patient-phase(s)")
    return df


def seed_preprocessed(out: str | os.PathLike, patient_id: str, phase: str, image: str | os.PathLike,
                      mask: str | os.PathLike, data: Mapping[str, Any],
                      params: Mapping[str, Any] | str | None = None) -> None:
    """Store ``data`` (the chain's output for ``image`` and ``mask``: N4 -> 1 mm -> z-score, mask resampled) as the
    cached result :func:`preprocess_cohort` with ``out`` and ``params`` finds for that patient-phase, so it
    preprocesses nothing again. The Deploy app preprocesses each phase once for its bundle and seeds its combined
    model's one-patient ``predict`` with it (:mod:`p53hcc.tools.deploy.shared_preprocessing`)."""
    p, dest = resolve_params(params), patient_path(Path(out) / "preprocessed", patient_id)
    if not bool((data["mask"] > 0.5).any()):
        raise P53hccError(f"patient {patient_id} phase {phase}: file {mask}: mask is empty on the 1 mm grid")
    n4_key, key = _keys(file_sha256(image), file_sha256(mask), p)
    _save_result(dest, phase, data,
                 {"patient_id": str(patient_id), "phase": phase, "key": key, "n4_key": n4_key, "params": p,
                  "image_source": str(image), "mask_source": str(mask), "seeded": True}, stored=True)


def preprocessed_items(items: list[dict], study_dir: str | os.PathLike) -> list[dict]:
    """Point datalist items at the preprocessed volumes of ``study_dir/preprocessed`` (N4 -> 1 mm -> z-score).

    The DL arms read these instead of the raw images, so N4 and resampling run once per patient-phase for the
    whole study (here) rather than once per arm. Handles both MC items (``ap``, ``ap_mask``, ...) and FF phase
    items (``image``, ``mask``, ``phase``). Each item gets ``content``: the preprocessing keys of its volumes
    (hashes of the raw image and mask contents and of the parameters), which the crop caches key on.

    Raises:
        P53hccError: the index is missing, or a patient-phase is not in it (its preprocessing failed).
    """
    root = Path(study_dir) / "preprocessed"
    if not (root / "index.csv").is_file():
        raise P53hccError(f"{root / 'index.csv'} not found: run `p53hcc preprocess COHORT --out {study_dir}` first")
    index = pd.read_csv(root / "index.csv", dtype={"patient_id": str}).set_index(["patient_id", "phase"])

    def paths(pid: str, phase: str) -> tuple[str, str, str]:
        if (pid, phase) not in index.index:
            raise P53hccError(f"patient {pid}, phase {phase}: no preprocessed volume in {root / 'index.csv'}")
        row = index.loc[(pid, phase)]
        return str((root / row["image"]).resolve()), str((root / row["mask"]).resolve()), str(row["key"])

    out = []
    for item in items:
        item, pid, keys = dict(item), str(item["patient_id"]), []
        if "phase" in item and "image" in item:
            item["image"], item["mask"], key = paths(pid, item["phase"])
            keys.append(key)
        else:
            for phase in PHASES:
                if phase in item:
                    item[phase], item[f"{phase}_mask"], key = paths(pid, phase)
                    keys.append(key)
        item["content"] = "+".join(keys)  # the volumes' preprocessing keys: raw file contents and parameters
        out.append(item)
    return out
