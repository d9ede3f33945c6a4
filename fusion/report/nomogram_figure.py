"""Drawing a nomogram like the paper's Figure 3A: the Points scale, one axis per predictor, Total points and the
probability, from the points scale of :class:`p53hcc.fusion.models.nomogram.Nomogram`.

No maintained Python package draws nomograms, hence this small module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from p53hcc.fusion.models.nomogram import Nomogram

TICK_FONTSIZE = 8
X_LIMITS = (-42.0, 104.0)  # data units: room for row titles left of the 0-100 points scale
PROBABILITY_TICKS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


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
