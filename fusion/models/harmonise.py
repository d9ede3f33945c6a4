"""Scanner harmonisation as a fitted step: ComBat learned from training patients only, frozen for everybody else.

ComBat (Johnson et al., Biostatistics 2007; Fortin et al., NeuroImage 2017/2018) models each feature of a patient
scanned on batch (scanner) b as ``x = alpha + gamma_b + sqrt(delta_b) * e``: a per-scanner shift and scale of
every feature, estimated with an empirical-Bayes prior pooled over the features of that scanner. The fit is done
by ``neuroCombat`` (J.-P. Fortin's reference implementation, MIT): :class:`ComBatHarmoniser` calls it on the
training patients it is fitted on and keeps its estimates; nothing is learned in ``transform``.

**Where the batch comes from.** The input frame carries one extra column, :data:`BATCH` (``"batch"``): the
scanner of each patient, put there by the pipeline from ``cohort.csv`` (``scanner`` or the study's
``batch_column``). The harmoniser consumes it and drops it, so it never becomes a model feature, and the label
never enters: ``fit`` ignores ``y`` (ComBat's optional biological covariates are not offered; a covariate that is
the label would need the label of every new patient to transform them, the leak this step exists to avoid).

**Patients of batches the fit did not see** (a new centre at ``predict``/``evaluate``, the held-out scanner of
leave-one-scanner-out) are never refitted on labels. Their batch's shift and scale are estimated from their own
features, label-free, exactly as ComBat estimates a training batch (the same empirical-Bayes step of
``neuroCombat``), on the frozen training mean and pooled variance, when at least ``min_batch`` of them are scored
together; a smaller group of a new batch, and any patient of a training batch that had fewer than ``min_batch``
training patients, is passed through unchanged (treated as the pooled average scanner) and logged. So a new
batch's correction depends on which of its patients are scored together (documented in ``docs/harmonisation.md``).
"""
from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from p53hcc.fusion.models.contract import require_frame
from p53hcc.tools.errors import InputError

log = logging.getLogger(__name__)

#: The column of the model input that carries each patient's batch (scanner); consumed, never a feature.
BATCH = "batch"
#: ``fusion.harmonise`` values: no harmonisation, or ComBat fitted inside every training fold.
HARMONISE = ("none", "combat")
#: Fewest patients of one batch that ComBat estimates a shift and scale from (training and new batches alike).
MIN_BATCH = 5


def _neurocombat():
    import importlib

    try:  # the module (the package's __init__ re-exports a function of the same name)
        return importlib.import_module("neuroCombat.neuroCombat")
    except ImportError as err:  # pragma: no cover - a declared dependency; the message names the fix
        raise InputError(None, "fusion.harmonise: combat needs the neuroCombat package "
                               "(pip install neuroCombat==0.2.12)") from err


def check_harmonise(value: str | None) -> str:
    """``none`` or ``combat`` (None means ``none``); anything else is an error naming the choices."""
    value = "none" if value is None else str(value).strip().lower()
    if value not in HARMONISE:
        raise InputError(None, f"fusion.harmonise: {value!r} is not one of {', '.join(HARMONISE)}")
    return value


def split_batch(X: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """``(features, batch)`` of a model input: the :data:`BATCH` column as text, the rest as the features.

    Raises:
        TypeError: ``X`` is not a DataFrame.
        InputError: no batch column, or a patient without a batch.
    """
    require_frame(X, "harmonisation", f"the feature columns and a '{BATCH}' column (each patient's scanner)")
    if BATCH not in X.columns:
        raise InputError(None, f"harmonisation needs a '{BATCH}' column (the scanner of each patient) in the model "
                               "input; the pipeline adds it from cohort.csv's batch column")
    batch = X[BATCH]
    missing = batch.isna() | (batch.astype(str).str.strip() == "")
    if missing.any():
        raise InputError(str(X.index[missing.to_numpy()][0]), f"no batch (scanner) value in column '{BATCH}'")
    return X.drop(columns=[BATCH]), batch.astype(str)


def _eb_adjustment(s_data: np.ndarray, mean_only: bool) -> tuple[np.ndarray, np.ndarray]:
    """ComBat's empirical-Bayes shift and scale of ONE batch from its standardised features (features x patients).

    neuroCombat's own least-squares and parametric EB steps, on a design with that single batch: the prior of a
    batch is pooled over its features only, so this is the estimate a joint fit gives that batch (tested).
    """
    nc = _neurocombat()
    n = s_data.shape[1]
    info = {"n_batch": 1, "batch_info": [list(range(n))], "ref_level": None}
    with contextlib.redirect_stdout(io.StringIO()):
        ls = nc.fit_LS_model_and_find_priors(s_data, np.ones((n, 1)), info, mean_only)
        gamma, delta = nc.find_parametric_adjustments(s_data, ls, info, mean_only)
    return np.asarray(gamma, float)[0], np.asarray(delta, float)[0]


class ComBatHarmoniser(TransformerMixin, BaseEstimator):
    """ComBat (parametric empirical Bayes) on the feature columns, per :data:`BATCH`; fitted on training only.

    Args:
        min_batch: fewest patients of a batch whose shift/scale are estimated (see the module docstring).
        mean_only: correct only the shift (``delta = 1``), e.g. for very small batches.

    Attributes:
        features_: feature columns seen in ``fit`` (the output's columns, in order).
        adjusted_: mask over ``features_``: harmonised (False: constant in training, passed through).
        mean_, var_pooled_: per harmonised feature, the training grand mean and pooled within-batch variance.
        gamma_, delta_: per fitted batch, its shift and scale (standardised units).
        batches_: fitted batches; ``n_per_batch_``: training patients per batch (all of them).
        passthrough_batches_: training batches with fewer than ``min_batch`` patients (left unchanged).
    """

    def __init__(self, min_batch: int = MIN_BATCH, mean_only: bool = False):
        self.min_batch = min_batch
        self.mean_only = mean_only

    def fit(self, X: pd.DataFrame, y=None) -> ComBatHarmoniser:
        """Estimate ComBat on these (training) patients; ``y`` is ignored (the label never enters)."""
        feats, batch = split_batch(X)
        if feats.shape[0] == 0 or feats.shape[1] == 0:
            raise InputError(None, f"ComBat needs patients and features to fit on, got {feats.shape[0]} patient(s) "
                                   f"and {feats.shape[1]} feature(s)")
        values = feats.to_numpy(dtype=float)
        if not np.isfinite(values).all():
            row, col = np.argwhere(~np.isfinite(values))[0]
            raise InputError(str(feats.index[row]), f"feature {feats.columns[col]} is not finite; ComBat needs values")
        self.features_ = list(feats.columns)
        counts = batch.value_counts()
        self.n_per_batch_ = {str(k): int(v) for k, v in counts.sort_index().items()}
        fitted = sorted(b for b, n in self.n_per_batch_.items() if n >= int(self.min_batch))
        self.passthrough_batches_ = sorted(set(self.n_per_batch_) - set(fitted))
        self.adjusted_ = np.zeros(len(self.features_), dtype=bool)
        self.batches_, self.gamma_, self.delta_ = [], {}, {}
        rows = batch.isin(fitted).to_numpy()
        if len(fitted) < 2:
            log.warning("ComBat: %d batch(es) with at least %d training patients; nothing to harmonise",
                        len(fitted), self.min_batch)
            self.mean_, self.var_pooled_ = np.zeros(0), np.zeros(0)
            return self
        sub = values[rows]
        self.adjusted_ = np.ptp(sub, axis=0) > 0  # constant features: neuroCombat cannot pool a zero variance
        nc = _neurocombat()
        with contextlib.redirect_stdout(io.StringIO()):
            out = nc.neuroCombat(sub[:, self.adjusted_].T, pd.DataFrame({"batch": batch[rows].to_numpy()}), "batch",
                                 mean_only=bool(self.mean_only))
        est = out["estimates"]
        levels = [str(b) for b in est["batches"]]
        self.batches_ = levels
        self.mean_ = np.asarray(est["stand.mean"], float)[:, 0]
        self.var_pooled_ = np.asarray(est["var.pooled"], float).ravel()
        self.gamma_ = {b: np.asarray(est["gamma.star"], float)[i] for i, b in enumerate(levels)}
        self.delta_ = {b: np.asarray(est["delta.star"], float)[i] for i, b in enumerate(levels)}
        if self.passthrough_batches_:
            log.warning("ComBat: batch(es) %s have fewer than %d training patients and are left unharmonised",
                        ", ".join(self.passthrough_batches_), self.min_batch)
        return self

    def _standardise(self, block: np.ndarray) -> np.ndarray:
        return (block - self.mean_) / np.sqrt(self.var_pooled_)

    def batch_parameters(self, X: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
        """Per batch of ``X``: the ``(gamma, delta)`` applied to it (training estimates, or estimated label-free
        from these patients for a batch the fit did not see), None when it is passed through unchanged."""
        check_is_fitted(self, "features_")
        feats, batch = split_batch(X)
        out: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        for b in sorted(batch.unique()):
            if b in self.gamma_:
                out[b] = (self.gamma_[b], self.delta_[b])
                continue
            rows = (batch == b).to_numpy()
            if not self.adjusted_.any() or b in self.passthrough_batches_ or rows.sum() < int(self.min_batch):
                log.info("ComBat: batch %s (%d patient(s)) passed through unharmonised", b, rows.sum())
                out[b] = None
                continue
            block = feats.loc[rows, self.features_].to_numpy(dtype=float)[:, self.adjusted_]
            out[b] = _eb_adjustment(self._standardise(block).T, bool(self.mean_only))
            log.info("ComBat: new batch %s: shift and scale estimated from its %d patients (label-free)", b, rows.sum())
        return out

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """The harmonised features (batch column dropped), same index and column order as in ``fit``."""
        check_is_fitted(self, "features_")
        feats, batch = split_batch(X)
        missing = [c for c in self.features_ if c not in feats.columns]
        if missing:
            raise InputError(None, f"feature {missing[0]!r} of the fitted harmonisation is missing from the input")
        feats = feats[self.features_]
        values = feats.to_numpy(dtype=float).copy()
        params = self.batch_parameters(X)
        cols = np.flatnonzero(self.adjusted_)
        for b, p in params.items():
            if p is None:
                continue
            rows = np.flatnonzero((batch == b).to_numpy())
            gamma, delta = p
            s = self._standardise(values[np.ix_(rows, cols)])
            values[np.ix_(rows, cols)] = (s - gamma) / np.sqrt(delta) * np.sqrt(self.var_pooled_) + self.mean_
        return pd.DataFrame(values, index=feats.index, columns=self.features_)

    def get_feature_names_out(self, input_features=None):
        check_is_fitted(self, "features_")
        return np.asarray(self.features_, dtype=object)


def with_batch(X: pd.DataFrame, batches: pd.Series) -> pd.DataFrame:
    """``X`` plus the :data:`BATCH` column, each patient's batch taken from ``batches`` (by patient id).

    Raises:
        InputError: a patient of ``X`` has no batch.
    """
    b = pd.Series(batches).copy()
    b.index = b.index.astype(str)
    ids = X.index.astype(str) if "patient_id" not in X.columns else X["patient_id"].astype(str)
    values = b.reindex(pd.Index(ids))
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any():
        raise InputError(str(pd.Index(ids)[missing.to_numpy()][0]), "no batch (scanner) value for this patient")
    return X.assign(**{BATCH: values.astype(str).to_numpy()})


def harmonisation_record(model, harmonise: str, batch_column: str | None) -> dict:
    """What the fitted full-cohort model's harmonisation did (``fusion/harmonisation.json``, the frozen model's
    manifest, the report): method, batch column, training patients per scanner, scanners left unharmonised."""
    step = (model.named_steps.get("harmonise") if hasattr(model, "named_steps")
            else getattr(model, "harmoniser_", None))
    record = {"method": check_harmonise(harmonise), "batch_column": batch_column if harmonise != "none" else None,
              "min_batch": None, "n_per_batch": {}, "fitted_batches": [], "passthrough_batches": [],
              "new_batches": "estimated label-free from their own patients when at least min_batch are scored "
                             "together, else passed through (docs/harmonisation.md)"}
    if step is not None:
        record.update(min_batch=int(step.min_batch), n_per_batch=step.n_per_batch_, fitted_batches=step.batches_,
                      passthrough_batches=step.passthrough_batches_)
    return record
