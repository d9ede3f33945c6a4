"""ComBat harmonisation (fusion/models/harmonise.py): the reference implementation's numbers, the frozen transform, the
new-batch rule, no leak of held-out patients into the fit, and no signal added on null cohorts."""
from __future__ import annotations

import contextlib
import io
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from p53hcc.fusion.models.ffhead import FFHead
from p53hcc.fusion.models.harmonise import BATCH, ComBatHarmoniser, harmonisation_record, with_batch
from p53hcc.fusion.models.oof import crossfit_scores
from p53hcc.fusion.models.radiomics import make_radiomics_model
from p53hcc.tools.errors import InputError

neuroCombat = pytest.importorskip("neuroCombat")


def scanner_data(n=(40, 30, 20), p=12, seed=0, signal=0.0):
    """Features with per-scanner shift and scale (and an optional label signal in feature 0), plus labels."""
    rng = np.random.default_rng(seed)
    batch = np.repeat(["a", "b", "c"][:len(n)], n)
    code = pd.factorize(batch)[0]
    y = rng.integers(0, 2, len(batch))
    X = rng.normal(size=(len(batch), p)) * np.r_[1, 2, 0.5][code][:, None] + np.r_[0, 3, -1][code][:, None]
    X[:, 0] += signal * y
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(p)], index=[f"P{i:03d}" for i in range(len(batch))])
    return df.assign(**{BATCH: batch}), pd.Series(y, index=df.index)


def reference(X: np.ndarray, batch, **kw) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return neuroCombat.neuroCombat(X.T, pd.DataFrame({"b": batch}), "b", **kw)


@pytest.mark.parametrize("mean_only", [False, True])
def test_training_patients_get_exactly_neurocombats_harmonised_values(mean_only):
    df, _ = scanner_data()
    df["f3"] = 7.0                                   # constant in training: passed through, never divided by zero
    h = ComBatHarmoniser(mean_only=mean_only).fit(df)
    out = h.transform(df)
    keep = [c for c in df.columns if c not in (BATCH, "f3")]
    ref = reference(df[keep].to_numpy(float), df[BATCH].to_numpy(), mean_only=mean_only)
    np.testing.assert_allclose(out[keep].to_numpy(), ref["data"].T, rtol=0, atol=1e-10)
    assert (out["f3"] == 7.0).all() and list(out.columns) == [c for c in df.columns if c != BATCH]
    # the frozen transform of known scanners does not depend on who else is scored in the same call
    some = df.iloc[[0, 45, 85]]
    np.testing.assert_allclose(h.transform(some)[keep].to_numpy(), ref["data"].T[[0, 45, 85]], atol=1e-10)


def test_harmonised_scanners_share_mean_and_spread():
    df, _ = scanner_data(n=(60, 60, 60))
    out = ComBatHarmoniser().fit(df).transform(df).assign(**{BATCH: df[BATCH]})
    means = out.groupby(BATCH).mean()
    sds = out.groupby(BATCH).std()
    raw = df.groupby(BATCH).mean()
    assert (raw.max() - raw.min()).min() > 3          # 4 units apart before
    assert (means.max() - means.min()).max() < 0.5    # a fraction of the pooled SD after
    assert (sds.max() / sds.min()).max() < 1.5        # spreads were 4x apart before


def test_new_scanner_rule_reproduces_combats_estimate_for_a_known_scanner():
    """A scanner the fit did not see: its shift and scale are estimated label-free from its own patients with
    neuroCombat's empirical-Bayes step; fed the rows of a training scanner under a new name, the rule must give
    what the joint fit gave that scanner."""
    df, _ = scanner_data()
    h = ComBatHarmoniser().fit(df)
    renamed = df[df[BATCH] == "b"].assign(**{BATCH: "new"})
    gamma, delta = h.batch_parameters(renamed)["new"]
    np.testing.assert_allclose(gamma, h.gamma_["b"], atol=1e-12)
    np.testing.assert_allclose(delta, h.delta_["b"], atol=1e-12)
    np.testing.assert_allclose(h.transform(renamed).to_numpy(), h.transform(df[df[BATCH] == "b"]).to_numpy(),
                               atol=1e-10)


def test_small_new_scanner_and_small_training_scanner_pass_through_unchanged():
    df, _ = scanner_data(n=(40, 30, 3))
    h = ComBatHarmoniser(min_batch=5).fit(df)
    assert h.batches_ == ["a", "b"] and h.passthrough_batches_ == ["c"] and h.n_per_batch_["c"] == 3
    small_train = df[df[BATCH] == "c"]
    pd.testing.assert_frame_equal(h.transform(small_train), small_train.drop(columns=BATCH))
    new = df.iloc[:4].assign(**{BATCH: "unseen"})
    pd.testing.assert_frame_equal(h.transform(new), new.drop(columns=BATCH))
    assert h.batch_parameters(new) == {"unseen": None}


def test_the_batch_column_is_consumed_and_required():
    df, y = scanner_data()
    model = make_radiomics_model(cv=3, Cs=np.logspace(-1, 0, 3), harmonise="combat").fit(df, y)
    assert BATCH not in model.named_steps["variance"].feature_names_in_     # never a model feature
    with pytest.raises(InputError, match="'batch' column"):
        model.predict_proba(df.drop(columns=BATCH))
    with pytest.raises(InputError, match="P001.*no batch"):
        ComBatHarmoniser().fit(df.assign(**{BATCH: df[BATCH].where(df.index != "P001")}))
    with pytest.raises(InputError, match="P7.*no batch"):
        with_batch(pd.DataFrame({"x": [1.0]}, index=["P7"]), pd.Series({"P8": "a"}))
    rec = harmonisation_record(model, "combat", "scanner")
    assert rec["fitted_batches"] == ["a", "b", "c"] and rec["n_per_batch"] == {"a": 40, "b": 30, "c": 20}
    assert make_radiomics_model().steps[0][0] == "variance"   # harmonise none: the pipeline as before


def test_the_label_never_enters_the_fit():
    df, y = scanner_data(signal=2.0)
    a = ComBatHarmoniser().fit(df, y)
    b = ComBatHarmoniser().fit(df, 1 - y)
    for k in a.gamma_:
        np.testing.assert_array_equal(a.gamma_[k], b.gamma_[k])
        np.testing.assert_array_equal(a.delta_[k], b.delta_[k])


class _Recorder(ComBatHarmoniser):
    """Keeps every fitted instance (cross-fitting clones the estimators it is given)."""

    fitted: ClassVar[list] = []

    def fit(self, X, y=None):
        super().fit(X, y)
        _Recorder.fitted.append(self)
        return self


def _harmoniser_params(h) -> dict:
    h = h.harmoniser_ if isinstance(h, FFHead) else h
    return {"mean": h.mean_, "var": h.var_pooled_, "n": h.n_per_batch_,
            **{f"g_{b}": h.gamma_[b] for b in h.gamma_}, **{f"d_{b}": h.delta_[b] for b in h.gamma_}}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        if isinstance(v, dict):
            assert v == b[k], k
        else:
            np.testing.assert_array_equal(v, b[k], err_msg=k)


def test_leakage_fit_on_training_patients_only():
    """Cross-fitted radiomics pipeline with ComBat: every fold's (and the full model's) harmoniser is fitted on that
    fold's training patients only. Flipping the validation labels, or adding validation patients (one of them on a
    new scanner), leaves every training-side parameter and every out-of-fold score unchanged; each fold harmoniser
    counts exactly the scanners of its own training patients."""
    df, y = scanner_data(n=(45, 45, 45), signal=1.0)
    split = pd.Series(np.where(np.arange(len(df)) % 4 == 0, "validation", "train"), index=df.index)
    train = df.index[split == "train"]
    folds = [train[i::3] for i in range(3)]
    splits = {"folds": [{"fold": k, "val": list(f), "train": [p for p in train if p not in set(f)]}
                        for k, f in enumerate(folds)]}

    def factory():
        model = make_radiomics_model(cv=3, Cs=np.logspace(-1, 0, 3), harmonise="combat")
        model.steps[0] = ("harmonise", _Recorder())
        return model

    def run(X, yy, sp):
        _Recorder.fitted = []
        scores = crossfit_scores("radiomics", factory, X, yy, sp, splits)
        return list(_Recorder.fitted), scores.set_index("patient_id")

    base_models, base = run(df, y, split)
    assert len(base_models) == 4                     # three folds, then the full-training-cohort model
    for k, f in enumerate([*splits["folds"], {"train": list(train)}]):
        expected = df.loc[f["train"], BATCH].value_counts().sort_index().to_dict()
        assert base_models[k].n_per_batch_ == expected
    flipped = y.where(split == "train", 1 - y)
    extra, _ = scanner_data(n=(6, 6), seed=9, signal=1.0)
    extra.index = [f"V{i:02d}" for i in range(len(extra))]
    extra[BATCH] = np.where(np.arange(len(extra)) < 6, "a", "brand_new")
    more = pd.concat([df, extra])
    more_y = pd.concat([flipped, pd.Series(1, index=extra.index)])
    more_split = pd.concat([split, pd.Series("validation", index=extra.index)])
    for X, yy, sp in ((df, flipped, split), (more, more_y, more_split)):
        models, scores = run(X, yy, sp)
        for m0, m1 in zip(base_models, models):
            _same(_harmoniser_params(m0), _harmoniser_params(m1))
        np.testing.assert_array_equal(scores.loc[train, "score"], base.loc[train, "score"])


def test_leakage_ff_head_harmoniser_sees_training_patients_only():
    df, y = scanner_data(n=(30, 30, 30), p=6, signal=1.5)
    wide = df.rename(columns={f"f{i}": f"{ph}_f{j}" for i, (ph, j) in
                              enumerate((ph, j) for ph in ("ap", "pvp", "dp") for j in range(2))})
    tr = wide.index[:60]
    a = FFHead(n_components=2, lasso_C=1.0, harmonise="combat").fit(wide.loc[tr], y.loc[tr])
    b = FFHead(n_components=2, lasso_C=1.0, harmonise="combat").fit(wide.loc[tr], y.loc[tr])
    _same(_harmoniser_params(a), _harmoniser_params(b))
    assert a.harmoniser_.n_per_batch_ == wide.loc[tr, BATCH].value_counts().sort_index().to_dict()
    s1 = a.predict_proba(wide.loc[wide.index[60:]])[:, 1]
    assert np.isfinite(s1).all() and len(np.unique(s1)) > 1
    assert FFHead(n_components=2, lasso_C=1.0).fit(wide.loc[tr].drop(columns=BATCH), y.loc[tr]).harmoniser_ is None


def _null_auc(leaky: bool, seed: int) -> float:
    """Cross-fitted AUC on a null cohort (noise features with scanner effects, labels independent of everything):
    ComBat inside each fold (ours), or ComBat fitted on all patients with the label as a protected covariate
    (the leak the WORC-style whole-cohort fit invites)."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    df, y = scanner_data(n=(30, 30, 30), p=20, seed=seed)
    X = df.drop(columns=BATCH).to_numpy()
    if leaky:
        with contextlib.redirect_stdout(io.StringIO()):
            X = neuroCombat.neuroCombat(X.T, pd.DataFrame({"b": df[BATCH].to_numpy(), "y": y.to_numpy()}), "b",
                                        categorical_cols=["y"])["data"].T
        df = pd.DataFrame(X, index=df.index).assign(**{BATCH: df[BATCH]})
    aucs = []  # the mean of the per-fold AUCs: unbiased under the null (the pooled one is not, fusion/stats/metric_rows.py)
    for tr, va in StratifiedKFold(3, shuffle=True, random_state=seed).split(X, y):
        steps = [StandardScaler(), LogisticRegression(C=0.1)]
        model = make_pipeline(*steps) if leaky else make_pipeline(ComBatHarmoniser(), *steps)
        data = df.drop(columns=BATCH) if leaky else df
        aucs.append(roc_auc_score(y.iloc[va], model.fit(data.iloc[tr], y.iloc[tr]).predict_proba(data.iloc[va])[:, 1]))
    return float(np.mean(aucs))


def test_null_cohorts_harmonisation_adds_no_signal():
    """30 null cohorts: the cross-fitted AUC with in-fold ComBat averages 0.5 (within 3 standard errors). The
    whole-cohort fit with the label as a protected covariate (what this design refuses: each held-out patient's
    features are then rebuilt with its own label's fitted effect) moves the null far from 0.5, so the check can
    fail."""
    ours = np.array([_null_auc(False, s) for s in range(30)])
    leaky = np.array([_null_auc(True, s) for s in range(30)])
    se = ours.std(ddof=1) / np.sqrt(len(ours))
    assert abs(ours.mean() - 0.5) < 3 * se, (ours.mean(), se)
    assert abs(leaky.mean() - 0.5) > 6 * leaky.std(ddof=1) / np.sqrt(len(leaky)), leaky.mean()
