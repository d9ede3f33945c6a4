"""The combined model of the paper: a logistic regression on the clinical, radiomics and DL scores.

An unpenalised logistic regression on the logits of the out-of-fold training scores (standardised on the
training patients it is fit on), by default with non-negative weights. It carries what its nomogram needs.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_array, check_is_fitted

from p53hcc.fusion.models.contract import BinaryClassifierMixin, aligned_target
from p53hcc.tools.errors import InputError

COMBINED_INPUTS: tuple[str, ...] = ("clinical", "radiomics", "dl")
LOGIT_EPS = 1e-6


def _max_likelihood(Z: np.ndarray, y: np.ndarray, nonnegative: bool) -> np.ndarray:
    """Maximum-likelihood logistic coefficients ``[intercept, w...]`` of standardised inputs, optionally w >= 0.

    Unconstrained: scikit-learn's unpenalised LogisticRegression. Constrained: the same log-likelihood maximised
    by L-BFGS-B with bounds w >= 0 (scipy), started from the intercept-only fit.
    """
    if not nonnegative:
        lr = LogisticRegression(C=np.inf, l1_ratio=0.0, tol=1e-10, max_iter=10000).fit(Z, y)
        return np.r_[lr.intercept_[0], lr.coef_[0]]
    X1 = np.column_stack([np.ones(len(y)), Z])

    def nll(beta: np.ndarray) -> tuple[float, np.ndarray]:
        eta = X1 @ beta
        loss = float(np.sum(np.logaddexp(0.0, eta) - y * eta))
        return loss, X1.T @ (expit(eta) - y)

    prev = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    start = np.r_[np.log(prev / (1 - prev)), np.zeros(Z.shape[1])]
    res = optimize.minimize(nll, start, jac=True, method="L-BFGS-B",
                            bounds=[(None, None)] + [(0.0, None)] * Z.shape[1],
                            options={"maxiter": 10000, "ftol": 1e-14, "gtol": 1e-10})
    return res.x


def logit(p: np.ndarray, eps: float = LOGIT_EPS) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps] so scores of exactly 0 or 1 stay finite."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


class CombinedModel(BinaryClassifierMixin, BaseEstimator):
    """Unpenalised LR on logit-transformed component scores (clinical, radiomics, DL).

    X is a DataFrame with one column per input score (probabilities), e.g. from
    :func:`p53hcc.fusion.models.oof.scores_wide`, its columns found by name; or an array of exactly those scores as
    columns in the order of ``inputs``. ``y``: 0/1 (1 = P53 mutated), matched to X's patients by the package's rule
    (a Series by patient id, anything else by position). The inputs are standardised (on the training patients passed to
    ``fit``) and the maximum-likelihood weights found; with ``nonnegative=True`` every weight is kept >= 0.

    Why non-negative weights: each input is a probability of P53 mutation from a model trained for exactly that,
    so a negative weight says "the component predicts the opposite of what it learned". On out-of-fold scores
    that is overfitting, not biology: under shuffled labels the free fit flips signs to exploit the slightly
    below-chance ranking of cross-fitted scores (docs/validation.md). A component the data do not support gets
    weight 0 (and a flat nomogram axis that says so) instead of a sign flip.

    After fit: ``feature_names_``, ``coef_`` / ``intercept_`` (per logit unit of each input, i.e. back on the
    unstandardised scale), ``coefficients_`` (dict) - the numbers a nomogram needs.

    Args:
        inputs: input score columns, in order.
        eps: clipping of probabilities before the logit.
        nonnegative: constrain the input weights to be >= 0.
    """

    def __init__(self, inputs: Sequence[str] = COMBINED_INPUTS, eps: float = LOGIT_EPS, nonnegative: bool = True):
        self.inputs = inputs
        self.eps = eps
        self.nonnegative = nonnegative

    def _design(self, X) -> np.ndarray:
        """The input scores as an (n, len(inputs)) float array: DataFrame columns by name, array columns by order."""
        cols = list(self.inputs)
        if not isinstance(X, pd.DataFrame):
            vals = check_array(X, dtype=float)  # scikit-learn's errors: sparse, empty, 1-D, NaN/inf
            if vals.shape[1] != len(cols):
                raise ValueError(f"X has {vals.shape[1]} features, but CombinedModel is expecting {len(cols)} "
                                 f"features as input (the scores {cols}, in this order)")
            return vals
        missing = [c for c in cols if c not in X.columns]
        if missing:
            raise InputError(None, f"combined model input score(s) missing: {missing}")
        vals = X[cols].to_numpy(dtype=float)
        if not np.isfinite(vals).all():
            row = int(np.argmax(~np.isfinite(vals).all(axis=1)))
            raise InputError(str(X.index[row]), "combined model input score is missing or not finite")
        return vals

    def fit(self, X: pd.DataFrame, y) -> CombinedModel:
        """Fit the weights on training patients' out-of-fold scores."""
        self.feature_names_ = list(self.inputs)
        design = self._design(X)
        index = X.index if isinstance(X, pd.DataFrame) else pd.RangeIndex(len(design))
        y = aligned_target(y, index, zero_one=True)
        z = logit(design, self.eps)
        mean, scale = z.mean(axis=0), z.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)  # a constant input keeps weight 0
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = len(self.feature_names_)
        beta = _max_likelihood((z - mean) / scale, y, nonnegative=bool(self.nonnegative))
        self.coef_ = beta[1:] / scale
        self.intercept_ = float(beta[0] - np.sum(beta[1:] * mean / scale))
        self.coefficients_ = dict(zip(self.feature_names_, map(float, self.coef_)))
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Linear predictor (log-odds)."""
        check_is_fitted(self, "coef_")
        return self.intercept_ + logit(self._design(X), self.eps) @ self.coef_

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p1 = expit(self.decision_function(X))
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def logits(self, X: pd.DataFrame) -> pd.DataFrame:
        """The model's inputs on its own scale (logit of each score): what ``Nomogram.points`` takes."""
        return pd.DataFrame(logit(self._design(X), self.eps), index=getattr(X, "index", None),
                            columns=list(self.inputs))

    def coef_table(self) -> pd.DataFrame:
        """Tidy coefficients: term, coef (per logit unit), odds_ratio."""
        check_is_fitted(self, "coef_")
        terms = ["intercept"] + self.feature_names_
        coefs = np.r_[self.intercept_, self.coef_]
        return pd.DataFrame({"term": terms, "coef": coefs, "odds_ratio": np.exp(coefs)})

    def nomogram(self, X_train: pd.DataFrame | None = None, labels: dict[str, str] | None = None):
        """A :class:`p53hcc.fusion.models.nomogram.Nomogram` of this model; each axis is labelled in input probabilities.

        Args:
            X_train: training scores; axis ranges span their 1st-99th percentiles (default 0.02-0.98).
            labels: display names per input.
        """
        from p53hcc.fusion.models.nomogram import Nomogram

        ranges, ticks = {}, {}
        for name in self.feature_names_:
            lo, hi = (0.02, 0.98) if X_train is None else np.clip(
                np.nanpercentile(X_train[name].to_numpy(float), [1, 99]), 0.01, 0.99)
            ranges[name] = (float(logit(lo)), float(logit(hi)))
            probs = [p for p in (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99) if lo <= p <= hi]
            ticks[name] = [(float(logit(p)), f"{p:g}") for p in probs]
        return Nomogram.from_logistic(self.coefficients_, self.intercept_, ranges, ticks=ticks, labels=labels)
