"""Multi-centre study options: leave-one-scanner-out folds and report table, ComBat through the real fusion stage,
the frozen model on new scanners, the synthetic cohort's scanner-effect strength."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from p53hcc.tools.errors import InputError, P53hccError

SCANNERS = ("A", "B", "C", "D")


def _cohort(n=120, seed=5):
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    cohort, truth = sample_patients(n, seed=seed)
    rng = np.random.default_rng(seed)
    cohort["scanner"] = rng.choice(SCANNERS, size=n)
    for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
        cohort[col] = "x.nii.gz"
    return cohort, truth


def test_leave_one_scanner_out_folds_are_the_scanners(tmp_path):
    from p53hcc.tools.cohort.splits import make_splits

    cohort, _ = _cohort()
    splits = make_splits(cohort, n_folds=5, seed=0, group_column="scanner")
    train = cohort[cohort["split"] == "train"].set_index("patient_id")
    assert splits["validation"] == "leave_one_scanner_out" and splits["n_folds"] == 4
    assert [f["group"] for f in splits["folds"]] == sorted(SCANNERS)
    for f in splits["folds"]:
        assert set(f["val"]) == set(train.index[train["scanner"] == f["group"]])
        assert not set(train.loc[f["train"], "scanner"]) & {f["group"]}
    with pytest.raises(P53hccError, match="at least 2"):
        make_splits(cohort.assign(scanner="A"), group_column="scanner")
    with pytest.raises(InputError, match="column centre.*no batch column"):
        make_splits(cohort, group_column="centre")


def test_study_settings_are_checked():
    from p53hcc.tools.pipeline.config import fold_groups, resolve_config

    with pytest.raises(P53hccError, match="harmonise"):
        resolve_config(**{"fusion.harmonise": "quantile"})
    with pytest.raises(P53hccError, match="validation"):
        resolve_config(validation="leave_one_centre_out")
    assert fold_groups(resolve_config()) is None
    cfg = resolve_config(validation="leave_one_scanner_out", batch_column="centre", folds=2)  # folds: not used
    assert fold_groups(cfg) == "centre"


def test_validate_study_checks_scanners():
    from p53hcc.tools.pipeline.checks import class_problems

    cohort, _ = _cohort()
    train = cohort["split"] == "train"
    cohort.loc[train & (cohort["scanner"] == "D"), "p53"] = 1
    problems = class_problems(cohort, 5, inner_cv=3, group_column="scanner")
    assert [p.severity for p in problems] == ["warning"] and "scanner D" in str(problems[0])
    problems = class_problems(cohort.drop(columns="scanner"), 5, group_column="scanner")
    assert problems and problems[0].severity == "error" and "no batch column" in str(problems[0])


@pytest.fixture(scope="module")
def multicentre_study(tmp_path_factory):
    """A study folder with scanners and scanner effects on the radiomics features, DL scores faked from the truth,
    then the real fusion (ComBat, leave-one-scanner-out, nested: the pair-of-scanners models score two scanners
    they never saw), statistics, freeze and report stages."""
    from p53hcc.fusion.report.page import write_report
    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.pipeline.config import resolve_config
    from p53hcc.tools.pipeline.fit import run_fusion
    from p53hcc.tools.pipeline.freeze import freeze_model
    from p53hcc.tools.pipeline.statistics import run_statistics

    root = tmp_path_factory.mktemp("multicentre")
    cohort, truth = _cohort()
    csv = root / "cohort" / "cohort.csv"
    csv.parent.mkdir()
    cohort.to_csv(csv, index=False)
    truth.to_csv(csv.parent / "truth.csv", index=False)
    write_datalist(csv, root, seed=0, group_column="scanner")
    splits = json.loads((root / "splits.json").read_text())
    rng = np.random.default_rng(2)
    ids, logit = truth["patient_id"].to_numpy(), truth["bayes_logit"].to_numpy()
    shift = pd.Series({"A": 0.0, "B": 3.0, "C": -2.0, "D": 1.0})[cohort["scanner"]].to_numpy()
    rad = pd.DataFrame(rng.normal(size=(len(ids), 10)) + shift[:, None],
                       columns=[f"ap_original_firstorder_F{i}" for i in range(10)])
    rad.iloc[:, 0] += 0.8 * logit
    rad.insert(0, "patient_id", ids)
    rad.to_parquet(root / "radiomics.parquet", index=False)
    split = cohort.set_index("patient_id")["split"]
    for arm, noise in (("mc", 3.0), ("ff", 0.7)):
        d = root / "dl" / arm / "resnet18"
        (d / "full").mkdir(parents=True)
        (d / "full" / "model.pt").write_bytes(b"weights")
        pd.DataFrame({"patient_id": ids, "model": f"{arm}_resnet18",
                      "fold": [splits["fold_of"].get(p, -1) for p in ids], "split": split.loc[ids].to_numpy(),
                      "score": 1 / (1 + np.exp(-(logit + rng.normal(0, noise, len(ids)))))}
                     ).to_parquet(d / "scores.parquet")
    cfg = resolve_config(nets="resnet18", validation="leave_one_scanner_out", **{"fusion.harmonise": "combat"})
    cfg.update(cohort=str(csv), cohort_generated=False)
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    run_fusion(root, csv, cfg)
    run_statistics(root, csv, cfg)
    freeze_model(root)
    write_report(root, cohort)
    return root, cohort, rad


def test_fusion_harmonises_inside_the_folds_and_records_it(multicentre_study):
    import joblib

    root, cohort, _ = multicentre_study
    model = joblib.load(root / "fusion" / "radiomics.joblib")
    train = cohort[cohort["split"] == "train"]
    assert model.named_steps["harmonise"].n_per_batch_ == train["scanner"].value_counts().sort_index().to_dict()
    assert json.loads((root / "fusion" / "radiomics_features.json").read_text())[0] == "ap_original_firstorder_F0"
    record = json.loads((root / "model" / "manifest.json").read_text())["harmonisation"]
    assert record["method"] == "combat" and record["batch_column"] == "scanner"
    assert record["fitted_batches"] == sorted(SCANNERS)


def test_leave_one_scanner_out_table(multicentre_study):
    from p53hcc.fusion.stats.auc import auc_ci

    root, cohort, _ = multicentre_study
    table = pd.read_csv(root / "tables" / "leave_one_scanner_out.csv")
    assert set(table["scanner"]) == set(SCANNERS)
    assert {"clinical", "radiomics", "mc_resnet18", "ff_resnet18", "dl", "combined"} <= set(table["model"])
    scores = pd.read_parquet(root / "scores.parquet")
    splits = json.loads((root / "splits.json").read_text())
    y = cohort.set_index("patient_id")["p53"]
    row = table[(table["scanner"] == "B") & (table["model"] == "radiomics")].iloc[0]
    fold = next(f for f in splits["folds"] if f["group"] == "B")
    held = scores[(scores["model"] == "radiomics") & scores["patient_id"].isin(fold["val"])]
    assert (held["fold"] == fold["fold"]).all() and row["n"] == len(fold["val"])
    ref = auc_ci(y.loc[held["patient_id"]].to_numpy(), held["score"].to_numpy())
    assert row["auc"] == pytest.approx(ref.auc) and row["ci_low"] == pytest.approx(ref.ci_low)
    page = (root / "report.html").read_text(encoding="utf-8")
    assert "Leave-one-scanner-out" in page and "Scanner harmonisation" in page
    section = page.split("<h2>Leave-one-scanner-out</h2>")[1].split("</section>")[0]  # the table itself, per scanner
    assert f"{ref.auc:.3f} ({ref.ci_low:.3f}-{ref.ci_high:.3f})" in section
    assert all(f"<td>{s}</td>" in section for s in SCANNERS)
    assert "the training folds are the scanners" in page


def test_frozen_model_on_known_and_new_scanners(multicentre_study):
    """Validation patients (known scanners) get back their study scores; a new scanner with enough patients is
    harmonised label-free from its own features (changing their radiomics scores); a new scanner with fewer
    patients than min_batch passes through; a cohort without the batch column is an error naming it."""
    from p53hcc.tools.pipeline.freeze import load_model
    from p53hcc.tools.pipeline.predict import score_patients

    root, cohort, rad = multicentre_study
    bundle = load_model(root / "model")
    val = cohort[cohort["split"] == "validation"]
    s = pd.read_parquet(root / "scores.parquet")
    dl = s[(s["model"] == "dl") & (s["split"] == "validation")].set_index("patient_id")["score"]
    got = score_patients(bundle, val, rad, dl).set_index("patient_id")
    study = s[(s["model"] == "radiomics") & (s["split"] == "validation")].set_index("patient_id")["score"]
    np.testing.assert_allclose(got["radiomics"], study.loc[got.index], rtol=1e-12)
    new = val.assign(scanner="NEW")
    moved = score_patients(bundle, new, rad, dl).set_index("patient_id")
    assert len(new) >= 5 and not np.allclose(moved["radiomics"], got["radiomics"])
    few = val.iloc[:3].assign(scanner="NEW")
    step = bundle["radiomics"].named_steps["harmonise"]
    X = rad.set_index("patient_id").loc[few["patient_id"]].assign(batch="NEW")
    pd.testing.assert_frame_equal(step.transform(X), X.drop(columns="batch"))
    with pytest.raises(InputError, match="no batch column 'scanner'"):
        score_patients(bundle, val.drop(columns="scanner"), rad, dl)


def test_scanner_effect_strength_scales_departures_from_the_reference():
    from p53hcc.tools.cohort.synth import images as si

    assert si.scanner_profiles("external", 1.0) is si.EXTERNAL_SCANNERS       # the default images are unchanged
    ref = si._reference_scanner()
    flat = si.scanner_profiles("internal", 0.0)
    assert all(s["noise"] == pytest.approx(ref["noise"]) and s["offset"] == 0 for s in flat.values())
    double = si.scanner_profiles("external", 2.0)
    for name, s in si.EXTERNAL_SCANNERS.items():
        assert np.log(double[name]["noise"] / ref["noise"]) == pytest.approx(2 * np.log(s["noise"] / ref["noise"]))
        assert double[name]["inplane"] == s["inplane"] and double[name]["slice"] == s["slice"]
    with pytest.raises(ValueError):
        si.scanner_profiles("internal", -1)
