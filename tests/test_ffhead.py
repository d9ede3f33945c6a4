"""FF head (p53hcc.fusion.models.ffhead): shape handling, agreement with a hand-built sklearn pipeline, and no leakage."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from p53hcc.fusion.models.ffhead import PHASES, FFHead, crossfit_ff_head, make_ff_head, wide_features


def long_features(n: int, dim: int, seed: int, folds=(-1,), signal: np.ndarray | None = None) -> pd.DataFrame:
    """Tidy random features ``patient_id, phase, fold, f0..`` (``signal`` added to ap_f0..f4 if given)."""
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    parts = []
    for k in folds:
        for phase in PHASES:
            f = rng.normal(size=(n, dim))
            if signal is not None and phase == "ap":
                f[:, :5] += signal[:, None]
            df = pd.DataFrame(f, columns=[f"f{j}" for j in range(dim)])
            df.insert(0, "patient_id", ids)
            df.insert(1, "phase", phase)
            df.insert(2, "fold", k)
            parts.append(df)
    return pd.concat(parts, ignore_index=True)


def test_wide_features_shape_and_errors():
    long = long_features(10, 6, 0)
    wide = wide_features(long)
    assert wide.shape == (10, 18)
    assert list(wide.columns[:2]) == ["ap_f0", "ap_f1"] and wide.columns[-1] == "dp_f5"
    assert wide.loc["P003", "pvp_f2"] == long[(long.patient_id == "P003") & (long.phase == "pvp")]["f2"].item()
    with pytest.raises(ValueError, match="missing"):
        wide_features(long[~((long.patient_id == "P001") & (long.phase == "dp"))])
    with pytest.raises(ValueError, match="more than once"):
        wide_features(pd.concat([long, long.iloc[:1]]))


def test_head_matches_reference_sklearn_pipeline():
    """Fixed penalty: FFHead == StandardScaler+PCA per phase -> scaler -> L1 LR -> LR on kept columns."""
    y = np.tile([0, 1], 30)
    wide = wide_features(long_features(60, 12, 1, signal=y.astype(float)))
    head = FFHead(n_components=4, lasso_C=0.3).fit(wide, y)
    cols = {p: [f"{p}_f{j}" for j in range(12)] for p in PHASES}
    pcs = ColumnTransformer([(p, make_pipeline(StandardScaler(), PCA(4, random_state=0)), cols[p]) for p in PHASES])
    z = StandardScaler().fit_transform(pcs.fit_transform(wide))
    lasso = LogisticRegression(C=0.3, l1_ratio=1.0, solver="liblinear", max_iter=5000).fit(z, y)
    keep = np.abs(lasso.coef_.ravel()) > 1e-10
    ref = LogisticRegression(C=np.inf, max_iter=5000).fit(z[:, keep], y).predict_proba(z[:, keep])[:, 1]
    assert head.n_selected_ == keep.sum() > 0
    assert len(head.selected_names_) == head.n_selected_
    np.testing.assert_allclose(head.predict_proba(wide)[:, 1], ref, rtol=1e-5, atol=1e-7)
    assert roc_auc_score(y, head.predict_proba(wide)[:, 1]) > 0.9  # the planted signal is found


def test_pca_components_capped_and_nothing_selected_gives_prevalence():
    y = np.r_[np.zeros(12), np.ones(8)].astype(int)
    wide = wide_features(long_features(20, 40, 2))
    head = make_ff_head(n_components=512, lasso_C=1e-4).fit(wide, y)  # 512 as in the paper's Methods
    assert head.n_components_ == [19, 19, 19]  # capped by n_samples - 1
    assert head.n_selected_ == 0 and head.lr_ is None
    np.testing.assert_allclose(head.predict_proba(wide)[:, 1], 0.4)


def test_null_cohort_out_of_fold_auc_near_half_while_leaky_fit_looks_good():
    """Random features, shuffled labels: cross-fitted AUC ~0.5; fitting PCA/LASSO/LR on everyone looks good."""
    n = 90
    rng = np.random.default_rng(3)
    y = rng.permutation(np.tile([0, 1], n // 2))
    long = long_features(n, 64, 4, folds=(0, 1, 2, -1))
    ids = sorted(long.patient_id.unique())
    labels = pd.Series(y, index=ids)
    fold_of = {p: i % 3 for i, p in enumerate(ids)}
    kw = {"n_components": 16, "lasso_C": 1.0}
    scores, n_sel = crossfit_ff_head(long, labels, fold_of, **kw)
    oof = roc_auc_score(labels.loc[scores.patient_id], scores.score)
    assert abs(oof - 0.5) < 0.15, oof
    assert set(n_sel) == {"fold0", "fold1", "fold2", "full"}
    wide = wide_features(long[long.fold == -1])
    leaky = make_ff_head(**kw).fit(wide, labels.loc[wide.index])
    assert roc_auc_score(labels.loc[wide.index], leaky.predict_proba(wide)[:, 1]) > 0.8


def test_held_out_labels_never_reach_the_head():
    """Flipping the labels of fold 0's held-out patients leaves their scores unchanged; a training label does not."""
    n = 60
    y = np.tile([0, 1], n // 2)
    long = long_features(n, 16, 5, folds=(0, 1, -1), signal=y * 0.8)
    ids = sorted(long.patient_id.unique())
    fold_of = {p: (i // 2) % 2 for i, p in enumerate(ids)}
    labels = pd.Series(y, index=ids)
    kw = {"n_components": 6, "lasso_C": 0.5}
    base, _ = crossfit_ff_head(long, labels, fold_of, folds=[0], **kw)
    held = [p for p in ids if fold_of[p] == 0]
    flipped = labels.copy()
    flipped.loc[held] = 1 - flipped.loc[held]
    same, _ = crossfit_ff_head(long, flipped, fold_of, folds=[0], **kw)
    pd.testing.assert_frame_equal(base, same)
    trained = [p for p in ids if fold_of[p] == 1]
    flipped2 = labels.copy()
    flipped2.loc[trained[:10]] = 1 - flipped2.loc[trained[:10]]
    other, _ = crossfit_ff_head(long, flipped2, fold_of, folds=[0], **kw)
    assert not np.allclose(base.score, other.score)
    assert set(base.patient_id) == set(held) and (base.fold == 0).all()


def test_cv_chosen_penalty_reports_n_selected():
    """Default head (paper: 8 PCs x 3 phases = 24 features, LASSO penalty by inner CV) keeps the planted signal."""
    y = np.tile([0, 1], 40)
    wide = wide_features(long_features(80, 32, 6, signal=y * 1.5))
    head = make_ff_head().fit(wide, y)
    assert len(head.feature_names_) == 24
    assert 1 <= head.n_selected_ <= 24
    assert 0.01 <= head.lasso_C_ <= 10
    assert any(n.startswith("ap_") for n in head.selected_names_)
