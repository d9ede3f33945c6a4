"""Nomogram of a logistic model (paper Figure 3A): points per predictor, total points, probability.

Points follow the usual (R ``rms::nomogram``) convention: the predictor with the largest effect over its range,
|beta| * (hi - lo), spans 0-100 points; every other predictor gets points in proportion to beta * x on the same
scale, zero at the end of its range with the lowest risk. Total points map back to the linear predictor exactly:
``lp = lp0 + total / scale``, so a patient's probability read off the nomogram equals the model's.
No maintained Python package draws nomograms, hence this small module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from p53hcc.tools.errors import InputError

TICK_FONTSIZE = 8
X_LIMITS = (-42.0, 104.0)  # data units: room for row titles left of the 0-100 points scale
PROBABILITY_TICKS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


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
        missing = set(coefs) - set(ranges)
        if missing:
            raise InputError(None, f"nomogram: no range for predictor(s) {sorted(missing)}")
        rng = {k: (float(min(ranges[k])), float(max(ranges[k]))) for k in coefs}
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


def _thin(positions: Sequence[float], labels: Sequence[str], units_per_char: float) -> list[bool]:
    """Which tick labels to show (in position order) so that no two shown labels touch.

    Two labels need (len(a) + len(b)) / 2 characters of room plus one character of air between their centres.
    """
    keep, last, last_len = [], -np.inf, 0
    for x, lab in zip(positions, labels):
        ok = x - last >= ((last_len + len(lab)) / 2 + 1) * units_per_char
        keep.append(ok)
        if ok:
            last, last_len = x, len(lab)
    return keep


def _axis(ax, y: float, positions: Sequence[float], labels: Sequence[str], title: str,
          units_per_char: float) -> None:
    """Draw one horizontal nomogram axis: line, tick marks, tick labels above, title on the left."""
    if len(positions):
        ax.plot([min(positions), max(positions)], [y, y], color="black", lw=1)
    order = np.argsort(positions)
    shown = _thin([positions[i] for i in order], [labels[i] for i in order], units_per_char)
    for i, show in zip(order, shown):
        ax.plot([positions[i]] * 2, [y, y + 0.12], color="black", lw=1)
        if show:
            ax.text(positions[i], y + 0.18, labels[i], ha="center", va="bottom", fontsize=TICK_FONTSIZE)
    ax.text(-4, y, title, ha="right", va="center", fontsize=10)


def nomogram_figure(nomogram: Nomogram, outcome: str = "Probability of P53 mutation",
                    figsize: tuple[float, float] | None = None) -> Figure:
    """Draw the nomogram like the paper's Figure 3A (Points, one axis per predictor, Total points, probability).

    The total-points axis is drawn on the same 0-100 width as the Points axis, rescaled by the largest
    attainable total.
    """
    names = list(nomogram.coefs)
    max_pts = nomogram.max_points()
    total_max = float(sum(max_pts.values()))
    rows = 3 + len(names)
    fig = Figure(figsize=figsize or (9.0, 0.75 * rows + 0.6))
    ax = fig.add_axes((0.0, 0.02, 1.0, 0.96))
    # width of one tick-label character (~0.6 em) in data units, to thin crowded tick labels
    upc = 0.6 * TICK_FONTSIZE / 72 * (X_LIMITS[1] - X_LIMITS[0]) / fig.get_figwidth()
    y = rows
    pts = list(range(0, 101, 10))
    _axis(ax, y, pts, [str(p) for p in pts], "Points", upc)
    for name in names:
        y -= 1
        title = nomogram.labels.get(name, name)
        if nomogram.coefs[name] == 0:  # a degenerate axis: say why instead of stacking every tick at 0 points
            ax.text(-4, y, title, ha="right", va="center", fontsize=10)
            ax.text(0, y, "weight 0: this input does not change the combined model's prediction", ha="left",
                    va="center", fontsize=TICK_FONTSIZE, color="grey", style="italic")
            continue
        ticks = nomogram.axis_ticks(name)
        pos = [float(nomogram.predictor_points(name, v)) for v, _ in ticks]
        _axis(ax, y, pos, [lab for _, lab in ticks], title, upc)
    y -= 1
    step = MaxNLocator(nbins=10, steps=[1, 2, 2.5, 5, 10]).tick_values(0, total_max)
    tot = [t for t in step if 0 <= t <= total_max + 1e-9]
    _axis(ax, y, [100 * t / total_max for t in tot], [f"{t:g}" for t in tot], "Total points", upc)
    y -= 1
    probs = [p for p in PROBABILITY_TICKS if 0 <= nomogram.probability_to_total(p) <= total_max]
    _axis(ax, y, [100 * float(nomogram.probability_to_total(p)) / total_max for p in probs],
          [f"{p:g}" for p in probs], outcome, upc)
    ax.set_xlim(*X_LIMITS)
    ax.set_ylim(y - 0.6, rows + 0.7)
    ax.axis("off")
    return fig
