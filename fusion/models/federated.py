"""Federated fitting maths: what a site computes on its own rows, and what the server does with the sums.

No transport here (FLARE lives in :mod:`p53hcc.tools.federated`): a *protocol* is a Python generator that
yields a list of requests and receives, for each request, the **sum over sites** of the sites' answers. Every
answer is additive across sites by construction (counts, sums, sums of squares and cross-products, gradients,
Hessians, log-likelihoods), so the server never needs anything but sums, and what a site reveals is exactly the
list of sums it answers (docs/federated.md). :func:`lockstep` runs many protocols at once and batches their
requests into one round each, because a round trip through FLARE costs about a second whatever its size.

Requests name the rows (``split``, folds in / out) and the columns of a site table, plus a chain of transforms
(select, centre/scale, project, logit), so the same answer code serves the clinical, radiomics, FF-head and
combined models.

Exact where the maths allows: the logistic MLE by Newton on summed gradients and Hessians (equal to the pooled
fit), an L2-penalised LR, moments (standardisation), cross-products (PCA) and bound-constrained LR (the combined
model). The Spearman filter (ranks) and the LASSO penalty choice (folds) are not poolable exactly; their
protocols are in :mod:`p53hcc.fusion.models.federated_fits`.
"""
from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import expit
from scipy.stats import rankdata

Request = dict[str, Any]
Answer = dict[str, np.ndarray]
Protocol = Generator[list[Request], list[Answer], Any]

#: Newton stops when the largest step is below this (the pooled statsmodels fit agrees to ~1e-8).
NEWTON_TOL = 1e-10
NEWTON_MAX_ITER = 100
#: |linear predictor| beyond which a fit is declared separated (probabilities 1e-13 from 0 or 1).
SEPARATION_ETA = 30.0


# ---------------------------------------------------------------------------------------------- site side
@dataclass
class SiteTables:
    """One site's data as the answer code sees it: numeric tables, labels, splits and site-local folds.

    ``tables`` maps a source name (``clinical``, ``radiomics``, ``scores``...) to a frame indexed by
    ``patient_id``; ``y`` is NaN where unknown; ``fold`` is the site-local fold of each training patient (-1
    for the others). Nothing in here leaves the site: only :func:`answer` outputs do.
    """

    tables: dict[str, pd.DataFrame]
    y: pd.Series
    split: pd.Series
    fold: pd.Series = field(default_factory=lambda: pd.Series(dtype=int))
    trains: bool = True

    def rows(self, sel: Mapping[str, Any]) -> pd.Index:
        """Patient ids matching a row selector ``{split, folds_in, folds_out, labelled}``; none of the training
        patients of a site that does not train (``trains=False``: it only scores and evaluates)."""
        ids = self.split.index
        mask = np.ones(len(ids), bool) if self.trains else (self.split != "train").to_numpy()
        if sel.get("split") is not None:
            mask &= (self.split == sel["split"]).to_numpy()
        fold = self.fold.reindex(ids).fillna(-1).astype(int).to_numpy()
        if sel.get("folds_in") is not None:
            mask &= np.isin(fold, list(sel["folds_in"]))
        if sel.get("folds_out") is not None:
            mask &= ~np.isin(fold, list(sel["folds_out"]))
        if sel.get("labelled", True):
            mask &= self.y.reindex(ids).notna().to_numpy()
        return ids[mask]


def transform(X: pd.DataFrame, ops: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Apply a request's transform chain to a site's rows; returns the design matrix (no intercept column).

    Ops: ``{"op": "select", "columns": [...]}``, ``{"op": "affine", "mean": m, "scale": s}`` (``(x - m) / s``),
    ``{"op": "project", "matrix": W}`` (``x @ W``), ``{"op": "logit", "eps": e}``, ``{"op": "blocks", "parts":
    [[columns, mean, scale, W], ...]}`` (per-block standardise-and-project, concatenated: the FF head's per-phase
    PCA).
    """
    Z: Any = X
    for op in ops:
        kind = op["op"]
        if kind == "select":
            Z = Z[list(op["columns"])]
        elif kind == "affine":
            Z = (np.asarray(Z, float) - np.asarray(op["mean"], float)) / np.asarray(op["scale"], float)
        elif kind == "project":
            Z = np.asarray(Z, float) @ np.asarray(op["matrix"], float)
        elif kind == "logit":
            p = np.clip(np.asarray(Z, float), op.get("eps", 1e-6), 1 - op.get("eps", 1e-6))
            Z = np.log(p) - np.log1p(-p)
        elif kind == "blocks":
            Z = np.hstack([((Z[list(cols)].to_numpy(float) - np.asarray(m, float)) / np.asarray(s, float))
                           @ np.asarray(W, float) for cols, m, s, W in op["parts"]])
        else:
            raise ValueError(f"unknown transform op {kind!r}")
    return np.asarray(Z, float)


def _design(site: SiteTables, req: Request) -> tuple[np.ndarray, np.ndarray]:
    ids = site.rows(req.get("rows", {}))
    table = site.tables[req["source"]]
    X = transform(table.loc[ids], req.get("ops", ()))
    return X, site.y.loc[ids].to_numpy(float)


def _logit_terms(X: np.ndarray, y: np.ndarray, beta: np.ndarray) -> Answer:
    X1 = np.column_stack([np.ones(len(y)), X])
    eta = X1 @ beta
    p = expit(eta)
    w = p * (1 - p)
    return {"grad": X1.T @ (y - p), "hess": (X1 * w[:, None]).T @ X1,
            "llf": np.array(-np.sum(np.logaddexp(0.0, eta) - y * eta)), "n": np.array(float(len(y))),
            "max_eta": np.array(float(np.max(np.abs(eta))) if len(y) else 0.0)}


def _spearman_terms(X: np.ndarray, y: np.ndarray) -> Answer:
    """n times the site's Spearman matrix, and n1 n0 times each feature's AUC (its Mann-Whitney U)."""
    n = len(y)
    out: Answer = {"n": np.array(float(n)), "n_rho": np.zeros((X.shape[1], X.shape[1])),
                   "u": np.zeros(X.shape[1]), "n10": np.array(0.0)}
    if n >= 3:
        r = rankdata(X, axis=0)
        r -= r.mean(axis=0)
        norm = np.sqrt((r ** 2).sum(axis=0))
        norm[norm == 0] = np.inf
        r /= norm
        out["n_rho"] = n * (r.T @ r)
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 and n0:
        ranks = rankdata(X, axis=0)
        out["u"] = ranks[pos].sum(axis=0) - n1 * (n1 + 1) / 2
        out["n10"] = np.array(float(n1 * n0))
    return out


def bin_of(scores: np.ndarray, bins: int) -> np.ndarray:
    """0-based bin of each score on ``bins`` equal-width bins of [0, 1] (1.0 in the last bin)."""
    s = np.clip(np.asarray(scores, float), 0.0, 1.0)
    return np.minimum((s * bins).astype(int), bins - 1)


def binned_terms(scores: np.ndarray, y: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """A site's evaluation answer: per-bin case/control counts and score sums, and the summed squared error."""
    scores, y = np.asarray(scores, float), np.asarray(y, float)
    b = bin_of(scores, bins)
    case = y == 1
    return {"cases": np.bincount(b[case], minlength=bins).astype(float),
            "controls": np.bincount(b[~case], minlength=bins).astype(float),
            "case_sum": np.bincount(b[case], weights=scores[case], minlength=bins),
            "control_sum": np.bincount(b[~case], weights=scores[~case], minlength=bins),
            "sq_err": np.array(float(np.sum((scores - y) ** 2)))}


def answer(site: SiteTables, req: Request) -> Answer:
    """A site's answer to one request: only sums over its selected rows (never a row)."""
    kind = req["kind"]
    X, y = _design(site, req)
    if kind == "logit":
        return _logit_terms(X, y, np.asarray(req["beta"], float))
    if kind == "moments":  # n, sums, sums of squares (standardisation, variance filter)
        return {"n": np.array(float(len(y))), "sum": X.sum(axis=0), "sumsq": (X ** 2).sum(axis=0)}
    if kind == "crossprod":  # n, sums and X'X (PCA)
        return {"n": np.array(float(len(y))), "sum": X.sum(axis=0), "xtx": X.T @ X}
    if kind == "spearman":
        return _spearman_terms(X, y)
    if kind == "counts":  # outcome counts (Fisher's exact test of a binary variable needs only the 2 x 2 table)
        x = X[:, 0] if X.shape[1] else np.zeros(len(y))
        hi = x == req["level"]
        return {"table": np.array([[np.sum(hi & (y == 1)), np.sum(hi & (y == 0))],
                                   [np.sum(~hi & (y == 1)), np.sum(~hi & (y == 0))]], float)}
    if kind == "binned":  # per-bin case/control counts and summed scores (ROC, DeLong, calibration)
        return binned_terms(X[:, 0], y, int(req["bins"]))
    raise ValueError(f"unknown request kind {kind!r}")


# --------------------------------------------------------------------------------------------- server side
def sum_answers(per_site: list[list[Answer]]) -> list[Answer]:
    """Per request, the sum over sites (``per_site[s][r]``: site s's answer to request r); ``max_eta`` is a max."""
    out = []
    for r in range(len(per_site[0]) if per_site else 0):
        parts = [site[r] for site in per_site]
        total = {}
        for k in parts[0]:
            vals = [np.asarray(p[k], float) for p in parts]
            total[k] = np.max(vals, axis=0) if k == "max_eta" else np.sum(vals, axis=0)
        out.append(total)
    return out


def local_transport(sites: list[SiteTables]):
    """A transport that answers in this process (tests, and the pooled and site-alone comparisons)."""
    def transport(requests: list[Request]) -> list[Answer]:
        return sum_answers([[answer(site, r) for r in requests] for site in sites])
    return transport


def lockstep(protocols: Mapping[str, Protocol], transport) -> tuple[dict[str, Any], int]:
    """Run several protocols together, one round per step, all their requests in one message.

    ``transport(requests) -> answers`` sends a list of requests to every site and returns the per-request sums.
    Returns each protocol's result and the number of rounds used.
    """
    gen, rounds = parallel(protocols), 0
    try:
        requests = next(gen)
        while True:
            answers = transport(requests) if requests else []
            rounds += 1
            requests = gen.send(answers)
    except StopIteration as stop:
        return stop.value, rounds


def parallel(protocols: Mapping[str, Protocol]) -> Protocol:
    """A protocol that runs sub-protocols side by side (their requests share rounds); returns their results."""
    pending: dict[str, list[Request]] = {}
    results: dict[str, Any] = {}
    running = dict(protocols)
    for name, gen in list(running.items()):
        try:
            pending[name] = next(gen)
        except StopIteration as stop:
            results[name] = stop.value
            del running[name]
    while running:
        order = [(name, len(pending[name])) for name in running]
        answers = yield [req for name in running for req in pending[name]]
        i = 0
        for name, k in order:
            part, i = answers[i:i + k], i + k
            try:
                pending[name] = running[name].send(part)
            except StopIteration as stop:
                results[name] = stop.value
                del running[name]
    return results


def ask(request: Request) -> Protocol:
    """A protocol of one request: its summed answer."""
    (ans,) = yield [request]
    return ans


@dataclass(frozen=True)
class LogitFit:
    """A federated logistic fit: ``beta`` (intercept first), covariance (inverse observed information, NaN when
    not estimable), log-likelihood, n, convergence and rounds used."""

    beta: np.ndarray
    cov: np.ndarray
    llf: float
    n: int
    converged: bool
    iterations: int

    @property
    def bse(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    @property
    def aic(self) -> float:
        return -2 * self.llf + 2 * len(self.beta) if self.converged else np.inf


def _qp_bounded(H: np.ndarray, g: np.ndarray, beta: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Step d minimising g'd + d'Hd/2 subject to beta + d >= lower (server-side, small)."""
    res = optimize.minimize(lambda d: (g @ d + 0.5 * d @ H @ d, g + H @ d), np.zeros_like(beta), jac=True,
                            method="L-BFGS-B", bounds=[(lo - b, None) for lo, b in zip(lower, beta)],
                            options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 1000})
    return res.x


def newton_logit(source: str, rows: Mapping[str, Any], ops: list[Mapping[str, Any]], p: int,
                 l2: float | np.ndarray = 0.0, nonnegative: bool = False, tol: float = NEWTON_TOL,
                 max_iter: int = NEWTON_MAX_ITER) -> Protocol:
    """Logistic regression by Newton's method on the sites' summed gradients and Hessians: the pooled MLE.

    Minimises ``-llf + sum(l2 * w**2) / 2`` (intercept unpenalised; ``l2 = 1 / C`` is scikit-learn's L2 LR),
    optionally with every weight >= 0 (projected Newton, the combined model). Steps are halved when the
    objective does not decrease. A fit whose linear predictor exceeds :data:`SEPARATION_ETA` or that does not
    converge is returned with ``converged=False`` (separation: its odds ratios do not exist).
    """
    beta = np.zeros(p + 1)
    pen = np.r_[0.0, np.broadcast_to(np.asarray(l2, float), (p,))]
    lower = np.r_[-np.inf, np.zeros(p)] if nonnegative else None
    base = {"kind": "logit", "source": source, "rows": dict(rows), "ops": list(ops)}
    ans = yield from ask({**base, "beta": beta})
    obj = -float(ans["llf"]) + 0.5 * float(pen @ beta ** 2)
    n = int(ans["n"])
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        g = -ans["grad"] + pen * beta
        H = ans["hess"] + np.diag(pen)
        try:
            step = (_qp_bounded(H, g, beta, lower) if nonnegative else -np.linalg.solve(H, g))
        except np.linalg.LinAlgError:
            break
        t = 1.0
        for _ in range(30):
            trial = beta + t * step
            new = yield from ask({**base, "beta": trial})
            new_obj = -float(new["llf"]) + 0.5 * float(pen @ trial ** 2)
            if new_obj <= obj + 1e-12 * max(1.0, abs(obj)):
                break
            t /= 2
        beta, ans, obj = trial, new, new_obj
        if float(ans["max_eta"]) > SEPARATION_ETA and not np.any(pen):
            break
        if np.max(np.abs(t * step)) < tol:
            converged = True
            break
    H = ans["hess"] + np.diag(pen)
    try:
        cov = np.linalg.inv(H) if converged else np.full(H.shape, np.nan)
    except np.linalg.LinAlgError:
        cov, converged = np.full(H.shape, np.nan), False
    return LogitFit(beta, cov, float(ans["llf"]), n, converged, it)


def _l1_subproblem(H: np.ndarray, g: np.ndarray, beta: np.ndarray, lam: float, max_iter: int = 20000,
                   tol: float = 1e-13) -> np.ndarray:
    """Step d minimising g'd + d'Hd/2 + lam * ||(beta + d)[1:]||_1 (intercept free), by FISTA with restarts
    (vectorised proximal gradient on the quadratic model; the server's own work, no round)."""
    L = float(np.linalg.eigvalsh(H)[-1]) or 1.0
    x = beta.copy()
    y, t = x.copy(), 1.0
    for _ in range(max_iter):
        z = y - (g + H @ (y - beta)) / L
        new = np.r_[z[0], np.sign(z[1:]) * np.maximum(np.abs(z[1:]) - lam / L, 0.0)]
        if np.max(np.abs(new - x)) < tol:
            x = new
            break
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        if (new - x) @ (y - new) > 0:  # objective went up along the momentum: restart it
            t_new, y = 1.0, new.copy()
        else:
            y = new + (t - 1) / t_new * (new - x)
        x, t = new, t_new
    return x - beta


def lasso_logit(source: str, rows: Mapping[str, Any], ops: list[Mapping[str, Any]], p: int, C: float,
                tol: float = 1e-9, max_iter: int = 100) -> Protocol:
    """L1-penalised logistic regression (LASSO) by proximal Newton on summed gradients and Hessians.

    Minimises ``-llf + ||w||_1 / C`` with the intercept unpenalised: the pooled optimum (the problem is convex),
    whatever the sites. (scikit-learn's liblinear also penalises the intercept; the supports agree, the
    coefficients differ slightly.) Returns ``beta`` (intercept first).
    """
    lam = 1.0 / float(C)
    beta = np.zeros(p + 1)
    base = {"kind": "logit", "source": source, "rows": dict(rows), "ops": list(ops)}
    ans = yield from ask({**base, "beta": beta})

    def objective(a: Answer, b: np.ndarray) -> float:
        return -float(a["llf"]) + lam * float(np.abs(b[1:]).sum())

    obj = objective(ans, beta)
    for _ in range(max_iter):
        d = _l1_subproblem(ans["hess"] + 1e-10 * np.eye(p + 1), -ans["grad"], beta, lam)
        if np.max(np.abs(d)) < tol:
            break
        t = 1.0
        for _ in range(30):
            trial = beta + t * d
            new = yield from ask({**base, "beta": trial})
            if objective(new, trial) <= obj + 1e-12 * max(1.0, abs(obj)):
                break
            t /= 2
        beta, ans, obj = trial, new, objective(new, trial)
        if np.max(np.abs(t * d)) < tol:
            break
    beta[1:][np.abs(beta[1:]) < 1e-12] = 0.0
    return beta


def moments(source: str, rows: Mapping[str, Any], ops: list[Mapping[str, Any]]) -> Protocol:
    """Pooled mean and population SD (StandardScaler's) of every column, and n."""
    ans = yield from ask({"kind": "moments", "source": source, "rows": dict(rows), "ops": list(ops)})
    n = float(ans["n"])
    mean = ans["sum"] / n
    var = np.maximum(ans["sumsq"] / n - mean ** 2, 0.0)
    return mean, np.sqrt(var), int(n)


def logloss_sum(source: str, rows: Mapping[str, Any], ops: list[Mapping[str, Any]], beta: np.ndarray) -> Protocol:
    """Summed log-loss and n of held-out rows under ``beta`` (federated cross-validation)."""
    ans = yield from ask({"kind": "logit", "source": source, "rows": dict(rows), "ops": list(ops), "beta": beta})
    return -float(ans["llf"]), int(ans["n"])


def logit_scores(X: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """P(y = 1) of a design matrix under ``beta`` (intercept first): how a site scores its own patients."""
    return expit(beta[0] + np.asarray(X, float) @ beta[1:])
