"""Cross-validation folds (``splits.json``), the MONAI datalist (``datalist.json``) and the one item selector.

The training cohort's stratified folds are made once and written to the study folder; every stage that
cross-fits reads them. :func:`select_items` is the only way code (the engine, the bundles' configs, Grad-CAM)
picks patients from a datalist, so "which patients does fold k train on" has one answer everywhere.
"""
from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_json
from p53hcc.tools.schema import DATALIST_SECTIONS, IMAGE_COLUMNS, PHASES

#: What :func:`select_items` accepts besides a datalist section name.
PARTS = ("train", "val", "all")
#: Folds of the training cohort's cross-validation (the paper does not say; 5 is the field's usual choice).
DEFAULT_FOLDS = 5


def make_splits(df: pd.DataFrame, n_folds: int | None = None, seed: int = 0) -> dict:
    """Stratified K folds of the training cohort, grouped by patient (no patient on both sides), seeded.

    ``n_folds`` None means :data:`DEFAULT_FOLDS`.
    """
    n_folds = int(n_folds or DEFAULT_FOLDS)
    train = df[df["split"] == "train"].sort_values("patient_id")
    if train.empty:
        raise P53hccError("the cohort has no 'train' patients to cross-validate")
    y = train["p53"].astype(float).astype(int).to_numpy()
    counts = np.bincount(y, minlength=2)
    if counts.min() < n_folds:
        raise P53hccError(f"{n_folds} folds need at least {n_folds} training patients per class; have {counts.tolist()}")
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    ids = train["patient_id"].to_numpy()
    folds, fold_of = [], {}
    for k, (tr, va) in enumerate(cv.split(ids, y, groups=ids)):
        folds.append({"fold": k, "train": sorted(set(ids[tr])), "val": sorted(set(ids[va]))})
        fold_of.update({pid: k for pid in ids[va]})
    return {"n_folds": n_folds, "seed": seed, "folds": folds, "fold_of": dict(sorted(fold_of.items()))}


def load_splits(out: str | Path) -> dict:
    """Read the study's ``splits.json``."""
    path = Path(out) / "splits.json"
    if not path.is_file():
        raise P53hccError(f"{path} not found: run `p53hcc datalist COHORT --out {out}` first")
    return json.loads(path.read_text())


def _item(row: dict, fold_of: dict) -> dict:
    """One datalist item of a cohort row: image/mask paths, label (-1 when unknown), fold (-1 outside training)."""
    label = pd.to_numeric(pd.Series([row.get("p53")]), errors="coerce").iloc[0]
    return {"patient_id": str(row["patient_id"]), **{c: row[c] for c in IMAGE_COLUMNS},
            "label": int(label) if pd.notna(label) else -1, "fold": int(fold_of.get(str(row["patient_id"]), -1)),
            "split": str(row.get("split") or "predict")}


def cohort_items(cohort_csv: str | os.PathLike) -> list[dict]:
    """Datalist items (absolute paths, ``fold`` -1) of every patient of a cohort manifest, sorted by patient."""
    df = read_cohort(cohort_csv).sort_values("patient_id")
    return [_item(r, {}) for r in df.to_dict("records")]


def write_datalist(cohort: str | Path, out: str | Path, folds: int | None = None, seed: int = 0,
                   exclude: Collection[str] = ()) -> Path:
    """Write the MONAI ``datalist.json`` (one list per split) and ``splits.json`` into the study folder.

    ``exclude``: patients left out of the analysis (``dropped.csv``): in no fold and no datalist section, so every
    model of the study is built and compared on the same patients.
    """
    df = read_cohort(cohort).sort_values("patient_id")
    df = df[~df["patient_id"].isin({str(p) for p in exclude})]
    splits = make_splits(df, folds, seed)
    datalist: dict[str, list] = {section: [] for section in DATALIST_SECTIONS.values()}
    for r in df.to_dict("records"):
        datalist[DATALIST_SECTIONS.get(r["split"], "predict")].append(_item(r, splits["fold_of"]))
    out = Path(out)
    atomic_write_json(out / "splits.json", splits)
    return atomic_write_json(out / "datalist.json", datalist)


def _load_datalist(datalist: str | os.PathLike | dict) -> tuple[dict, Path | None]:
    if isinstance(datalist, dict):
        return datalist, None
    path = Path(datalist)
    if not path.is_file():
        raise P53hccError(f"datalist not found: {path} (run `p53hcc datalist COHORT --out STUDY` first)")
    return json.loads(path.read_text()), path.parent


def select_items(datalist: str | os.PathLike | dict, part: str, fold: int = -1, phase: str | None = None
                 ) -> list[dict]:
    """The patients of one role in a cross-fit, as MONAI dict items.

    Args:
        datalist: ``datalist.json`` path (relative paths are resolved against its folder) or its loaded dict.
        part: ``train`` (training patients outside ``fold``; all of them for ``fold < 0``), ``val`` (training
            patients held out in ``fold``; for ``fold < 0`` the training patients themselves: the full-cohort
            model has no held-out patients, and monitoring never looks at the validation cohort), ``all``
            (every section), or a section name (``training``, ``validation``, ``external``, ``predict``).
        fold: held-out fold of ``splits.json``; -1 for the full-cohort model.
        phase: None for multi-phase items (``ap``, ``pvp``, ``dp``, ``ap_mask``...: the MC arm); a phase for
            single-phase items ``{image, mask, phase}`` (the FF arm's phase networks).

    Returns:
        Items with ``patient_id`` (str), ``label`` (-1 when unknown), ``fold`` and ``split``.
    """
    if phase is not None and phase not in PHASES:
        raise P53hccError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    dl, root = _load_datalist(datalist)
    training = dl.get("training", [])
    fold = int(fold)
    if part == "train":
        items = [d for d in training if fold < 0 or int(d.get("fold", -1)) != fold]
    elif part == "val":
        items = [d for d in training if int(d.get("fold", -1)) == fold] if fold >= 0 else list(training)
    elif part == "all":
        items = [d for section in DATALIST_SECTIONS.values() for d in dl.get(section, [])]
    elif part in DATALIST_SECTIONS.values():
        items = dl.get(part, [])
    else:
        raise P53hccError(f"unknown datalist part {part!r}; choose one of "
                          f"{', '.join((*PARTS, *DATALIST_SECTIONS.values()))}")

    def resolve(path: str) -> str:
        return str(path) if root is None or os.path.isabs(path) else str(root / path)

    out = []
    for d in items:
        common = {"patient_id": str(d["patient_id"]), "label": int(d.get("label", -1)),
                  "fold": int(d.get("fold", -1)), "split": d.get("split", "train")}
        if phase is None:
            out.append({**common, **{c: resolve(d[c]) for c in IMAGE_COLUMNS}})
        else:
            out.append({**common, "image": resolve(d[phase]), "mask": resolve(d[f"{phase}_mask"]), "phase": phase})
    return out
