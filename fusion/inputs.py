"""Input checks shared by the statistics, calibration, decision-curve, clinical and cross-fitting modules.

They turn silent garbage (NaN scores, one-class cohorts, misaligned arrays) into one clear ``ValueError``.

One alignment rule for per-patient inputs everywhere in :mod:`p53hcc.fusion`: a pandas Series indexed by patient ids
(strings, as the cohort contract has them) is matched **by its index**, and every patient asked for must be in it;
anything else (numpy arrays, lists, and a Series with an integer index, i.e. a DataFrame column with row numbers) is
matched by position and must have the same length.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from p53hcc.tools.errors import InputError


def indexed_by_id(values) -> bool:
    """A Series whose index holds patient ids (not integer row numbers)."""
    return isinstance(values, pd.Series) and not pd.api.types.is_integer_dtype(values.index)


def align(values, index: pd.Index, name: str = "values") -> pd.Series:
    """``values`` as a Series on ``index``: by patient id for a Series, by position otherwise.

    Raises:
        ValueError: a labelled input lacks some of the patients, or an unlabelled one has the wrong length.
    """
    index = pd.Index(index).astype(str)
    if indexed_by_id(values):
        keyed = values.set_axis(values.index.astype(str))
        if keyed.index.duplicated().any():
            raise ValueError(f"{name}: duplicate patient id {keyed.index[keyed.index.duplicated()][0]!r}")
        missing = index.difference(keyed.index)
        if len(missing):
            raise ValueError(f"{name}: no value for patient {missing[0]!r} ({len(missing)} missing)")
        return keyed.reindex(index)
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != len(index):
        raise ValueError(f"{name} has {arr.size} values for {len(index)} patients")
    return pd.Series(arr, index=index)


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


def _aligned(y_true, scores) -> tuple:
    """Labelled scores re-ordered onto labelled ``y_true`` (the module's alignment rule)."""
    if not indexed_by_id(y_true):
        return y_true, scores
    return y_true, tuple(align(s, y_true.index, f"score {i}").to_numpy() for i, s in enumerate(scores))


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
    y_true, scores = _aligned(y_true, scores)
    y = as_labels(y_true)
    names = names or tuple("y_score" if len(scores) == 1 else f"score_{i}" for i in range(len(scores)))
    return y, [as_scores(s, y.size, nm) for s, nm in zip(scores, names)]


def check_probability(y_true, y_prob, name: str = "y_prob") -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities in [0, 1]."""
    y, (p,) = check_binary(y_true, y_prob, names=(name,))
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"{name} must be probabilities in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]")
    return y, p
