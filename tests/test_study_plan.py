"""``validate --study`` simulates the study plan (every fold, every pair of folds of the nested fits, the LASSO's
inner CV, ComBat's scanners, the networks) on the folds the run makes, so what would fail in fusion fails now."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from p53hcc.fusion.models.nested import inner_scores
from p53hcc.fusion.models.radiomics import LassoSelector, make_radiomics_model
from p53hcc.tools.cli import main
from p53hcc.tools.cohort.splits import make_splits
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.pipeline.plan import lasso_problem, lasso_search_fails
from p53hcc.tools.schema import IMAGE_COLUMNS
from tests.conftest import make_tiny_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """22 patients: 16 training (8 of each class), 6 validation. With 3 folds every fold's training part has >= 5
    of each class (the outer check passes) but a pair of folds' training part has about 3."""
    return make_tiny_cohort(tmp_path_factory.mktemp("plan") / "c", n=22)


def _validate(capsys, csv: Path, *flags: str) -> tuple[int, str]:
    code = main(["validate", str(csv), "--study", *flags])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_nested_lasso_that_would_fail_in_fusion_fails_in_validate(cohort, capsys):
    code, printed = _validate(capsys, cohort, "--folds", "3")
    assert code == 1 and "Traceback" not in printed, printed
    line = next(x for x in printed.splitlines() if "penalty search" in x)
    assert "the training part of the pair of folds (" in line and "(nested cross-fitting)" in line, line
    assert "use --fusion.lasso_cv_folds" in line and "--fusion.nesting apparent" in line, line
    # the settings it names do pass
    fix = line.split("use --fusion.lasso_cv_folds ")[1].split()[0]
    assert _validate(capsys, cohort, "--folds", "3", "--fusion.lasso_cv_folds", fix)[0] == 0
    assert _validate(capsys, cohort, "--folds", "3", "--fusion.nesting", "apparent")[0] == 0


def test_study_stops_at_validate_on_the_nested_plan(cohort, tmp_path, monkeypatch):
    """The study command runs the same simulation before any heavy stage."""
    calls = []
    monkeypatch.setattr("p53hcc.tools.preprocessing.run.preprocess_cohort", lambda *a, **k: calls.append("pp"))
    from p53hcc.tools.pipeline.study import run_study

    with pytest.raises(P53hccError, match=r"pair of folds .* penalty search|penalty search.*pair of folds"):
        run_study(cohort, out=tmp_path / "study", nets="resnet18", folds=3, profile="demo")
    assert calls == []


def test_the_simulation_agrees_with_the_run(cohort):
    """The pair-of-folds fits the plan rejects do fail in fusion's inner_scores (scikit-learn's error), and the
    folds it accepts run."""
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    train = df[df["split"] == "train"]
    X = pd.DataFrame(np.random.default_rng(0).normal(size=(len(train), 4)), columns=list("abcd"),
                     index=pd.Index(train["patient_id"], name="patient_id"))
    y = train.set_index("patient_id")["p53"].astype(int)
    splits = make_splits(df, 3, 0)
    assert lasso_problem(df, splits, 5, nested=True, folds=3)[0] == "error"
    with pytest.raises(ValueError, match="n_splits=5"):
        inner_scores(partial(make_radiomics_model, cv=5), X, y, splits)
    assert lasso_problem(df, splits, 2, nested=True, folds=3) is None
    assert len(inner_scores(partial(make_radiomics_model, cv=2), X, y, splits)) == len(train) * 2


def test_more_folds_named_when_they_pass():
    """Nested fits train on K-2 of K folds: more folds, not fewer, enlarge them; the message names the nearest K."""
    rows = [{"patient_id": f"P{i:02d}", "split": "train", "p53": str(i % 2)} for i in range(24)]
    df = pd.DataFrame(rows)  # 12 of each class: a pair of 3 folds trains on about 4 of each
    severity, msg = lasso_problem(df, make_splits(df, 3, 0), 5, nested=True, folds=3)
    assert severity == "error" and "--folds " in msg, msg
    k = int(msg.split("--folds ")[1].split()[0])
    assert k > 3 and (lasso_problem(df, make_splits(df, k, 0), 5, nested=True, folds=k) or [""])[0] != "error"


def test_combat_scanners_simulated(cohort, capsys, tmp_path):
    csv = tmp_path / "cohort.csv"
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    for col in IMAGE_COLUMNS:
        df[col] = [str(cohort.parent / v) for v in df[col]]
    df["scanner"] = ["A" if i % 4 else "B" for i in range(len(df))]
    df.to_csv(csv, index=False)
    code, printed = _validate(capsys, csv, "--folds", "3", "--fusion.nesting", "apparent", "--fusion.harmonise",
                              "combat", "--fusion.lasso_cv_folds", "3")
    assert code == 0 and "WARNING" in printed and "ComBat needs at least 2 scanners with 5" in printed, printed
    df["scanner"] = ""
    df.to_csv(csv, index=False)
    code, printed = _validate(capsys, csv, "--folds", "3", "--fusion.nesting", "apparent", "--fusion.harmonise",
                              "combat", "--fusion.lasso_cv_folds", "3")
    assert code == 1 and "fusion.harmonise combat" in printed and "no batch (scanner) value" in printed, printed


def test_unknown_network_fails_in_validate(cohort, capsys):
    code, printed = _validate(capsys, cohort, "--dl.nets", "resnet18,vit_b16", "--folds", "3")
    assert code == 1 and "unknown network(s) vit_b16" in printed and "validate:" not in printed, printed


@pytest.mark.parametrize("cv", [2, 5])
def test_the_rule_is_scikit_learns(cv):
    """lasso_search_fails is exactly when the LASSO's penalty search raises: every class count pair up to 7."""
    import warnings

    rng = np.random.default_rng(0)
    for pos in range(1, 8):
        for neg in range(1, 8):
            X, y = rng.normal(size=(pos + neg, 3)), np.array([1] * pos + [0] * neg)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    LassoSelector(cv=cv, Cs=[0.1, 1.0]).fit(X, y)
                raised = False
            except ValueError:
                raised = True
            assert raised == lasso_search_fails((neg, pos), cv), (pos, neg, cv)


def test_one_class_short_in_a_pair_warns():
    """A pair of folds with 4 of one class for a 5-fold search runs in scikit-learn (inner folds lacking that class,
    a warning): validate warns and names the setting that gives every inner fold both classes, it does not refuse."""
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    df, _ = sample_patients(40, seed=0)
    problem = lasso_problem(df, make_splits(df, 3, 0), 5, nested=True, folds=3)
    assert problem and problem[0] == "warning" and "pair of folds" in problem[1], problem
    assert "--fusion.lasso_cv_folds" in problem[1]
