"""The study end to end (``p53hcc.tools.pipeline.study``, ``.fit``, ``.statistics``): configuration merging,
the fusion and statistics stages and their settings, run_study with resume, nothing lost silently."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.pipeline.config import resolve_config
from tests.conftest import Killed, snapshot


def test_config_merge_user_yaml_then_cli(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text(yaml.safe_dump({"dl": {"epochs": 7}, "synth": {"n": 60}}))
    cfg = resolve_config(user, nets="resnet18,resnet34", epochs=3, **{"radiomics.params": "paper"})
    assert cfg["dl"]["epochs"] == 3          # CLI beats user YAML
    assert cfg["synth"]["n"] == 60           # user YAML beats defaults
    assert cfg["dl"]["nets"] == ["resnet18", "resnet34"]
    assert cfg["radiomics"]["params"] == "paper"
    assert cfg["dl"]["batch_size"] == 16     # untouched default
    with pytest.raises(P53hccError):
        resolve_config(no_such_parameter=1)
    with pytest.raises(P53hccError):
        resolve_config(seed=1, workers=3)    # 'workers' is in two sections: ambiguous


def test_fusion_outputs(fused_study):
    root, _, _ = fused_study
    s = pd.read_parquet(root / "scores.parquet")
    assert set(s["model"]) == {"clinical", "radiomics", "mc_resnet18", "ff_resnet18", "dl", "combined"}
    tr = s[s.split == "train"]
    assert (tr["fold"] >= 0).all() and (s[s.split == "validation"]["fold"] == -1).all()
    assert s.groupby("model").size().nunique() == 1          # every model scored every patient
    assert json.loads((root / "selection.json").read_text(encoding="utf-8"))["chosen"]["model"] == "ff_resnet18"  # less noise
    lasso = pd.read_csv(root / "fusion" / "radiomics_lasso.csv")
    assert "ap_original_firstorder_F0" in set(lasso["feature"])   # the one feature carrying signal


def _restudy(fused_study, tmp_path, stages=("fusion", "statistics"), edit=None, **settings):
    """A copy of the fused study refitted with other study settings (and an optional edit of its files)."""
    import shutil

    from p53hcc.tools.pipeline.fit import run_fusion
    from p53hcc.tools.pipeline.statistics import run_statistics

    root = tmp_path / "restudy"
    shutil.copytree(fused_study[0], root)
    csv = root / "cohort" / "cohort.csv"
    cfg = resolve_config(nets="resnet18", folds=3, **settings)
    if edit:
        edit(root)
    if "fusion" in stages:
        run_fusion(root, csv, cfg)
    if "statistics" in stages:
        run_statistics(root, csv, cfg)
    return root


def test_configured_statistics_settings_are_honoured(fused_study, tmp_path):
    """ci_level sets every CI of metrics.csv and delong.csv; dca_thresholds sets the decision-curve grid."""
    from scipy.stats import norm

    base = fused_study[0]
    root = _restudy(fused_study, tmp_path, stages=("statistics",), **{"statistics.ci_level": 0.90,
                                                                      "statistics.dca_thresholds": [0.1, 0.5, 0.1]})
    ratio = norm.ppf(0.95) / norm.ppf(0.975)
    key = ["model", "split", "metric"]
    m95, m90 = (pd.read_csv(r / "metrics.csv").set_index(key) for r in (base, root))
    auc95, auc90 = m95.loc[("combined", "validation", "auc")], m90.loc[("combined", "validation", "auc")]
    assert auc90.estimate == auc95.estimate
    assert (auc90.ci_high - auc90.estimate) / (auc95.ci_high - auc95.estimate) == pytest.approx(ratio, rel=1e-6)
    d95, d90 = (pd.read_csv(r / "delong.csv").set_index(["split", "model_a", "model_b"]) for r in (base, root))
    width = lambda d: d["diff_ci_high"] - d["diff_ci_low"]
    np.testing.assert_allclose((width(d90) / width(d95)).dropna(), ratio, rtol=1e-6)
    nb = pd.read_csv(root / "net_benefit.csv")
    assert sorted(nb["threshold"].unique()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert set(nb["model"]) == {"all", "none", "clinical", "radiomics", "dl", "combined"}
    assert sorted(pd.read_csv(base / "net_benefit.csv")["threshold"].unique()) == pytest.approx(
        np.arange(1, 100) / 100)


def test_configured_fusion_settings_are_honoured(fused_study, tmp_path):
    import joblib

    root = _restudy(fused_study, tmp_path, **{"fusion.spearman_threshold": 0.5, "fusion.lasso_cv_folds": 3,
                                              "fusion.stack_weights": "free", "fusion.nesting": "apparent"})
    rad = joblib.load(root / "fusion" / "radiomics.joblib")
    assert rad.named_steps["spearman"].threshold == 0.5 and rad.named_steps["lasso"].cv == 3
    assert joblib.load(root / "fusion" / "combined.joblib").nonnegative is False
    sel = json.loads((root / "selection.json").read_text(encoding="utf-8"))
    assert (sel["nesting"], sel["stack_weights"]) == ("apparent", "free")
    m = pd.read_csv(root / "metrics.csv")
    train_rows = m[(m.split == "train") & m.model.isin(["dl", "combined"]) & (m.metric != "reference_auc")]
    assert train_rows["note"].str.startswith("apparent").all()  # labelled wherever it is used
    assert not m[(m.split == "train") & (m.model == "radiomics")]["note"].fillna("").str.contains("apparent").any()


@pytest.mark.parametrize("setting,value,match", [
    ("statistics.threshold", "youden_validation", "statistics.threshold"),
    ("fusion.nesting", "sometimes", "fusion.nesting"),
    ("fusion.stack_weights", "positive", "fusion.stack_weights"),
    ("statistics.ci_level", 95, "ci_level"),
    ("statistics.dca_thresholds", [0.5, 0.1, 0.1], "dca_thresholds"),
    ("folds", 2, "at least 3 folds"),
])
def test_unknown_or_impossible_settings_are_errors(setting, value, match):
    with pytest.raises(P53hccError, match=match):
        resolve_config(**{setting: value})


def test_constant_model_is_excluded_from_choice_and_stacking(fused_study, tmp_path):
    """The better DL candidate made constant on one fold (its LASSO kept nothing): it is named in selection.json,
    never chosen or stacked, and its metrics are NaN with the reason."""
    def flatten_ff(root):
        path = root / "dl" / "ff" / "resnet18" / "scores.parquet"
        s = pd.read_parquet(path)
        s.loc[s["fold"] == 1, "score"] = 0.37
        s.to_parquet(path)

    root = _restudy(fused_study, tmp_path, edit=flatten_ff)
    sel = json.loads((root / "selection.json").read_text(encoding="utf-8"))
    assert "ff_resnet18" in sel["excluded"] and "constant on fold(s) 1" in sel["excluded"]["ff_resnet18"]
    assert sel["chosen"]["model"] == "mc_resnet18" and set(sel["fold_choices"].values()) == {"mc_resnet18"}
    m = pd.read_csv(root / "metrics.csv")
    ff = m[(m.model == "ff_resnet18") & (m.metric == "auc")]
    assert ff["estimate"].isna().all() and ff["note"].str.contains("constant on fold").all()
    assert m[(m.model == "combined") & (m.metric == "auc")]["estimate"].notna().all()


def test_nesting_records_where_dl_inner_scores_came_from(fused_study, tmp_path):
    sel = json.loads((fused_study[0] / "selection.json").read_text(encoding="utf-8"))
    assert sel["nesting"] == "nested" and all("stand-in" in v for v in sel["dl_inner_scores"].values())

    def pair_scores(root):  # what train_arm(inner=True) leaves (values made up here; only the source is checked)
        from p53hcc.fusion.models.nested import inner_from_oof

        splits = json.loads((root / "splits.json").read_text(encoding="utf-8"))
        for arm in ("mc", "ff"):
            s = pd.read_parquet(root / "dl" / arm / "resnet18" / "scores.parquet")
            inner_from_oof(s[s.split == "train"], splits).to_parquet(root / "dl" / arm / "resnet18" /
                                                                     "inner_scores.parquet")

    root = _restudy(fused_study, tmp_path, stages=("fusion",), edit=pair_scores)
    sel = json.loads((root / "selection.json").read_text(encoding="utf-8"))
    assert sel["dl_inner_scores"] == {"mc_resnet18": "pair networks", "ff_resnet18": "pair networks"}


def test_run_study_kill_and_resume_gives_identical_outputs(tmp_path, fake_image_stages):
    from p53hcc.tools.pipeline.study import run_study

    kw = dict(out=tmp_path / "study", nets="resnet18", folds=3, epochs=1, **{"synth.n": 70})
    report = run_study(**kw)
    assert report.exists() and (tmp_path / "study" / "model" / "manifest.json").exists()
    page = report.read_text(encoding="utf-8")
    assert page.count("Not available") == 0, "every section should be filled by the fake study"
    clean = snapshot(tmp_path / "study")

    import shutil
    shutil.rmtree(tmp_path / "study")
    fake_image_stages["kill"] = "ff_resnet18"
    with pytest.raises(Killed):
        run_study(**kw)
    assert not (tmp_path / "study" / ".stages" / "dl_ff_resnet18.done").exists()
    fake_image_stages["kill"] = None
    fake_image_stages["calls"].clear()
    run_study(**kw)
    assert fake_image_stages["calls"] == ["ff_resnet18"]     # finished work is not redone
    assert snapshot(tmp_path / "study") == clean

    fake_image_stages["calls"].clear()
    run_study(**kw)                                             # nothing left to do
    assert fake_image_stages["calls"] == []
    fusion_marker = (tmp_path / "study" / ".stages" / "fusion.done").read_text(encoding="utf-8")
    page = run_study(**kw, paper_selection=True).read_text(encoding="utf-8")    # reporting option: fusion is not redone
    assert (tmp_path / "study" / ".stages" / "fusion.done").read_text(encoding="utf-8") == fusion_marker
    assert "Paper's practice (optimistic)" in page and fake_image_stages["calls"] == []


def test_profiles_paper_by_default_demo_for_synthetic():
    paper = resolve_config()
    assert paper["profile"] == "paper"
    assert (paper["dl"]["spatial_size"], paper["dl"]["epochs"], paper["radiomics"]["params"]) == (256, 100, "paper")
    demo = resolve_config(profile="demo", epochs=3)
    assert demo["dl"]["spatial_size"] == 32 and demo["radiomics"]["params"] == "demo"
    assert demo["dl"]["epochs"] == 3                      # CLI flags beat the profile
    with pytest.raises(P53hccError, match="unknown profile"):
        resolve_config(profile="fastest")


# ------------------------------------------------------------------ nothing lost silently (issue 17)
def _fake_cohort(root: Path, n: int = 60, seed: int = 3) -> Path:
    """A fake-image cohort (with truth.csv) written by hand, as a user's own cohort.csv."""
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    cohort, truth = sample_patients(n, seed=seed)
    for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
        cohort[col] = "x.nii.gz"
    root.mkdir(parents=True)
    cohort.to_csv(root / "cohort.csv", index=False)
    truth.to_csv(root / "truth.csv", index=False)
    return root / "cohort.csv"


def test_a_one_class_validation_split_is_reported_not_dropped(tmp_path, fake_image_stages):
    """statistics used to skip a split with one class: the validation cohort vanished from metrics and Table 5."""
    from p53hcc.tools.pipeline.study import run_study

    csv = _fake_cohort(tmp_path / "c")
    df = pd.read_csv(csv, dtype={"patient_id": str})
    df.loc[df["split"] == "validation", "p53"] = 1
    df.to_csv(csv, index=False)
    page = run_study(csv, out=tmp_path / "study", nets="resnet18", folds=3, epochs=1, profile="demo").read_text(
        encoding="utf-8")
    m = pd.read_csv(tmp_path / "study" / "metrics.csv")
    val = m[m["split"] == "validation"].set_index(["model", "metric"])["estimate"]
    n_val = int((df["split"] == "validation").sum())
    excluded = json.loads((tmp_path / "study" / "selection.json").read_text(encoding="utf-8"))["excluded"]
    models = [m for m in ("clinical", "radiomics", "combined", "mc_resnet18") if m not in excluded]
    assert "combined" in models and "mc_resnet18" in models  # degenerate ones are NaN throughout, tested elsewhere
    for model in models:
        assert np.isnan(val[(model, "auc")]) and np.isnan(val[(model, "specificity")])
        assert val[(model, "n")] == n_val == val[(model, "n_events")] and 0 <= val[(model, "sensitivity")] <= 1, (
            model, m[(m.model == model) & (m.split == "validation")].to_dict("records")[:2])
    assert f"not computable: one class ({n_val} of {n_val} P53-positive)" in page
    table5 = pd.read_csv(tmp_path / "study" / "tables" / "table5.csv")
    assert set(table5["Cohort"]) == {"TC", "VC"}


@pytest.mark.parametrize("policy", ["fail", "record"])
def test_a_patient_a_stage_cannot_process_is_named(tmp_path, fake_image_stages, policy):
    """Radiomics failures were one log line; the study then failed with an unrelated message (fail) - or, now,
    the patient is left out of the folds and every model and named in dropped.csv and the report (record)."""
    from p53hcc.tools.pipeline.study import run_study

    csv = _fake_cohort(tmp_path / "c")
    pid = pd.read_csv(csv, dtype={"patient_id": str}).query("split == 'train'")["patient_id"].iloc[0]
    fake_image_stages["drop"] = pid
    kw = {"out": tmp_path / "study", "nets": "resnet18", "folds": 3, "epochs": 1, "profile": "demo",
          "on_failure": policy}
    if policy == "fail":
        with pytest.raises(P53hccError, match=rf"radiomics failed for 1 of .*\n  patient {pid} phase dp: extraction"):
            run_study(csv, **kw)
        assert not (tmp_path / "study" / "splits.json").exists()
    else:
        page = run_study(csv, **kw).read_text(encoding="utf-8")
        splits = json.loads((tmp_path / "study" / "splits.json").read_text(encoding="utf-8"))
        assert pid not in splits["fold_of"]
        assert pid not in set(pd.read_parquet(tmp_path / "study" / "scores.parquet")["patient_id"])
        assert "1 patient(s) left out of every model and table" in page and pid in page
    dropped = pd.read_csv(tmp_path / "study" / "dropped.csv", dtype={"patient_id": str})
    assert dropped[["patient_id", "stage", "phase"]].values.tolist() == [[pid, "radiomics", "dp"]]
