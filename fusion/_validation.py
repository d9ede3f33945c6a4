"""Input checks shared by :mod:`p53hcc.fusion.stats`, :mod:`p53hcc.fusion.calibration` and :mod:`p53hcc.fusion.decision`.

They turn silent garbage (NaN scores, one-class cohorts, misaligned arrays) into one clear ``ValueError``.
"""
from __future__ import annotations

import numpy as np


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
    """Validate labels and any number of aligned score vectors; returns (labels, [scores...])."""
    y = as_labels(y_true)
    names = names or tuple("y_score" if len(scores) == 1 else f"score_{i}" for i in range(len(scores)))
    return y, [as_scores(s, y.size, nm) for s, nm in zip(scores, names)]


def check_probability(y_true, y_prob, name: str = "y_prob") -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities in [0, 1]."""
    y, (p,) = check_binary(y_true, y_prob, names=(name,))
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"{name} must be probabilities in [0, 1], got range [{p.min():.4g}, {p.max():.4g}]")
    return y, p
