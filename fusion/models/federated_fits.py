"""The study's models as federated protocols (see :mod:`p53hcc.fusion.federated` for the request/sum rules).

Each ``*_protocol`` takes the rows it fits on (a row selector: training patients, optionally without some folds)
and returns a *scoring spec*: the transform chain and coefficients a site applies to its own patients
(:func:`score_spec`). Cross-fitting (:func:`crossfit_protocol`) runs the fold fits side by side.

* **Clinical** (:class:`~p53hcc.fusion.models.clinical.ClinicalModel`): univariable Wald screen, stepwise AIC and the
  final LR, every fit a federated Newton: the pooled selection and coefficients (tested). A variable that
  separates the classes gets Fisher's exact p from the pooled 2 x 2 table (binary; exact); a non-binary one gets
  NaN (the pooled model's supremum likelihood-ratio test needs the rows) and is not screened in.
* **Radiomics** (:func:`~p53hcc.fusion.models.radiomics.make_radiomics_model`): variance filter and z-scores from pooled
  moments (exact); the Spearman filter on the n-weighted mean of the sites' Spearman matrices and the pooled
  within-site AUC as relevance (not the pooled ranks: an approximation, exact for one site); the LASSO by proximal
  Newton (the pooled optimum for a given penalty) with the penalty chosen by cross-validation over the *outer*
  folds (sites keep their own fold labels); the final L2 LR exact.
* **FF head** (:class:`~p53hcc.fusion.models.ffhead.FFHead`): per-phase standardisation and PCA from pooled
  cross-products (exact up to component signs), LASSO as above, final unpenalised LR exact.
* **Combined** (:class:`~p53hcc.fusion.models.combined.CombinedModel`): standardised logits from pooled moments,
  non-negative weights by projected Newton (the pooled bound-constrained MLE).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from p53hcc.fusion.models.federated import (
    Protocol,
    ask,
    lasso_logit,
    logit_scores,
    logloss_sum,
    moments,
    newton_logit,
    parallel,
    transform,
)

#: The LASSO penalty grids of the pooled models (selection.LassoSelector, ffhead.FFHead).
RADIOMICS_CS = tuple(np.logspace(-2.5, 1, 15))
FF_HEAD_CS = tuple(np.logspace(-2, 1, 15))
Spec = dict[str, Any]


def feature_table_name(fold: int) -> str:
    """The site table of the FF penultimate features of the networks of ``fold`` (-1: the full-cohort ones)."""
    return f"features{fold}"


def score_spec(table: pd.DataFrame, spec: Spec) -> np.ndarray:
    """A site's scores of its own patients (``table`` rows) under a fitted spec."""
    if spec.get("constant") is not None:
        return np.full(len(table), float(spec["constant"]))
    return logit_scores(transform(table, spec["ops"]), np.asarray(spec["beta"], float))


def _with_fold(rows: Mapping[str, Any], fold: int) -> dict:
    out = dict(rows)
    out["folds_out"] = [*out.get("folds_out", []), fold]
    return out


def _wald_p(fit) -> float:
    if not fit.converged or not np.all(np.isfinite(fit.bse)):
        return float("nan")
    return float(2 * sps.norm.sf(abs(fit.beta[1] / fit.bse[1])))


# --------------------------------------------------------------------------------------------- clinical
def clinical_protocol(rows: Mapping[str, Any], variables: Sequence[str], p_enter: float = 0.05) -> Protocol:
    """The clinical model (screen -> stepwise AIC -> LR) fitted on ``rows`` of every site's encoded table."""
    src = "clinical"
    variables = list(variables)
    mean, sd, n = yield from moments(src, rows, [{"op": "select", "columns": variables}])
    varying = [v for v, s in zip(variables, sd) if s > 1e-12 * max(1.0, abs(mean[variables.index(v)]))]
    fits = yield from parallel({v: newton_logit(src, rows, [{"op": "select", "columns": [v]}], 1) for v in varying})
    pvals = {v: float("nan") for v in variables}
    notes = {v: "constant variable: no test" for v in variables if v not in varying}
    for v in varying:
        pvals[v] = _wald_p(fits[v])
        if not fits[v].converged:  # separation: Fisher's exact test for a binary (0/1) variable
            m, var = float(mean[variables.index(v)]), float(sd[variables.index(v)]) ** 2
            binary = 0 <= m <= 1 and abs(var - m * (1 - m)) < 1e-9
            tab = yield from ask({"kind": "counts", "source": src, "rows": dict(rows),
                                  "ops": [{"op": "select", "columns": [v]}], "level": 1.0})
            pvals[v] = float(sps.fisher_exact(tab["table"].astype(int)).pvalue) if binary else float("nan")
            notes[v] = "separation; Fisher's exact test" if binary else "separation; not testable federated"
    screened = [v for v in variables if pvals[v] < p_enter]

    def fit(cols: list[str]) -> Protocol:
        return newton_logit(src, rows, [{"op": "select", "columns": cols}], len(cols))

    current: list[str] = []
    best = (yield from fit(current)).aic
    for _ in range(100):
        moves = [[c for c in current if c != v] for v in current]
        moves += [current + [v] for v in screened if v not in current]
        if not moves:
            break
        res = yield from parallel({str(i): fit(m) for i, m in enumerate(moves)})
        aics = [res[str(i)].aic for i in range(len(moves))]
        i = int(np.argmin(aics))  # the first of equal AICs, removals before additions (as the pooled search)
        if not aics[i] < best - 1e-9:
            break
        best, current = aics[i], moves[i]
    selected = [v for v in screened if v in current]
    final = yield from fit(selected)
    return {"source": src, "ops": [{"op": "select", "columns": selected}], "beta": final.beta.tolist(),
            "selected": selected, "screened": screened, "p_values": pvals, "notes": notes, "n": n,
            "cov": final.cov.tolist()}


# ------------------------------------------------------------------------------------- LASSO with CV
def _cv_lasso(src: str, rows: Mapping[str, Any], ops: list, p: int, Cs: Sequence[float],
              cv_folds: Sequence[int]) -> Protocol:
    """The LASSO penalty by cross-validation over ``cv_folds`` (mean held-out log-loss), refitted on ``rows``."""
    if p == 0:
        return {"C": float("nan"), "beta": np.zeros(1), "cv_loss": []}
    fits = yield from parallel({f"{i}:{j}": lasso_logit(src, _with_fold(rows, j), ops, p, C)
                                for i, C in enumerate(Cs) for j in cv_folds})
    losses = yield from parallel({key: logloss_sum(src, {**rows, "folds_in": [int(key.split(":")[1])]}, ops, beta)
                                  for key, beta in fits.items()})
    cv_loss = [float(np.mean([losses[f"{i}:{j}"][0] / max(losses[f"{i}:{j}"][1], 1) for j in cv_folds]))
               for i in range(len(Cs))]
    best = int(np.argmin(cv_loss))  # the first (strongest penalty) of equal losses
    beta = yield from lasso_logit(src, rows, ops, p, Cs[best])
    return {"C": float(Cs[best]), "beta": beta, "cv_loss": cv_loss}


def _relevance_filter(rho: np.ndarray, relevance: np.ndarray, threshold: float) -> np.ndarray:
    """The SpearmanFilter's greedy rule on given correlations and relevances."""
    order = np.argsort(-relevance, kind="stable")
    keep = np.zeros(len(relevance), bool)
    for j in order:
        if not (np.abs(rho[j, keep]) > threshold).any():
            keep[j] = True
    return keep


# ------------------------------------------------------------------------------------------- radiomics
def radiomics_protocol(rows: Mapping[str, Any], features: Sequence[str], cv_folds: Sequence[int],
                       spearman: float = 0.9, final_C: float = 10.0, Cs: Sequence[float] = RADIOMICS_CS
                       ) -> Protocol:
    """The radiomics model fitted on ``rows``; the LASSO's penalty is cross-validated over ``cv_folds``."""
    src = "radiomics"
    features = list(features)
    mean, sd, n = yield from moments(src, rows, [{"op": "select", "columns": features}])
    varying = sd > 1e-12 * np.maximum(1.0, np.abs(mean))
    cols = [f for f, v in zip(features, varying) if v]
    mean, sd = mean[varying], sd[varying]
    sp = yield from ask({"kind": "spearman", "source": src, "rows": dict(rows),
                         "ops": [{"op": "select", "columns": cols}]})
    rho = sp["n_rho"] / max(float(sp["n"]), 1.0)
    relevance = np.abs(sp["u"] / max(float(sp["n10"]), 1.0) - 0.5)
    keep = _relevance_filter(rho, relevance, spearman)
    kept = [c for c, k in zip(cols, keep) if k]
    scaled = [{"op": "select", "columns": kept}, {"op": "affine", "mean": mean[keep], "scale": sd[keep]}]
    lasso = yield from _cv_lasso(src, rows, scaled, len(kept), Cs, cv_folds)
    support = np.abs(lasso["beta"][1:]) > 0
    fallback = not support.any()
    if fallback and len(kept):
        support[int(np.argmax(relevance[keep]))] = True
    chosen = [c for c, s in zip(kept, support) if s]
    ops = [{"op": "select", "columns": chosen},
           {"op": "affine", "mean": mean[keep][support], "scale": sd[keep][support]}]
    final = yield from newton_logit(src, rows, ops, len(chosen), l2=1.0 / final_C)
    return {"source": src, "ops": ops, "beta": final.beta.tolist(), "selected": chosen, "n_spearman": len(kept),
            "n_features": len(features), "lasso_C": lasso["C"], "lasso_fallback": fallback, "n": n}


# --------------------------------------------------------------------------------------------- FF head
def ff_head_protocol(rows: Mapping[str, Any], phase_columns: Mapping[str, Sequence[str]], cv_folds: Sequence[int],
                     n_components: int = 8, Cs: Sequence[float] = FF_HEAD_CS, source: str = "features") -> Protocol:
    """The FF head on the site table ``source``: per-phase z-score + PCA from pooled cross-products, LASSO (CV),
    unpenalised LR."""
    src = source
    sums = yield from parallel({ph: ask({"kind": "crossprod", "source": src, "rows": dict(rows),
                                        "ops": [{"op": "select", "columns": list(cols)}]})
                                for ph, cols in phase_columns.items()})
    parts = []
    for ph, cols in phase_columns.items():
        a = sums[ph]
        n = float(a["n"])
        mu = a["sum"] / n
        cov = a["xtx"] / n - np.outer(mu, mu)
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        sd = np.where(sd > 0, sd, 1.0)  # StandardScaler leaves a constant feature unscaled
        corr = cov / np.outer(sd, sd)
        vals, vecs = np.linalg.eigh(corr)
        order = np.argsort(vals)[::-1]
        k = int(min(n_components, n - 1, len(cols)))
        vals, vecs = np.maximum(vals[order][:k], 1e-300), vecs[:, order][:, :k]
        parts.append([list(cols), mu.tolist(), sd.tolist(), (vecs / np.sqrt(vals)).tolist()])  # PCA + post-scale
    ops = [{"op": "blocks", "parts": parts}]
    p = sum(len(q[3][0]) if q[3] else 0 for q in parts)
    lasso = yield from _cv_lasso(src, rows, ops, p, Cs, cv_folds)
    support = np.abs(lasso["beta"][1:]) > 1e-10
    if not support.any():  # LASSO kept nothing: the score is the prevalence, as the pooled head
        counts = yield from ask({"kind": "logit", "source": src, "rows": dict(rows),
                                 "ops": [{"op": "select", "columns": []}], "beta": np.zeros(1)})
        rate = 0.5 + float(counts["grad"][0]) / max(float(counts["n"]), 1.0)  # sum(y - 1/2) / n + 1/2
        return {"constant": rate, "n_selected": 0, "lasso_C": lasso["C"], "source": src}
    sel = np.flatnonzero(support)
    W = np.zeros((p, len(sel)))
    W[sel, np.arange(len(sel))] = 1.0
    full_ops = [*ops, {"op": "project", "matrix": W}]
    final = yield from newton_logit(src, rows, full_ops, len(sel))
    return {"source": src, "ops": full_ops, "beta": final.beta.tolist(), "n_selected": len(sel),
            "lasso_C": lasso["C"]}


# -------------------------------------------------------------------------------------------- combined
def combined_protocol(rows: Mapping[str, Any], inputs: Sequence[str], nonnegative: bool = True,
                      eps: float = 1e-6) -> Protocol:
    """The combined LR on standardised logits of the component scores (non-negative weights by default)."""
    src = "scores"
    base = [{"op": "select", "columns": list(inputs)}, {"op": "logit", "eps": eps}]
    mean, sd, n = yield from moments(src, rows, base)
    sd = np.where(sd > 0, sd, 1.0)
    ops = [*base, {"op": "affine", "mean": mean, "scale": sd}]
    fit = yield from newton_logit(src, rows, ops, len(inputs), nonnegative=nonnegative)
    coef = fit.beta[1:] / sd
    return {"source": src, "ops": ops, "beta": fit.beta.tolist(), "inputs": list(inputs),
            "coefficients": dict(zip(inputs, map(float, coef))),
            "intercept": float(fit.beta[0] - np.sum(fit.beta[1:] * mean / sd)), "n": n}


# ------------------------------------------------------------------------------------------ cross-fitting
def crossfit_protocol(fit: Callable[[dict, list[int], int], Protocol], folds: Sequence[int]) -> Protocol:
    """Fit one model per outer fold k (training rows outside k; its CV folds the other outer folds) and on every
    training row (key -1; CV over all folds), side by side: ``fit(rows, cv_folds, k)``. Returns ``{fold: spec}``."""
    folds = [int(k) for k in folds]
    res = yield from parallel({str(k): fit({"split": "train", "folds_out": [k]}, [j for j in folds if j != k], k)
                               for k in folds} | {"-1": fit({"split": "train"}, folds, -1)})
    return {int(k): v for k, v in res.items()}
