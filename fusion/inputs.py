"""Input checks shared by the statistics, calibration, decision-curve, clinical and cross-fitting modules.

They turn silent garbage (NaN scores, one-class cohorts, misaligned arrays, impossible confidence levels) into one
clear ``ValueError``.

One alignment rule for per-patient inputs everywhere in :mod:`p53hcc.fusion`. A pandas Series (or DataFrame) is
*labelled* when its index names patients: any index but a ``RangeIndex`` (row numbers 0..n-1), so integer patient
ids (1001, 1002...) are ids too, compared as text with string ids. The patients asked for (the labels ``y_true``, a
design matrix's rows) set the order:

* when they are labelled, every labelled input is matched **by id**: each patient must be in it exactly once (a
  duplicated or missing id is an error); unlabelled inputs (numpy arrays, lists, a Series with row numbers) are
  matched by position and must have the same length, and so is an input with integer labels none of which is one
  of the patients' ids (a column of a filtered table whose rows were re-indexed by patient id elsewhere);
* when they are unlabelled (an array, a Series with row numbers), every input is matched by position (a Series
  filtered from a table keeps integer row labels, which can only mean positions here), except that an input
  indexed by text ids is an error: ids cannot be matched to row numbers (index both by patient id, or pass
  ``.to_numpy()`` to mean "by position");
* a labelled reference itself (``y_true`` with a duplicated id) is refused.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from p53hcc.tools.errors import InputError


def indexed_by_id(values) -> bool:
    """A Series or DataFrame whose index names patients (anything but a ``RangeIndex`` of row numbers)."""
    return isinstance(values, (pd.Series, pd.DataFrame)) and not isinstance(values.index, pd.RangeIndex)


def _first_duplicate(ids: pd.Index) -> str | None:
    dup = ids[ids.duplicated()]
    return str(dup[0]) if len(dup) else None


def align(values, index, name: str = "values") -> pd.Series:
    """``values`` as a Series on the patients ``index`` by the module's rule (by id when both are labelled, else by
    position; text ids against row numbers are an error); the result is indexed by the ids as text.

    ``index``: a pandas Index (a ``RangeIndex`` means row numbers), or anything else listing patient ids.

    Raises:
        ValueError: a labelled input lacks some of the patients or repeats one, text ids are matched to row
            numbers, or an input matched by position has the wrong length.
    """
    numbered = isinstance(index, pd.RangeIndex)
    ids = pd.Index(index).astype(str)
    if (dup := _first_duplicate(ids)) is not None and not numbered:
        raise ValueError(f"patient id {dup!r} appears more than once among the patients {name} is matched to")
    if indexed_by_id(values) and numbered:
        if not pd.api.types.is_integer_dtype(values.index):
            raise ValueError(f"{name} is indexed by patient id but the patients it is matched to are row numbers "
                             f"0..{len(ids) - 1}: index both by patient_id (or pass {name}.to_numpy() to match by "
                             "position)")
    elif indexed_by_id(values):
        if isinstance(values, pd.DataFrame):
            raise ValueError(f"{name} must be one value per patient (a Series), got a table of {values.shape[1]} "
                             "column(s)")
        keyed = values.set_axis(values.index.astype(str))
        if pd.api.types.is_integer_dtype(values.index) and not keyed.index.isin(ids).any():
            return align(values.to_numpy(), pd.RangeIndex(len(ids)), name).set_axis(ids)  # row labels, not ids
        if (dup := _first_duplicate(keyed.index)) is not None:
            raise ValueError(f"{name}: duplicate patient id {dup!r} ({int((keyed.index == dup).sum())} values)")
        missing = ids.difference(keyed.index)
        if len(missing):
            raise ValueError(f"{name}: no value for patient {missing[0]!r} ({len(missing)} missing)")
        return keyed.reindex(ids)
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != len(ids):
        raise ValueError(f"{name} has {arr.size} values for {len(ids)} patients")
    return pd.Series(arr, index=ids)


def patient_indexed(X: pd.DataFrame) -> pd.DataFrame:
    """X indexed by string patient_id (taken from a ``patient_id`` column when present); a duplicate id is an error."""
    has_column = "patient_id" in X.columns
    if has_column:
        X = X.set_index(X["patient_id"].astype(str), drop=False)
    X = X.copy()
    # keep the index unnamed when the column exists, so pandas never sees an ambiguous "patient_id"
    X.index = X.index.astype(str).rename(None if has_column else "patient_id")
    if X.index.duplicated().any():
        raise InputError(str(X.index[X.index.duplicated()][0]), "duplicate patient_id")
    return X


def on_patients(values, index: pd.Index, name: str = "labels/splits") -> pd.Series:
    """:func:`align`, with a mismatch reported as an :class:`~p53hcc.tools.errors.InputError`."""
    try:
        return align(values, index, name)
    except ValueError as err:
        raise InputError(None, str(err)) from err


def reference_ids(y, name: str = "y_true") -> pd.Index | None:
    """The patient ids of a labelled reference input (None for an unlabelled one); a duplicated id is an error."""
    if not indexed_by_id(y):
        return None
    ids = pd.Index(y.index).astype(str)
    if (dup := _first_duplicate(ids)) is not None:
        raise ValueError(f"{name}: duplicate patient id {dup!r} ({int((ids == dup).sum())} rows); each patient must "
                         "appear once")
    return pd.Index(y.index)


def aligned_inputs(y_true, *others, names: tuple[str, ...] | None = None) -> tuple:
    """``y_true`` and every other per-patient input on ``y_true``'s patients by the module's rule (arrays)."""
    names = names or tuple(f"score {i}" for i in range(len(others)))
    ids = reference_ids(y_true)
    if ids is None:
        index = pd.RangeIndex(len(np.asarray(y_true)))
        return (y_true, *(align(o, index, nm).to_numpy() if indexed_by_id(o) else o for o, nm in zip(others, names)))
    return (y_true.to_numpy(), *(align(o, ids, nm).to_numpy() for o, nm in zip(others, names)))


def check_alpha(alpha, name: str = "alpha") -> float:
    """``alpha`` (1 - confidence level) as a float strictly between 0 and 1."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1) (0.05 for 95% intervals), got {alpha!r}") from None
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1) (0.05 for 95% intervals), got {alpha!r}")
    return value


def as_labels(y_true, name: str = "y_true") -> np.ndarray:
    """0/1 integer labels from bool/int/float input; raises if not binary, NaN or one class only."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(int)
    try:
        yf = y.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be 0/1 labels, got values like {y[:3].tolist()}") from err
    if np.isnan(yf).any():
        raise ValueError(f"{name} contains {int(np.isnan(yf).sum())} missing value(s)")
    bad = ~np.isin(yf, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"{name} must be 0/1 labels, found {sorted(set(yf[bad].tolist()))[:5]}")
    yi = yf.astype(int)
    if yi.min() == yi.max():
        raise ValueError(f"{name} has only class {yi[0]} ({yi.size} patients); both classes are needed")
    return yi


def as_scores(score, n: int, name: str = "y_score") -> np.ndarray:
    """Finite float scores of length ``n``."""
    s = np.asarray(score, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {s.shape}")
    if s.size != n:
        raise ValueError(f"{name} has {s.size} values but y_true has {n}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(s)).sum())} NaN/infinite value(s)")
    return s


def check_binary(y_true, *scores, names: tuple[str, ...] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validate labels and any number of score vectors (aligned by the module's rule); returns (labels, [scores])."""
    names = names or tuple("y_score" if len(scores) == 1 else f"score_{i}" for i in range(len(scores)))
    y_true, *scores = aligned_inputs(y_true, *scores, names=names)
    y = as_labels(y_true)
    return y, [as_scores(s, y.size, nm) for s, nm in zip(scores, names)]


def check_probability(y_true, y_prob, name: str = "y_prob") -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities in [0, 1]."""
    y, (p,) = check_binary(y_true, y_prob, names=(name,))
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"{name} must be probabilities in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]")
    return y, p
