"""What the study needs from a cohort, checked before any heavy stage: ``p53hcc validate [--study]``, the study's
``validate`` stage, and ``predict`` / ``evaluate`` before they preprocess anything.

On top of :func:`p53hcc.tools.cohort.manifest.validate_cohort` (every file and value) it checks

* the clinical columns the clinical model encodes (:data:`p53hcc.fusion.models.clinical.RAW_COLUMNS`): present, with a
  value for every patient (``n/a`` and blanks are missing); pathology (grade, MVI, used by Table 2) warns;
* the classes of each split: the training cohort needs ``folds`` patients of each class (stratified folds), a
  validation or external cohort with one class cannot give an AUC (warning: the statistics report it as NaN);
* each ROI against the radiomics parameter set the study uses (``minimumROISize``, ``minimumROIDimensions``)
  and the DL crop, masks that are not tumour outlines, and the phases' enhancement order (warning):
  :mod:`p53hcc.tools.cohort.imagechecks`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.models.clinical import RAW_COLUMNS, RAW_PATHOLOGY
from p53hcc.tools.cohort.imagechecks import ImageRequirements
from p53hcc.tools.cohort.manifest import Problem, present, read_cohort, validate_cohort
from p53hcc.tools.cohort.splits import make_splits
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.radiomics.features import load_params
from p53hcc.tools.schema import NUMERIC_RANGES

#: What the cohort is checked for: any use (``p53hcc validate``, ``predict``), a whole study (classes per split and
#: fold), or evaluating a frozen model (both classes).
PURPOSES = ("cohort", "study", "evaluate")
_FALSE = ("false", "no", "off", "0")


def image_requirements(radiomics_params, phase_order=True) -> ImageRequirements:
    """The ROI requirements of a PyRadiomics parameter set (``demo``, ``paper``, a YAML path or a dict)."""
    setting = load_params(radiomics_params).get("setting") or {}
    return ImageRequirements(min_roi_mm3=float(setting.get("minimumROISize") or 0),
                             min_roi_dims=int(setting.get("minimumROIDimensions") or 1),
                             phase_order=str(phase_order).strip().lower() not in _FALSE)


def study_requirements(cfg: dict) -> ImageRequirements:
    """:func:`image_requirements` of a resolved study configuration."""
    return image_requirements(cfg["radiomics"]["params"], cfg.get("validate", {}).get("phase_order", True))


def clinical_problems(df: pd.DataFrame) -> list[Problem]:
    """Clinical columns the clinical model needs: every one present, with a value for every patient."""
    absent = [c for c in RAW_COLUMNS if c not in df.columns]
    out = [Problem(None, ", ".join(absent), None, f"{len(absent)} clinical column(s) missing (the clinical model "
                   "needs them)")] if absent else []
    for col in (c for c in RAW_COLUMNS if c in df.columns):
        for pid in df.loc[~df[col].map(present), "patient_id"]:
            out.append(Problem(pid, col, None, "no value (the clinical model needs it for every patient)"))
    for col in RAW_PATHOLOGY:
        absent = col not in df.columns or not df[col].map(present).all()
        if absent:
            out.append(Problem(None, col, None, "pathology column missing or incomplete: Table 2 (univariable "
                               "and multivariable regressions) will not be available", "warning"))
    return out


#: Clinical columns whose range over the training cohort the frozen model stores (the numeric ones the clinical
#: model encodes); predict flags new values outside it (the model extrapolates there).
RANGE_COLUMNS: tuple[str, ...] = tuple(c for c in RAW_COLUMNS if c in NUMERIC_RANGES)


def training_ranges(df: pd.DataFrame, columns=RANGE_COLUMNS) -> dict[str, list[float]]:
    """``{column: [min, max]}`` of ``columns`` (default :data:`RANGE_COLUMNS`) over ``df``'s patients (the training
    cohort); columns absent or without a finite value are left out."""
    out = {}
    for col in (c for c in columns if c in df.columns):
        values = pd.to_numeric(df[col], errors="coerce")
        values = values[np.isfinite(values)]
        if len(values):
            out[col] = [float(values.min()), float(values.max())]
    return out


def values_outside(df: pd.DataFrame, ranges: dict[str, list[float]]):
    """``(patient_id, column, value, lo, hi)`` for every value of ``df`` outside its column's ``[lo, hi]``
    (missing values and columns are not compared)."""
    for col, (lo, hi) in ranges.items():
        if col not in df.columns:
            continue
        for pid, v in zip(df["patient_id"], pd.to_numeric(df[col], errors="coerce")):
            if pd.notna(v) and not lo <= v <= hi:
                yield str(pid), col, float(v), lo, hi


def range_problems(df: pd.DataFrame, ranges: dict[str, list[float]]) -> list[Problem]:
    """A warning per clinical value outside the training cohort's range (``training_ranges``)."""
    return [Problem(pid, col, None, f"{v:g} is outside the training cohort's range {lo:g}..{hi:g}: the model "
                    "extrapolates (out of distribution)", "warning")
            for pid, col, v, lo, hi in values_outside(df, ranges)]


def patient_warnings(problems: list[Problem], ids) -> list[str]:
    """Per patient of ``ids``, the warnings about that patient (``column: problem``, joined by `` | ``; empty
    string when none): predict's ``warnings`` column."""
    per: dict[str, list[str]] = {}
    for p in problems:
        if p.severity == "warning" and p.patient_id is not None:
            per.setdefault(str(p.patient_id), []).append(f"{p.column}: {p.problem}" if p.column else p.problem)
    return [" | ".join(per.get(str(i), [])) for i in ids]


def class_problems(df: pd.DataFrame, folds: int, purpose: str = "study", seed: int = 0,
                   inner_cv: int = 5, group_column: str | None = None, nested: bool = False,
                   harmonise_column: str | None = None) -> list[Problem]:
    """Classes per split: errors where the study cannot run, warnings where a statistic will be NaN.

    Besides ``folds`` patients of each class in training, the study plan is simulated on the folds the study will
    make (:mod:`p53hcc.tools.pipeline.plan`): the radiomics LASSO's ``inner_cv``-fold penalty search in every
    training set (each fold's, and with ``nested`` each pair of folds'), ComBat's scanners with
    ``harmonise_column``. With ``group_column`` (leave-one-scanner-out) the folds are the scanners of that column.
    """
    labels = pd.to_numeric(df["p53"], errors="coerce")
    out = []
    if purpose == "evaluate":
        known = labels.dropna()
        if known.nunique() < 2:
            out.append(Problem(None, "p53", None, "evaluation needs labelled patients of both classes (p53 0 and "
                               f"1); the cohort has {_counts(known)}"))
        return out
    if purpose != "study":
        return out
    for split in ("train", "validation", "external"):
        y = labels[df["split"] == split].dropna()
        if split == "train" and group_column is not None:
            out.extend(_scanner_fold_problems(df, seed, inner_cv, group_column, nested, harmonise_column))
        elif split == "train":
            if min((y == 0).sum(), (y == 1).sum()) < folds:
                out.append(Problem(None, "p53", None, f"split train has {_counts(y)}: {folds} stratified folds "
                                   f"need at least {folds} patients of each class"))
            else:
                out.extend(_plan_problems(df, make_splits(df, folds, seed), seed, inner_cv, nested,
                                          harmonise_column, folds))
        elif split == "validation" and y.empty:
            out.append(Problem(None, "split", None, "no validation patients: the study will report no "
                               "internal validation", "warning"))
        elif len(y) and y.nunique() < 2:
            out.append(Problem(None, "p53", None, f"split {split} has {_counts(y)} only: its AUC and one of "
                               "sensitivity/specificity cannot be computed (reported as NaN)", "warning"))
    return out


def _scanner_fold_problems(df: pd.DataFrame, seed: int, inner_cv: int, group_column: str, nested: bool = False,
                           harmonise_column: str | None = None) -> list[Problem]:
    """Leave-one-scanner-out: a batch value for every training patient, at least 2 scanners, enough of each class
    in each training part; a held-out scanner with one class gets a NaN AUC in its row (warning)."""
    from p53hcc.tools.cohort.batches import batch_of
    from p53hcc.tools.errors import InputError

    train = df[df["split"] == "train"]
    try:
        batch_of(train, group_column)
        splits = make_splits(df, seed=seed, group_column=group_column)
    except (InputError, P53hccError) as err:
        return [Problem(None, group_column, None, f"leave-one-scanner-out: {err}")]
    labels = pd.to_numeric(df.set_index("patient_id")["p53"], errors="coerce")
    out = _plan_problems(df, splits, seed, inner_cv, nested, harmonise_column)
    for f in splits["folds"]:
        if labels[f["val"]].nunique() < 2:
            out.append(Problem(None, group_column, None, f"scanner {f['group']} has training patients of one class "
                               "only: its leave-one-scanner-out AUC is NaN", "warning"))
    return out


def _plan_problems(df: pd.DataFrame, splits: dict, seed: int, inner_cv: int, nested: bool,
                   harmonise_column: str | None, folds: int | None = None) -> list[Problem]:
    """The study plan on the folds the study will make (same function, same seed): :mod:`.plan`."""
    from p53hcc.tools.cohort.batches import batch_of
    from p53hcc.tools.errors import InputError
    from p53hcc.tools.pipeline.plan import combat_problem, lasso_problem

    out = []
    lasso = lasso_problem(df, splits, inner_cv, nested, seed, folds)
    if lasso:
        out.append(Problem(None, "p53", None, lasso[1], lasso[0]))
    if harmonise_column is not None:
        try:
            combat = combat_problem(batch_of(df[df["split"] == "train"], harmonise_column), splits, nested)
        except InputError as err:
            return [*out, Problem(None, harmonise_column, None, f"fusion.harmonise combat: {err}")]
        if combat:
            out.append(Problem(None, harmonise_column, None, combat, "warning"))
    return out


def _counts(y: pd.Series) -> str:
    return f"{int((y == 0).sum())} P53-negative and {int((y == 1).sum())} P53-positive patient(s)"


def cohort_problems(cohort_csv: str | Path, requirements: ImageRequirements, folds: int = 5,
                    purpose: str = "study", progress: bool = True, seed: int = 0, inner_cv: int = 5,
                    group_column: str | None = None, nested: bool = False,
                    harmonise_column: str | None = None) -> list[Problem]:
    """Every problem of the cohort's files and values plus what ``purpose`` needs (clinical, classes, ROIs)."""
    if purpose not in PURPOSES:
        raise P53hccError(f"unknown purpose {purpose!r}; choose one of {', '.join(PURPOSES)}")
    df = read_cohort(cohort_csv, check_ids=False)
    problems = validate_cohort(cohort_csv, progress=progress, requirements=requirements)
    return problems + clinical_problems(df) + class_problems(df, int(folds), purpose, int(seed), int(inner_cv),
                                                             group_column, bool(nested), harmonise_column)


def study_check_params(cfg: dict) -> dict:
    """The settings of a resolved study configuration that the checks depend on (the validate stage's key)."""
    from dataclasses import asdict

    from p53hcc.tools.pipeline.config import fold_groups

    group, fusion = fold_groups(cfg), cfg["fusion"]
    combat = fusion.get("harmonise") == "combat"
    return {"requirements": asdict(study_requirements(cfg)), "folds": int(cfg["folds"]), "seed": int(cfg["seed"]),
            "inner_cv": int(fusion.get("lasso_cv_folds") or 5), "nested": fusion.get("nesting") == "nested",
            **({"group_column": group} if group else {}),
            **({"harmonise_column": cfg.get("batch_column") or "scanner"} if combat else {})}


def raise_on_errors(cohort_csv: str | Path, problems: list[Problem], shown: int = 5) -> None:
    """One error naming the first problems (and how many more) when any problem is an error."""
    errors = [str(p) for p in problems if p.severity == "error"]
    if errors:
        more = f"; ... ({len(errors) - shown} more: run `p53hcc validate {cohort_csv} --study`)" \
            if len(errors) > shown else ""
        raise P53hccError(f"{cohort_csv}: {len(errors)} problem(s): " + "; ".join(errors[:shown]) + more)


def validate_study_command(cohort: str | Path, config: str | Path | None = None, profile: str = "paper",
                           purpose: str = "study", source: str = "argument", **overrides) -> str:
    """CLI body of ``p53hcc validate [--study]``: print every problem; raise (exit 1) if any is an error."""
    from p53hcc.tools.pipeline.config import resolve_config

    cfg = resolve_config(config, profile=profile, source=source, **overrides)
    checks = study_check_params(cfg)
    problems = cohort_problems(cohort, ImageRequirements(**checks.pop("requirements")), purpose=purpose, **checks)
    for p in problems:
        print(f"{p.severity.upper()}: {p}")
    n_patients = len(read_cohort(cohort, check_ids=False))
    n_errors = sum(p.severity == "error" for p in problems)
    if n_errors:
        raise P53hccError(f"{cohort}: {n_errors} problem(s) in {n_patients} patients (listed above)")
    what = "ready for the study" if purpose == "study" else "no problems found"
    return f"{cohort}: {n_patients} patients, {what} ({len(problems)} warning(s))"
