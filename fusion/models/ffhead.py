"""Feature-fusion (FF) head: per-phase PCA -> concatenation -> LASSO -> logistic regression.

The paper's FF DL model feeds each DCE-MRI phase (AP, PVP, DP) through its own CNN, keeps the penultimate-layer
features, compresses each phase with PCA (8 components per phase in its Results, 512 in its Methods),
concatenates the phases (3 x 8 = 24 features), keeps the LASSO-selected ones and fits a logistic regression on
them; the LR probability is the FF score. Everything here is fitted in ``fit`` only, so wrapping the head in a
cross-validation loop keeps PCA, LASSO and LR blind to held-out patients.

Input is a *wide* frame (one row per patient) with columns ``ap_f0..``, ``pvp_f0..``, ``dp_f0..``;
:func:`wide_features` turns the tidy export (``patient_id, phase, [fold,] f0..``) into that shape.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from p53hcc.fusion.models.contract import BinaryClassifierMixin, aligned_target, require_frame
from p53hcc.fusion.models.harmonise import MIN_BATCH, ComBatHarmoniser, check_harmonise, with_batch
from p53hcc.tools.schema import PHASES

#: What the head's input columns are (its inputs are found by name).
INPUT_COLUMNS = "the phase feature columns (ap_f0, ..., pvp_f0, ..., dp_f0, ...)"


def feature_columns(df: pd.DataFrame) -> list[str]:
    """The ``f0, f1, ...`` feature columns of a tidy feature table, in numeric order."""
    cols = [c for c in df.columns if isinstance(c, str) and c.startswith("f") and c[1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[1:]))


def wide_features(features_long: pd.DataFrame, phases: Sequence[str] = PHASES) -> pd.DataFrame:
    """Pivot a tidy feature table (one row per patient-phase) into one row per patient.

    Args:
        features_long: columns ``patient_id``, ``phase``, ``f0..f{D-1}`` (other columns such as ``fold`` are
            ignored, so pass one fold's rows at a time).
        phases: phases to keep, in column order.

    Returns:
        DataFrame indexed by ``patient_id`` with columns ``<phase>_f<j>``.

    Raises:
        ValueError: when a patient lacks a phase or a patient-phase appears twice (both would silently
            misalign patients otherwise).
    """
    fcols = feature_columns(features_long)
    parts = []
    for phase in phases:
        sub = features_long.loc[features_long["phase"] == phase, ["patient_id", *fcols]]
        if sub["patient_id"].duplicated().any():
            dup = sub.loc[sub["patient_id"].duplicated(), "patient_id"].iloc[0]
            raise ValueError(f"patient {dup}: phase {phase} appears more than once in the feature table")
        sub = sub.set_index(sub["patient_id"].astype(str))[fcols]
        sub.columns = [f"{phase}_{c}" for c in fcols]
        parts.append(sub)
    wide = pd.concat(parts, axis=1, join="outer")
    missing = wide.index[wide.isna().any(axis=1)]
    if len(missing):
        raise ValueError(f"patient {missing[0]}: features missing for at least one phase of {list(phases)}")
    wide.index.name = "patient_id"
    return wide


class FFHead(BinaryClassifierMixin, BaseEstimator):
    """Per-phase PCA -> concatenate -> LASSO (L1 logistic, CV-chosen penalty) -> logistic regression.

    Args:
        n_components: PCA components per phase (capped at fit time by the number of training patients and of
            features, so 512 as in the paper's Methods is accepted on small cohorts).
        cv: folds of the inner cross-validation that chooses the LASSO penalty.
        Cs: inverse LASSO penalties the CV tries (default 15 log-spaced values in [0.01, 10]; very weak
            penalties are left out because liblinear crawls on nearly separable data there).
        lasso_C: fixed inverse LASSO penalty instead of the CV choice (None: choose by CV).
        final_C: inverse L2 penalty of the final LR (``np.inf``: unpenalised, as a plain LR).
        phases: phase prefixes of the wide input columns.
        random_state: seed of the inner CV split, the PCA solver and liblinear's coordinate order (without it
            liblinear draws from numpy's global RNG, and a refit or a resumed run would give other scores).
        harmonise: ``combat``: ComBat on the deep features per scanner before the per-phase PCA
            (:class:`~p53hcc.fusion.models.harmonise.ComBatHarmoniser`, fitted in ``fit`` only; the input then needs the
            ``batch`` column, which is consumed); ``none``: no harmonisation.
        min_batch: fewest patients of a scanner ComBat estimates a correction from.

    Attributes:
        harmoniser_: the fitted ComBat step (None without harmonisation).
        pcas_: fitted ``(StandardScaler, PCA)`` per phase.
        n_components_: components actually kept per phase.
        lasso_C_: the chosen inverse LASSO penalty.
        selected_: boolean mask over the concatenated PCA features.
        n_selected_: number of LASSO-retained features (the paper reports 18, 14, 11, 12, 3, 6).
        selected_names_: names (``ap_pc0``...) of the retained features.
        lr_: final logistic regression (None when LASSO keeps nothing: the score is then the prevalence).
    """

    def __init__(self, n_components: int = 8, cv: int = 5, Cs: Sequence[float] | int | None = None, lasso_C: float | None = None,
                 final_C: float = np.inf, phases: Sequence[str] = PHASES, random_state: int = 0,
                 harmonise: str = "none", min_batch: int = MIN_BATCH):
        self.n_components = n_components
        self.cv = cv
        self.Cs = Cs
        self.lasso_C = lasso_C
        self.final_C = final_C
        self.phases = phases
        self.random_state = random_state
        self.harmonise = harmonise
        self.min_batch = min_batch

    def _harmonised(self, X: pd.DataFrame) -> pd.DataFrame:
        harmoniser = getattr(self, "harmoniser_", None)  # heads saved before harmonisation existed have none
        return X if harmoniser is None else harmoniser.transform(X)

    def _phase_block(self, X: pd.DataFrame, phase: str) -> np.ndarray:
        cols = [c for c in X.columns if str(c).startswith(f"{phase}_f")]
        if not cols:
            raise ValueError(f"no columns '{phase}_f*' in the FF input (have {list(X.columns)[:5]}...)")
        return X[sorted(cols, key=lambda c: int(str(c).split("_f")[-1]))].to_numpy(dtype=float)

    def _pca_features(self, X: pd.DataFrame) -> np.ndarray:
        X = self._harmonised(X)
        blocks = []
        for phase, (scaler, pca) in zip(self.phases, self.pcas_):
            blocks.append(pca.transform(scaler.transform(self._phase_block(X, phase))))
        return self.post_scaler_.transform(np.hstack(blocks))

    def fit(self, X: pd.DataFrame, y: Sequence[int]) -> FFHead:
        """Fit PCA per phase, the LASSO selector and the final LR on the given (training) patients only.

        ``y``: 0/1 (1 = P53 mutated), matched to X's patients by the package's rule (a Series by patient id,
        anything else by position)."""
        require_frame(X, "FFHead", INPUT_COLUMNS)
        y = aligned_target(y, X.index, zero_one=True)
        self.classes_ = np.array([0, 1])
        self.harmoniser_ = None
        if check_harmonise(self.harmonise) == "combat":
            self.harmoniser_ = ComBatHarmoniser(min_batch=self.min_batch).fit(X)
            X = self.harmoniser_.transform(X)
        self.pcas_, self.n_components_, blocks, names = [], [], [], []
        for phase in self.phases:
            block = self._phase_block(X, phase)
            k = int(min(self.n_components, block.shape[0] - 1, block.shape[1]))
            scaler = StandardScaler().fit(block)
            pca = PCA(n_components=k, random_state=self.random_state).fit(scaler.transform(block))
            self.pcas_.append((scaler, pca))
            self.n_components_.append(k)
            blocks.append(pca.transform(scaler.transform(block)))
            names += [f"{phase}_pc{j}" for j in range(k)]
        Z = np.hstack(blocks)
        self.post_scaler_ = StandardScaler().fit(Z)
        Z = self.post_scaler_.transform(Z)
        self.feature_names_ = names
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.lasso_ = self._fit_lasso(Z, y)
        self.lasso_C_ = float(np.ravel(self.lasso_.C_)[0]) if hasattr(self.lasso_, "C_") else float(self.lasso_C)
        self.selected_ = np.abs(self.lasso_.coef_.ravel()) > 1e-10
        self.n_selected_ = int(self.selected_.sum())
        self.selected_names_ = [n for n, s in zip(names, self.selected_) if s]
        self.prevalence_ = float(y.mean())
        self.lr_ = None
        if self.n_selected_:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.lr_ = LogisticRegression(C=self.final_C, max_iter=5000).fit(Z[:, self.selected_], y)
        return self

    def _fit_lasso(self, Z: np.ndarray, y: np.ndarray):
        if self.lasso_C is not None:
            return LogisticRegression(C=self.lasso_C, l1_ratio=1.0, solver="liblinear", max_iter=5000,
                                      random_state=self.random_state).fit(Z, y)
        n_splits = int(max(2, min(self.cv, np.bincount(y).min())))
        inner = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        Cs = np.logspace(-2, 1, 15) if self.Cs is None else self.Cs
        return LogisticRegressionCV(Cs=Cs, cv=inner, l1_ratios=(1.0,), solver="liblinear",
                                    scoring="neg_log_loss", max_iter=5000, random_state=self.random_state,
                                    use_legacy_attributes=False).fit(Z, y)

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Log-odds of P53 mutation (constant prevalence log-odds when LASSO retained nothing)."""
        check_is_fitted(self, "pcas_")
        require_frame(X, "FFHead", INPUT_COLUMNS)
        if self.lr_ is None:
            p = np.clip(self.prevalence_, 1e-6, 1 - 1e-6)
            return np.full(len(X), np.log(p / (1 - p)))
        return self.lr_.decision_function(self._pca_features(X)[:, self.selected_])

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Two-column class probabilities; column 1 is the FF score."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1 - p1, p1])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Class at probability 0.5."""
        p1 = self.predict_proba(X)[:, 1]  # first: an unfitted head raises NotFittedError
        return self.classes_[(p1 >= 0.5).astype(int)]


def make_ff_head(n_components: int = 8, cv: int = 5, random_state: int = 0, **kwargs) -> FFHead:
    """The FF head with the paper's defaults (8 PCA components per phase -> 24 features -> LASSO -> LR)."""
    return FFHead(n_components=n_components, cv=cv, random_state=random_state, **kwargs)


def crossfit_ff_head(features: pd.DataFrame, labels: pd.Series, fold_of: dict[str, int],
                     score_ids: Sequence[str] = (), folds: Sequence[int] | None = None,
                     phases: Sequence[str] = PHASES, head_factory=make_ff_head, batches: pd.Series | None = None,
                     **head_kwargs) -> tuple[pd.DataFrame, dict[str, int]]:
    """Out-of-fold FF scores: per fold k, fit the head on fold k's model features of the *other* folds' patients.

    Args:
        features: tidy table ``patient_id, phase, fold, f0..``; ``fold`` = k means "produced by the CNNs trained
            without fold k", -1 the full-cohort CNNs.
        labels: P53 label per training patient (index ``patient_id``).
        fold_of: training patient -> its held-out fold (``splits.json``'s ``fold_of``).
        score_ids: non-training patients scored by the head fitted on all training patients (fold -1 features).
        folds: folds to score out-of-fold (default all in ``fold_of``); each head still trains on every
            training patient outside its fold.
        phases: phases fused.
        head_factory: builds a fresh head per fit.
        batches: scanner per patient (index ``patient_id``), added as the ``batch`` column a harmonising head
            consumes (``harmonise="combat"``); None: no batch column.
        head_kwargs: passed to ``head_factory``.

    Returns:
        (scores, n_selected): scores ``patient_id, fold, score`` (out-of-fold for training patients, fold -1
        for ``score_ids``) and LASSO-retained counts ``{"fold<k>": n, "full": n}``.
    """
    fold_of = {str(k): int(v) for k, v in fold_of.items()}
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    rows, n_selected = [], {}
    folds = sorted(set(fold_of.values())) if folds is None else [int(k) for k in folds]
    for k in [*folds, -1]:
        wide = wide_features(features[features["fold"] == k], phases)
        if batches is not None:
            wide = with_batch(wide, batches)
        train_ids = [p for p, f in fold_of.items() if f != k]
        test_ids = [p for p, f in fold_of.items() if f == k] if k >= 0 else [str(p) for p in score_ids]
        head = head_factory(phases=tuple(phases), **head_kwargs).fit(wide.loc[train_ids], labels.loc[train_ids].to_numpy())
        n_selected["full" if k < 0 else f"fold{k}"] = head.n_selected_
        if test_ids:
            s = head.predict_proba(wide.loc[test_ids])[:, 1]
            rows.append(pd.DataFrame({"patient_id": test_ids, "fold": k, "score": s}))
    scores = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["patient_id", "fold", "score"])
    return scores, n_selected
