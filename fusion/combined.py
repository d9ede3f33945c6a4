"""The combined model of the paper: a logistic regression on the clinical, radiomics and DL scores.

An unpenalised logistic regression on the logits of the three out-of-fold training scores, standardised inside a
Pipeline so the scaler is also learned on training patients only. It carries what its nomogram needs.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.validation import check_is_fitted

from p53hcc.tools.errors import InputError

COMBINED_INPUTS: tuple[str, ...] = ("clinical", "radiomics", "dl")
LOGIT_EPS = 1e-6


def logit(p: np.ndarray, eps: float = LOGIT_EPS) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps] so scores of exactly 0 or 1 stay finite."""
    p = np.clip(np.asarray(p, dtype=float), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


class CombinedModel(BaseEstimator, ClassifierMixin):
    """Unpenalised LR on logit-transformed component scores (clinical, radiomics, DL).

    X is a DataFrame with one column per input score (probabilities), e.g. from
    :func:`p53hcc.fusion.crossfit.scores_wide`. After fit: ``feature_names_``, ``pipeline_``, ``coef_`` / ``intercept_``
    (per logit unit of each input, i.e. back on the unstandardised scale) and ``coefficients_`` (dict) - the
    numbers a nomogram needs.

    Args:
        inputs: input score columns, in order.
        eps: clipping of probabilities before the logit.
    """

    def __init__(self, inputs: Sequence[str] = COMBINED_INPUTS, eps: float = LOGIT_EPS):
        self.inputs = inputs
        self.eps = eps

    def _design(self, X: pd.DataFrame) -> np.ndarray:
        cols = list(self.inputs)
        missing = [c for c in cols if c not in X.columns]
        if missing:
            raise InputError(None, f"combined model input score(s) missing: {missing}")
        vals = X[cols].to_numpy(dtype=float)
        if not np.isfinite(vals).all():
            row = int(np.argmax(~np.isfinite(vals).all(axis=1)))
            raise InputError(str(X.index[row]), "combined model input score is missing or not finite")
        return vals

    def fit(self, X: pd.DataFrame, y) -> CombinedModel:
        """Fit scaler + LR on training patients' out-of-fold scores."""
        self.feature_names_ = list(self.inputs)
        self.pipeline_ = Pipeline([
            ("logit", FunctionTransformer(logit, kw_args={"eps": self.eps})),
            ("scale", StandardScaler()),
            ("lr", LogisticRegression(C=np.inf, l1_ratio=0.0, tol=1e-10, max_iter=10000)),
        ]).fit(self._design(X), np.asarray(y).astype(int))
        self.classes_ = self.pipeline_.classes_
        scale = self.pipeline_.named_steps["scale"]
        lr = self.pipeline_.named_steps["lr"]
        self.coef_ = lr.coef_[0] / scale.scale_
        self.intercept_ = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scale.mean_ / scale.scale_))
        self.coefficients_ = dict(zip(self.feature_names_, map(float, self.coef_)))
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Linear predictor (log-odds)."""
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.decision_function(self._design(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict_proba(self._design(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def logits(self, X: pd.DataFrame) -> pd.DataFrame:
        """The model's inputs on its own scale (logit of each score): what ``Nomogram.points`` takes."""
        return pd.DataFrame(logit(self._design(X), self.eps), index=X.index, columns=list(self.inputs))

    def coef_table(self) -> pd.DataFrame:
        """Tidy coefficients: term, coef (per logit unit), odds_ratio."""
        check_is_fitted(self, "coef_")
        terms = ["intercept"] + self.feature_names_
        coefs = np.r_[self.intercept_, self.coef_]
        return pd.DataFrame({"term": terms, "coef": coefs, "odds_ratio": np.exp(coefs)})

    def nomogram(self, X_train: pd.DataFrame | None = None, labels: dict[str, str] | None = None):
        """A :class:`p53hcc.fusion.nomogram.Nomogram` of this model; each axis is labelled in input probabilities.

        Args:
            X_train: training scores; axis ranges span their 1st-99th percentiles (default 0.02-0.98).
            labels: display names per input.
        """
        from p53hcc.fusion.nomogram import Nomogram

        ranges, ticks = {}, {}
        for name in self.feature_names_:
            lo, hi = (0.02, 0.98) if X_train is None else np.clip(
                np.nanpercentile(X_train[name].to_numpy(float), [1, 99]), 0.01, 0.99)
            ranges[name] = (float(logit(lo)), float(logit(hi)))
            probs = [p for p in (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99) if lo <= p <= hi]
            ticks[name] = [(float(logit(p)), f"{p:g}") for p in probs]
        return Nomogram.from_logistic(self.coefficients_, self.intercept_, ranges, ticks=ticks, labels=labels)
