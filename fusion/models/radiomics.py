"""Feature selection for the radiomics model, as scikit-learn selectors that live inside a Pipeline.

The paper: z-score -> drop features whose Spearman |rho| with another exceeds 0.9 -> LASSO -> logistic
regression. Every step that looks at the data (including the label-aware redundancy filter) is a fitted
estimator, so cross-validating the whole Pipeline re-runs selection inside each training fold and the
validation patients are never seen by it. Selecting on all patients and cross-validating only the final
model is the classic leak that makes pure noise look predictive (tests/test_selection.py shows both).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, clone
from sklearn.feature_selection import SelectorMixin, VarianceThreshold
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from p53hcc.fusion.models.contract import SupervisedMixin, binary_target
from p53hcc.fusion.models.harmonise import MIN_BATCH, ComBatHarmoniser, check_harmonise

__all__ = [
    "LassoSelector",
    "SpearmanFilter",
    "make_radiomics_model",
    "rad_score",
    "selected_features_table",
    "univariable_auc",
]


def univariable_auc(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUC of every column of ``X`` as a score for binary ``y`` (Mann-Whitney U / (n1 n0); ties count 1/2)."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y).astype(bool)
    n1, n0 = y.sum(), (~y).sum()
    if n1 == 0 or n0 == 0:
        raise ValueError("univariable AUC needs both classes in y")
    ranks = rankdata(X, axis=0)
    return (ranks[y].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _spearman_matrix(X: np.ndarray) -> np.ndarray:
    """Spearman correlation of all column pairs (Pearson on average ranks); constant columns give 0."""
    r = rankdata(X, axis=0)
    r -= r.mean(axis=0)
    norm = np.sqrt((r**2).sum(axis=0))
    norm[norm == 0] = np.inf
    r /= norm
    return r.T @ r


class SpearmanFilter(SupervisedMixin, SelectorMixin, BaseEstimator):
    """Redundancy filter: of any two features with Spearman |rho| > ``threshold``, keep the more label-relevant.

    Relevance is the univariable discrimination |AUC - 0.5| (for a binary label this orders features like
    |Spearman rho with y|). Features are visited from most to least relevant (ties: column order, so the result
    is deterministic) and a feature is kept unless it is too correlated with one already kept -- the greedy
    resolution of all correlated pairs at once.

    Args:
        threshold: |rho| above which two features are redundant (paper: 0.9).
    """

    def __init__(self, threshold: float = 0.9):
        self.threshold = threshold

    def fit(self, X, y):
        """Learn which columns to keep from training data ``X`` (n, p) and binary labels ``y``."""
        X, y = validate_data(self, X, y, dtype=float)
        self.relevance_ = np.abs(univariable_auc(X, binary_target(y)) - 0.5)
        rho = np.abs(_spearman_matrix(X))
        order = np.argsort(-self.relevance_, kind="stable")
        keep = np.zeros(X.shape[1], dtype=bool)
        for j in order:
            if not (rho[j, keep] > self.threshold).any():
                keep[j] = True
        self.support_ = keep
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


def neg_log_loss(estimator, X, y) -> float:
    """Scorer equal to scikit-learn's ``"neg_log_loss"`` for a binary classifier (same clipping to
    ``[eps, 1 - eps]``), without its per-call input validation, which dominated the LASSO path's run time
    (15 penalties x 5 folds per fit; benchmarks/results/null_cohorts.json). tests/test_selection.py checks it
    against scikit-learn's scorer."""
    proba = estimator.predict_proba(X)
    eps = np.finfo(proba.dtype).eps
    column = np.searchsorted(estimator.classes_, np.asarray(y))
    return -float(np.mean(-np.log(np.clip(proba[np.arange(len(column)), column], eps, 1 - eps))))


class LassoSelector(SupervisedMixin, SelectorMixin, BaseEstimator):
    """Keep the features with non-zero coefficients in an L1-penalised logistic regression (LASSO).

    The penalty is chosen by stratified K-fold cross-validation on the training data passed to ``fit``
    (log-loss, i.e. the binomial deviance glmnet uses). If the chosen penalty zeroes every coefficient, the single
    most discriminating feature (largest |univariable AUC - 0.5|) is kept instead, so the downstream model
    always has an input; ``fallback_`` records when that happened.

    Args:
        cv: number of folds for choosing the penalty.
        random_state: seed of the fold assignment.
        Cs: inverse penalty strengths to try (features must be standardised).
        max_iter: solver iterations.

    Attributes:
        n_iter_: the most solver iterations any of the cross-validated fits took (``max_iter``: one did not
            converge).
    """

    def __init__(self, cv: int = 5, random_state: int | None = 0, Cs=None, max_iter: int = 2000):
        self.cv = cv
        self.random_state = random_state
        self.Cs = Cs
        self.max_iter = max_iter

    def fit(self, X, y):
        """Fit the cross-validated LASSO on training data and record the surviving features."""
        X, y = validate_data(self, X, y, dtype=float)
        codes = binary_target(y)
        Cs = np.logspace(-2.5, 1, 15) if self.Cs is None else self.Cs
        folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state)
        self.lasso_ = LogisticRegressionCV(Cs=Cs, l1_ratios=(1.0,), solver="liblinear", cv=folds,
                                           scoring=neg_log_loss, max_iter=self.max_iter,
                                           random_state=self.random_state, use_legacy_attributes=False)
        self.lasso_.fit(X, y)
        self.coef_ = self.lasso_.coef_.ravel()
        self.C_ = float(np.ravel(self.lasso_.C_)[0])
        self.n_iter_ = int(np.max(self.lasso_.n_iter_))  # the slowest of the CV fits (== max_iter: not converged)
        support = self.coef_ != 0
        self.fallback_ = not support.any()
        if self.fallback_:
            support[np.argmax(np.abs(univariable_auc(X, codes) - 0.5))] = True
        self.support_ = support
        return self

    def _get_support_mask(self):
        check_is_fitted(self, "support_")
        return self.support_


def make_radiomics_model(spearman: float = 0.9, cv: int = 5, random_state: int = 0, Cs=None,
                         final_C: float = 10.0, harmonise: str = "none", min_batch: int = MIN_BATCH) -> Pipeline:
    """The paper's radiomics model as one Pipeline: fit it on training patients only.

    Steps: drop constant features -> z-score (training mean/SD) -> Spearman redundancy filter -> LASSO
    (CV-chosen penalty) -> logistic regression on the surviving features. The final LR carries a weak L2
    penalty (C = ``final_C`` on z-scored inputs; ``np.inf`` = unpenalised): close to the unpenalised refit the
    paper describes, but it keeps finite coefficients when a few features separate a small training cohort.

    Args:
        spearman: |rho| threshold of the redundancy filter.
        cv: folds of the LASSO penalty search.
        random_state: seed of those folds.
        Cs: LASSO inverse penalties to try (default ``logspace(-2.5, 1, 15)``).
        final_C: inverse L2 strength of the final LR.
        harmonise: ``combat`` puts :class:`~p53hcc.fusion.models.harmonise.ComBatHarmoniser` first (its input then needs
            the ``batch`` column, which it consumes); ``none``: no harmonisation step.
        min_batch: fewest patients of a scanner ComBat estimates a correction from.
    """
    first = ([("harmonise", ComBatHarmoniser(min_batch=min_batch))] if check_harmonise(harmonise) == "combat"
             else [])
    return Pipeline([
        *first,
        ("variance", VarianceThreshold(0.0)),
        ("scale", StandardScaler()),
        ("spearman", SpearmanFilter(spearman)),
        ("lasso", LassoSelector(cv=cv, random_state=random_state, Cs=Cs)),
        ("lr", LogisticRegression(C=final_C, l1_ratio=0.0, max_iter=5000)),
    ])


def selected_features_table(fitted_pipeline: Pipeline, feature_names) -> pd.DataFrame:
    """Selected features and their coefficients (per SD of the feature, log-odds scale) as a tidy table.

    Args:
        fitted_pipeline: a fitted :func:`make_radiomics_model` pipeline (or any pipeline of selectors ending in a
            linear classifier).
        feature_names: names of the pipeline's input columns.

    Returns:
        DataFrame ``feature, coefficient`` sorted by |coefficient|; the intercept is in ``.attrs["intercept"]``.
    """
    names = np.asarray(feature_names, dtype=object)
    for _, step in fitted_pipeline.steps[:-1]:
        if isinstance(step, SelectorMixin):
            names = names[step.get_support()]
    final = fitted_pipeline.steps[-1][1]
    coef = np.ravel(final.coef_)
    out = pd.DataFrame({"feature": names, "coefficient": coef})
    out = out.reindex(out["coefficient"].abs().sort_values(ascending=False, kind="stable").index)
    out = out.reset_index(drop=True)
    out.attrs["intercept"] = float(np.ravel(final.intercept_)[0])
    return out


def rad_score(fitted_pipeline: Pipeline, X: pd.DataFrame) -> pd.DataFrame:
    """Rad-score per patient: the model's probability (``rad_score``) and linear predictor (log-odds).

    Args:
        fitted_pipeline: the fitted radiomics model.
        X: features, one row per patient (index kept in the output).
    """
    return pd.DataFrame({"rad_score": fitted_pipeline.predict_proba(X)[:, 1],
                         "linear_predictor": fitted_pipeline.decision_function(X)},
                        index=getattr(X, "index", None))


def clone_model(model: Pipeline) -> Pipeline:
    """Unfitted copy (convenience for cross-fitting code)."""
    return clone(model)
