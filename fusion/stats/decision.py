"""Decision-curve analysis (Vickers & Elkin 2006): net benefit of treating patients whose predicted risk
is at or above a threshold probability, against treat-all and treat-none.

Reproduces R ``dcurves::dca`` (Sjoberg) exactly, including its convention for risks of exactly 0 and 1:
a risk of 0 is never positive (not even at threshold 0) and a risk of 1 is always positive, which makes
"none" (risk 0 for all) and "all" (risk 1 for all) the usual reference strategies. Checked against the R
tables in ``shared/reference-data/dcurves`` in ``tests/test_stats.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from p53hcc.fusion.inputs import as_labels, check_probability

COLUMNS = ["model", "threshold", "net_benefit", "tp_rate", "fp_rate", "test_pos_rate", "harm",
           "net_intervention_avoided"]
DEFAULT_THRESHOLDS = np.arange(0.01, 1.0, 0.01)  # 1% .. 99%, as R dcurves' default grid


def threshold_grid(start: float, stop: float, step: float) -> np.ndarray:
    """Threshold probabilities ``start, start + step, ..., stop`` (inclusive; the study's
    ``statistics.dca_thresholds``), rounded to 10 decimals so the grid is exact (0.01..0.99 = R's ``1:99/100``).

    Raises:
        ValueError: not ``0 <= start <= stop < 1`` with a finite ``step > 0``.
    """
    try:
        start, stop, step = float(start), float(stop), float(step)
    except (TypeError, ValueError):
        raise ValueError(f"threshold grid: start, stop and step must be numbers, got {start!r}, {stop!r}, "
                         f"{step!r}") from None
    if not (np.isfinite([start, stop, step]).all() and 0 <= start <= stop < 1 and step > 0):
        raise ValueError(f"threshold grid: expected 0 <= start <= stop < 1 and step > 0 (threshold probabilities), "
                         f"got start {start:g}, stop {stop:g}, step {step:g}")
    return np.round(np.arange(start, stop + step / 2, step), 10)


def _positive(risk: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(n_thresholds, n) positive calls: risk >= t, with risk 0 never and risk 1 always positive."""
    pos = risk[None, :] >= thresholds[:, None]
    pos &= risk[None, :] != 0
    pos |= risk[None, :] == 1
    return pos


def _curve(name: str, y: np.ndarray, risk: np.ndarray, thresholds: np.ndarray, harm: float) -> pd.DataFrame:
    pos = _positive(risk, thresholds)
    tp = (pos & (y == 1)[None, :]).sum(axis=1) / y.size
    fp = (pos & (y == 0)[None, :]).sum(axis=1) / y.size
    odds = thresholds / (1 - thresholds)
    return pd.DataFrame({"model": name, "threshold": thresholds, "net_benefit": tp - fp * odds - harm,
                         "tp_rate": tp, "fp_rate": fp, "test_pos_rate": pos.mean(axis=1), "harm": harm})


def net_benefit(y_true, scores: dict[str, np.ndarray] | pd.DataFrame,
                thresholds=DEFAULT_THRESHOLDS, harm: dict[str, float] | None = None) -> pd.DataFrame:
    """Net benefit per model and threshold, plus the "all" (treat all) and "none" (treat none) strategies.

    net_benefit = tp_rate - fp_rate * pt / (1 - pt) - harm, where tp_rate and fp_rate are true/false
    positives divided by the number of patients and pt is the threshold probability.
    net_intervention_avoided = (NB_model - NB_all) / (pt / (1 - pt)) per patient (NaN/-inf at pt = 0).

    Args:
        y_true: 0/1 outcomes.
        scores: predicted probabilities per model, as {name: array} or a DataFrame with one column per model.
            "all" and "none" are reserved names.
        thresholds: threshold probabilities in [0, 1); rounded to 12 decimals so that
            ``np.arange(0.01, 1, 0.01)`` gives the same cut-offs as R's ``1:99/100``.
        harm: optional harm per model, in net-benefit units (as dcurves ``harm=``).

    Returns:
        Tidy DataFrame with columns model, threshold, net_benefit, tp_rate, fp_rate, test_pos_rate, harm,
        net_intervention_avoided; rows "all", "none", then the models in input order.
    """
    y = as_labels(y_true)
    items = scores.items() if isinstance(scores, pd.DataFrame) else dict(scores).items()
    models = {str(k): check_probability(y_true, v, name=f"scores[{k!r}]")[1] for k, v in items}
    if not models:
        raise ValueError("net_benefit needs at least one model score")
    reserved = {"all", "none"} & set(models)
    if reserved:
        raise ValueError(f"model names {sorted(reserved)} are reserved for the reference strategies")
    unknown = set(harm or {}) - set(models)
    if unknown:
        raise ValueError(f"harm given for unknown model(s) {sorted(unknown)}")
    t = np.round(np.atleast_1d(np.asarray(thresholds, dtype=float)), 12)
    if t.size == 0 or not np.isfinite(t).all() or t.min() < 0 or t.max() >= 1:
        raise ValueError("thresholds must be non-empty and within [0, 1)")
    frames = [_curve("all", y, np.ones(y.size), t, 0.0), _curve("none", y, np.zeros(y.size), t, 0.0)]
    frames += [_curve(k, y, v, t, float((harm or {}).get(k, 0.0))) for k, v in models.items()]
    out = pd.concat(frames, ignore_index=True)
    nb_all = np.tile(frames[0]["net_benefit"].to_numpy(), len(frames))
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = out["threshold"] / (1 - out["threshold"])
        out["net_intervention_avoided"] = (out["net_benefit"] - nb_all) / odds
    return out[COLUMNS]
