"""Nomogram of a logistic model (paper Figure 3A): points per predictor, total points, probability (drawn by
:mod:`p53hcc.fusion.report.nomogram_figure`).

Points follow the usual (R ``rms::nomogram``) convention: the predictor with the largest effect over its range,
|beta| * (hi - lo), spans 0-100 points; every other predictor gets points in proportion to beta * x on the same
scale, zero at the end of its range with the lowest risk. Total points map back to the linear predictor exactly:
``lp = lp0 + total / scale``, so a patient's probability read off the nomogram equals the model's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from p53hcc.tools.errors import InputError


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def _number(value, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(None, f"nomogram: {what} must be a number, got {value!r}") from None
    if not np.isfinite(x):
        raise InputError(None, f"nomogram: {what} is {x} (a fit that did not converge?); every coefficient, the "
                               "intercept and every range must be finite")
    return x


def _checked_inputs(coefs: Mapping[str, float], intercept: float, ranges: Mapping[str, Sequence[float]]
                    ) -> dict[str, tuple[float, float]]:
    """Every coefficient, the intercept and every predictor's (lo, hi) finite numbers, whatever their order;
    returns the ranges as (lo, hi)."""
    if not coefs:
        raise InputError(None, "nomogram: no predictor (coefs is empty)")
    missing = set(coefs) - set(ranges)
    if missing:
        raise InputError(None, f"nomogram: no range for predictor(s) {sorted(missing)}")
    _number(intercept, "the intercept")
    out = {}
    for k in coefs:
        _number(coefs[k], f"the coefficient of {k}")
        try:
            bounds = [_number(v, f"the range of {k}") for v in ranges[k]]
        except TypeError:
            raise InputError(None, f"nomogram: the range of {k} must be (lo, hi), got {ranges[k]!r}") from None
        if len(bounds) != 2:
            raise InputError(None, f"nomogram: the range of {k} must be (lo, hi), got {ranges[k]!r}")
        out[k] = (min(bounds), max(bounds))
    return out


@dataclass
class Nomogram:
    """Points scale of a fitted logistic model.

    Attributes:
        coefs: coefficient per predictor (log-odds per unit).
        intercept: model intercept.
        ranges: (lo, hi) per predictor drawn on the nomogram.
        ticks: optional (value, label) pairs per predictor axis (default: round values in the range).
        labels: display name per predictor.
        scale: points per unit of linear predictor.
        refs: predictor value at 0 points.
    """

    coefs: dict[str, float]
    intercept: float
    ranges: dict[str, tuple[float, float]]
    ticks: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    scale: float = 1.0
    refs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_logistic(cls, coefs: Mapping[str, float], intercept: float, ranges: Mapping[str, Sequence[float]],
                      ticks: Mapping[str, list[tuple[float, str]]] | None = None,
                      labels: Mapping[str, str] | None = None) -> Nomogram:
        """Build the points scale from LR coefficients and the predictor ranges to draw.

        Args:
            coefs: {predictor: beta}.
            intercept: model intercept.
            ranges: {predictor: (lo, hi)} (e.g. training min/max; (0, 1) for binary predictors).
            ticks: optional axis ticks {predictor: [(value, label), ...]}.
            labels: optional display names.
        """
        rng = _checked_inputs(coefs, intercept, ranges)
        effects = {k: abs(float(coefs[k])) * (rng[k][1] - rng[k][0]) for k in coefs}
        max_effect = max(effects.values()) if effects else 0.0
        if not max_effect > 0:
            raise InputError(None, "nomogram: every predictor has zero effect over its range (e.g. a combined "
                                   "model that gave every input weight 0): there is no axis to draw")
        refs = {k: rng[k][0] if coefs[k] >= 0 else rng[k][1] for k in coefs}
        return cls(coefs={k: float(v) for k, v in coefs.items()}, intercept=float(intercept), ranges=rng,
                   ticks=dict(ticks or {}), labels=dict(labels or {}), scale=100.0 / max_effect, refs=refs)

    @property
    def lp0(self) -> float:
        """Linear predictor at 0 total points."""
        return self.intercept + sum(self.coefs[k] * self.refs[k] for k in self.coefs)

    def max_points(self) -> dict[str, float]:
        """Points at the high-risk end of each predictor's range (the largest is 100)."""
        return {k: self.scale * abs(self.coefs[k]) * (self.ranges[k][1] - self.ranges[k][0]) for k in self.coefs}

    def predictor_points(self, name: str, value) -> np.ndarray:
        """Points of ``value`` on predictor ``name`` (values outside the drawn range extrapolate linearly)."""
        return self.scale * self.coefs[name] * (np.asarray(value, dtype=float) - self.refs[name])

    def total_to_lp(self, total) -> np.ndarray:
        return self.lp0 + np.asarray(total, dtype=float) / self.scale

    def total_to_probability(self, total) -> np.ndarray:
        """Probability of the outcome at ``total`` points."""
        return _sigmoid(self.total_to_lp(total))

    def probability_to_total(self, p) -> np.ndarray:
        p = np.asarray(p, dtype=float)
        return (np.log(p) - np.log1p(-p) - self.lp0) * self.scale

    def points(self, df: pd.DataFrame) -> pd.DataFrame:
        """Per-patient points: one column per predictor, ``total_points``, ``linear_predictor``, ``probability``.

        Args:
            df: predictor values (columns named as in ``coefs``), index = patient_id.
        """
        missing = [k for k in self.coefs if k not in df.columns]
        if missing:
            raise InputError(None, f"nomogram: predictor column(s) missing: {missing}")
        out = pd.DataFrame({f"points_{k}": self.predictor_points(k, df[k]) for k in self.coefs}, index=df.index)
        out["total_points"] = out.sum(axis=1)
        out["linear_predictor"] = self.total_to_lp(out["total_points"])
        out["probability"] = _sigmoid(out["linear_predictor"])
        return out

    def axis_ticks(self, name: str) -> list[tuple[float, str]]:
        """Ticks of a predictor axis: given ones, 0/1 for binary ranges, else round values in the range."""
        if name in self.ticks:
            return list(self.ticks[name])
        lo, hi = self.ranges[name]
        if (lo, hi) == (0.0, 1.0):
            return [(0.0, "0"), (1.0, "1")]
        vals = [v for v in MaxNLocator(nbins=8).tick_values(lo, hi) if lo - 1e-9 <= v <= hi + 1e-9]
        return [(float(v), f"{v:g}") for v in vals]
