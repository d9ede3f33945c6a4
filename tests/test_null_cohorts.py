"""Study-level null test: permuted-label cohorts at the paper's size through the real fusion and statistics stages.

Under shuffled labels no model predicts anything, so the honest (nested) training-cohort and validation AUCs of
every model average 0.5 and their CIs cover 0.5. The apparent pipeline (choice and stacking on the reported
out-of-fold scores) does not: the same check on it is part of the test, so the test can tell the two apart.
The full benchmark (200 permutations, all variants) is scripts/null_cohorts.py, docs/validation.md.
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _summary(variant: str, perms: range) -> pd.DataFrame:
    sys.path.insert(0, str(REPO))
    from scripts import null_cohorts

    tables = null_cohorts.fixed_tables()  # 320 patients, 224 training / 96 validation, as the paper
    runs = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for perm in perms:
            runs.append(null_cohorts.one_null(tables, perm, variant, Path(tmp)))
    return null_cohorts.summarise(pd.concat(runs, ignore_index=True)).set_index(["model", "split"])


@pytest.mark.slow
def test_nested_pipeline_is_unbiased_on_permuted_labels():
    summary = _summary("nested_nonnegative", range(24))  # SE of a mean AUC over 24 cohorts: about 0.012
    for model in ("radiomics", "dl", "combined"):
        for split in ("train", "validation"):
            row = summary.loc[(model, split)]
            assert row["n"] >= 22, (model, split, row.to_dict())
            assert abs(row["mean_auc"] - 0.5) < 0.04, (model, split, row.to_dict())
            assert row["coverage"] >= 0.75, (model, split, row.to_dict())
    clinical = summary.loc[("clinical", "train")]  # usually intercept-only under the null: named, not scored
    assert clinical["not_estimable"] > 0.5


@pytest.mark.slow
def test_apparent_choice_is_optimistic_on_permuted_labels():
    """The check above has the power to see the bias it guards against."""
    summary = _summary("apparent_free", range(8))
    assert summary.loc[("dl", "train"), "mean_auc"] > 0.55
    assert abs(summary.loc[("dl", "validation"), "mean_auc"] - 0.5) < 0.05  # the validation cohort stays clean
