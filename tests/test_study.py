"""Study orchestration: stage caching/resume, configuration merging, and the honest DL model choice."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_json
from p53hcc.tools.pipeline.choice import choose_dl_model, select_dl_model, write_paper_selection
from p53hcc.tools.pipeline.config import resolve_config
from p53hcc.tools.pipeline.stages import Stage, read_marker, run_stages
from p53hcc.tools.pipeline.study import build_stages
from tests.conftest import Killed


def _pipeline(calls: list, params_b: dict | None = None, fail_b: bool = False, sleep_mark: list | None = None):
    """a -> b -> c, plus d depending on a only; each writes a file from its input so outputs chain."""
    def a(ctx):
        calls.append("a")
        (ctx.study_dir / "a.txt").write_text("A")

    def b(ctx):
        calls.append("b")
        (ctx.study_dir / "b.part").write_text("half")  # a partial output, then a crash
        if fail_b:
            raise RuntimeError("killed mid-way")
        (ctx.study_dir / "b.txt").write_text((ctx.study_dir / "a.txt").read_text(encoding="utf-8") + str(ctx.params["x"]))

    def c(ctx):
        calls.append("c")
        (ctx.study_dir / "c.txt").write_text((ctx.study_dir / "b.txt").read_text(encoding="utf-8") + "C")

    def d(ctx):
        calls.append("d")

    return [Stage("a", a), Stage("b", b, params=params_b or {"x": 1}, deps=["a"]),
            Stage("c", c, deps=["b"]), Stage("d", d, deps=["a"])]


def test_second_run_executes_nothing(tmp_path):
    calls: list = []
    first = run_stages(_pipeline(calls), tmp_path)
    assert calls == ["a", "b", "c", "d"] and all(r.status == "ran" for r in first)
    calls.clear()
    second = run_stages(_pipeline(calls), tmp_path)
    assert calls == [] and all(r.status == "cached" for r in second)
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "A1C"


def test_param_change_reruns_only_that_stage_and_dependants(tmp_path):
    calls: list = []
    run_stages(_pipeline(calls), tmp_path)
    calls.clear()
    run_stages(_pipeline(calls, params_b={"x": 2}), tmp_path)
    assert calls == ["b", "c"]  # a and d (not downstream of b) stay cached
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "A2C"
    assert read_marker(tmp_path, "b")["params"] == {"x": 2}


def test_killed_stage_leaves_no_marker_and_reruns(tmp_path):
    calls: list = []
    with pytest.raises(RuntimeError):
        run_stages(_pipeline(calls, fail_b=True), tmp_path)
    assert read_marker(tmp_path, "a") is not None and read_marker(tmp_path, "b") is None
    assert read_marker(tmp_path, "c") is None
    calls.clear()
    run_stages(_pipeline(calls), tmp_path)
    assert calls == ["b", "c", "d"]
    # identical outputs to an uninterrupted run
    fresh = tmp_path / "fresh"
    run_stages(_pipeline([]), fresh)
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == (fresh / "c.txt").read_text(encoding="utf-8")


def test_deleted_output_reruns_that_stage(tmp_path):
    calls: list = []

    def make():
        return [Stage("w", lambda ctx: (calls.append("w"), (ctx.study_dir / "w.txt").write_text("w")),
                      outputs=["w.txt"])]
    run_stages(make(), tmp_path)
    run_stages(make(), tmp_path)
    (tmp_path / "w.txt").unlink()
    run_stages(make(), tmp_path)
    assert calls == ["w", "w"] and (tmp_path / "w.txt").exists()


def test_changed_input_file_reruns(tmp_path):
    src = tmp_path / "cohort.csv"
    src.write_text("v1")
    calls: list = []

    def make():
        return [Stage("v", lambda ctx: calls.append("v"), inputs=[src])]
    run_stages(make(), tmp_path / "s")
    run_stages(make(), tmp_path / "s")
    src.write_text("v2")
    run_stages(make(), tmp_path / "s")
    assert calls == ["v", "v"]


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


def test_pipeline_keys_ignore_runtime_knobs():
    """Workers / device do not invalidate finished work; epochs invalidates the DL stages only."""
    def keys(**kw):
        from p53hcc.tools.pipeline.stages import stage_key
        out, upstream = {}, {}
        for s in build_stages(resolve_config(nets="resnet18", **kw), cohort_given=True):
            upstream[s.name] = out[s.name] = stage_key(s, upstream)
        return out
    base = keys()
    assert keys(device="cuda", **{"preprocess.workers": 8}) == base
    changed = {k for k, v in keys(epochs=9).items() if v != base[k]}
    assert changed == {"dl_mc_resnet18", "dl_ff_resnet18", "fusion", "statistics", "gradcam", "figures",
                       "report", "model"}


def _aucs(rows):
    return pd.DataFrame(rows, columns=["model", "split", "auc", "n"])


def test_choice_uses_training_oof_not_validation():
    aucs = _aucs([("mc_resnet18", "train", 0.70, 50), ("mc_resnet18", "validation", 0.80, 20),
                  ("mc_resnet34", "train", 0.75, 50), ("mc_resnet34", "validation", 0.60, 20),
                  ("ff_resnet18", "train", 0.72, 50), ("ff_resnet18", "validation", 0.90, 20)])
    honest = choose_dl_model(aucs, ["mc", "ff"], ["resnet18", "resnet34"], "train")
    assert honest["best_per_arm"]["mc"]["net"] == "resnet34"
    assert honest["chosen"]["model"] == "mc_resnet34"
    paper = choose_dl_model(aucs, ["mc", "ff"], ["resnet18", "resnet34"], "validation")
    assert paper["chosen"]["model"] == "ff_resnet18"


def test_choice_ties_go_to_simpler_net_then_mc():
    aucs = _aucs([("mc_resnet18", "train", 0.7, 9), ("mc_resnet34", "train", 0.7, 9), ("ff_resnet18", "train", 0.7, 9)])
    assert choose_dl_model(aucs, ["mc", "ff"], ["resnet18", "resnet34"])["chosen"]["model"] == "mc_resnet18"


def test_write_selection_from_scores(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"P{i:03d}" for i in range(60)]
    y = pd.Series(rng.integers(0, 2, 60), index=ids)
    split = np.where(np.arange(60) < 40, "train", "validation")
    good = y.to_numpy() + rng.normal(0, 0.5, 60)
    noise = rng.normal(0, 1, 60)
    scores = pd.concat([pd.DataFrame({"patient_id": ids, "model": m, "fold": 0, "split": split, "score": s})
                        for m, s in (("mc_resnet18", noise), ("ff_resnet18", good))])
    sel = select_dl_model(scores, y, ["mc", "ff"], ["resnet18"])
    atomic_write_json(tmp_path / "selection.json", sel)
    assert sel["chosen"]["model"] == "ff_resnet18"
    assert "validation cohort is not used" in json.loads((tmp_path / "selection.json").read_text(encoding="utf-8"))["rule"]
    write_paper_selection(tmp_path, scores, y, ["mc", "ff"], ["resnet18"], enabled=True)
    assert "optimistic" in json.loads((tmp_path / "selection_paper.json").read_text(encoding="utf-8"))["rule"]
    write_paper_selection(tmp_path, scores, y, ["mc", "ff"], ["resnet18"], enabled=False)
    assert not (tmp_path / "selection_paper.json").exists()


# ------------------------------------------------------------------ fusion -> statistics -> frozen model -> predict
@pytest.fixture(scope="module")
def fused_study(tmp_path_factory):
    """A study folder up to the DL stages made from cheap fakes (radiomics with signal, DL scores from the truth),
    then the real fusion, statistics and freeze stages."""
    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    root = tmp_path_factory.mktemp("fused")
    cohort, truth = sample_patients(90, seed=5)
    for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
        cohort[col] = "x.nii.gz"
    csv = root / "cohort" / "cohort.csv"
    csv.parent.mkdir()
    cohort.to_csv(csv, index=False)
    truth.to_csv(csv.parent / "truth.csv", index=False)
    write_datalist(csv, root, folds=3, seed=0)
    splits = json.loads((root / "splits.json").read_text(encoding="utf-8"))
    rng = np.random.default_rng(2)
    ids, logit = truth["patient_id"].to_numpy(), truth["bayes_logit"].to_numpy()
    rad = pd.DataFrame(rng.normal(size=(len(ids), 12)), columns=[f"ap_original_firstorder_F{i}" for i in range(12)])
    rad.iloc[:, 0] += 0.8 * logit
    rad.insert(0, "patient_id", ids)
    rad.to_parquet(root / "radiomics.parquet", index=False)
    fold_of = splits["fold_of"]
    split = cohort.set_index("patient_id")["split"]
    for arm, noise in (("mc", 8.0), ("ff", 0.5)):
        s = 1 / (1 + np.exp(-(logit + rng.normal(0, noise, len(ids)))))
        d = root / "dl" / arm / "resnet18"
        d.mkdir(parents=True)
        pd.DataFrame({"patient_id": ids, "model": f"{arm}_resnet18", "fold": [fold_of.get(p, -1) for p in ids],
                      "split": split.loc[ids].to_numpy(), "score": s}).to_parquet(d / "scores.parquet")
        (d / "full").mkdir()
        (d / "full" / "model.pt").write_bytes(b"weights")
    cfg = resolve_config(nets="resnet18", folds=3)
    cfg.update(cohort=str(csv), cohort_generated=True)
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))
    from p53hcc.tools.pipeline.fit import run_fusion
    from p53hcc.tools.pipeline.freeze import freeze_model
    from p53hcc.tools.pipeline.statistics import run_statistics

    run_fusion(root, csv, cfg)
    run_statistics(root, csv, cfg)
    freeze_model(root)
    return root, cohort, rad


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


def test_frozen_model_reproduces_study_scores(fused_study):
    """The frozen model applied to the validation patients gives exactly the study's validation scores."""
    from p53hcc.tools.pipeline.freeze import load_model
    from p53hcc.tools.pipeline.predict import score_patients

    root, cohort, rad = fused_study
    bundle = load_model(root / "model")
    assert bundle["manifest"]["dl"]["model"] == "ff_resnet18"
    assert (root / "model" / "dl" / "ff" / "resnet18" / "full" / "model.pt").exists()
    s = pd.read_parquet(root / "scores.parquet")
    val = cohort[cohort.split == "validation"]
    dl = s[(s.model == "ff_resnet18")].set_index("patient_id")["score"]
    pred = score_patients(bundle, val, rad, dl).set_index("patient_id")
    study = s[(s.model == "combined") & (s.split == "validation")].set_index("patient_id")["score"]
    np.testing.assert_allclose(pred.loc[study.index, "probability"], study, rtol=1e-10)
    thr = bundle["manifest"]["threshold"]
    assert (pred["predicted_class"] == (pred["probability"] >= thr)).all()
    # nomogram: total points map back to the same probability
    from p53hcc.fusion.models.nomogram import Nomogram
    spec = bundle["manifest"]["nomogram"]
    nomo = Nomogram(coefs=spec["coefs"], intercept=spec["intercept"], ranges=spec["ranges"], scale=spec["scale"],
                    refs=spec["refs"])
    np.testing.assert_allclose(nomo.total_to_probability(pred["total_points"]), pred["probability"], rtol=1e-8)


def test_evaluation_metrics(fused_study, tmp_path):
    from sklearn.metrics import roc_auc_score

    from p53hcc.fusion.report.evaluation_page import write_evaluation_report
    from p53hcc.tools.pipeline.freeze import load_model
    from p53hcc.tools.pipeline.predict import evaluation_metrics, score_patients

    root, cohort, rad = fused_study
    bundle = load_model(root / "model")
    s = pd.read_parquet(root / "scores.parquet")
    val = cohort[cohort.split == "validation"]
    pred = score_patients(bundle, val, rad, s[s.model == "ff_resnet18"].set_index("patient_id")["score"])
    y = val.set_index("patient_id")["p53"]
    m, nb = evaluation_metrics(pred, y, bundle["manifest"]["threshold"])
    auc = m[(m.model == "combined") & (m.metric == "auc")].iloc[0]
    assert auc.estimate == pytest.approx(roc_auc_score(y.loc[pred.patient_id], pred.probability))
    assert {"calibration_intercept", "calibration_slope"} <= set(m.metric)
    assert set(nb["model"]) >= {"combined", "all", "none"}
    study_metrics = pd.read_csv(root / "model" / "study_metrics.csv")
    page = write_evaluation_report(tmp_path / "report.html", m, study_metrics, "ff_resnet18", root / "model").read_text(encoding="utf-8")
    assert "AUC validation" in page and "AUC external" in page


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


# ------------------------------------------------------------------ run_study end to end with fake image stages
def _snapshot(root) -> dict:
    """Content hashes of every output (markers hold timings, so they are compared by key only; the log is a
    record of the runs, not an output)."""
    from p53hcc.tools.io import file_sha256

    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "study.log":
            rel = p.relative_to(root).as_posix()
            out[rel] = json.loads(p.read_text(encoding="utf-8"))["key"] if rel.startswith(".stages/") else file_sha256(p)
    return out


def test_run_study_kill_and_resume_gives_identical_outputs(tmp_path, fake_image_stages):
    from p53hcc.tools.pipeline.study import run_study

    kw = dict(out=tmp_path / "study", nets="resnet18", folds=3, epochs=1, **{"synth.n": 70})
    report = run_study(**kw)
    assert report.exists() and (tmp_path / "study" / "model" / "manifest.json").exists()
    page = report.read_text(encoding="utf-8")
    assert page.count("Not available") == 0, "every section should be filled by the fake study"
    clean = _snapshot(tmp_path / "study")

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
    assert _snapshot(tmp_path / "study") == clean

    fake_image_stages["calls"].clear()
    run_study(**kw)                                             # nothing left to do
    assert fake_image_stages["calls"] == []
    fusion_marker = (tmp_path / "study" / ".stages" / "fusion.done").read_text(encoding="utf-8")
    page = run_study(**kw, paper_selection=True).read_text(encoding="utf-8")    # reporting option: fusion is not redone
    assert (tmp_path / "study" / ".stages" / "fusion.done").read_text(encoding="utf-8") == fusion_marker
    assert "Paper's practice (optimistic)" in page and fake_image_stages["calls"] == []


def test_predict_and_evaluate_cohort_glue(fused_study, tmp_path, monkeypatch):
    """predict_cohort / evaluate_cohort on the study's validation patients, written as a new cohort file: image
    stages faked, everything else real; probabilities equal the study's."""
    from p53hcc.tools.pipeline import predict
    from p53hcc.tools.pipeline.predict import evaluate_cohort, predict_cohort

    root, cohort, rad = fused_study
    new = cohort[cohort.split == "validation"].assign(split="external")
    csv = tmp_path / "new" / "cohort.csv"
    csv.parent.mkdir()
    new.to_csv(csv, index=False)
    s = pd.read_parquet(root / "scores.parquet")
    dl = s[s.model == "ff_resnet18"].set_index("patient_id")["score"]
    monkeypatch.setattr(predict, "cohort_problems", lambda path, *a, **kw: [])
    monkeypatch.setattr(predict, "extract_cohort", lambda cohort_csv, out, params=None, **kw: rad)
    monkeypatch.setattr(predict, "preprocess_cohort", lambda *a, **k: None)
    pred = pd.read_csv(predict_cohort(root / "model", csv, tmp_path / "pred", dl_scorer=lambda *a: dl, gradcam=False),
                       dtype={"patient_id": str}).set_index("patient_id")
    study = s[(s.model == "combined") & (s.split == "validation")].set_index("patient_id")["score"]
    np.testing.assert_allclose(pred.loc[study.index, "probability"], study, rtol=1e-10)
    assert {"predicted_class", "points_clinical", "points_radiomics", "points_dl", "total_points"} <= set(pred.columns)
    metrics = pd.read_csv(evaluate_cohort(root / "model", csv, tmp_path / "eval", dl_scorer=lambda *a: dl))
    assert {"auc", "calibration_intercept", "calibration_slope"} <= set(metrics.metric)
    assert (tmp_path / "eval" / "report.html").exists() and (tmp_path / "eval" / "net_benefit.csv").exists()


def test_predict_names_every_missing_clinical_column_before_any_work(fused_study, tmp_path, monkeypatch):
    """All missing clinical columns in one message, before preprocessing (not the first one after minutes)."""
    from p53hcc.fusion.models.clinical import RAW_COLUMNS
    from p53hcc.tools.pipeline import predict

    root, cohort, _ = fused_study
    csv = tmp_path / "new" / "cohort.csv"
    csv.parent.mkdir()
    cohort[cohort.split == "validation"].drop(columns=list(RAW_COLUMNS)).to_csv(csv, index=False)
    monkeypatch.setattr("p53hcc.tools.pipeline.checks.validate_cohort", lambda path, **kw: [])  # no image files
    calls = []
    monkeypatch.setattr(predict, "preprocess_cohort", lambda *a, **k: calls.append("preprocess"))
    with pytest.raises(P53hccError) as err:
        predict.predict_cohort(root / "model", csv, tmp_path / "pred", dl_scorer=lambda *a: None, gradcam=False)
    assert calls == [] and f"column {', '.join(RAW_COLUMNS)}: {len(RAW_COLUMNS)} clinical column(s)" in str(err.value)


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


def test_a_constant_combined_model_freezes_and_predicts_without_inventing_numbers(fused_study, tmp_path):
    """Every combined weight 0 (no component carried signal on the training cohort): the frozen model has no
    nomogram and no threshold, says why, and predictions carry the constant probability with no class."""
    import shutil

    import joblib

    from p53hcc.tools.pipeline.freeze import freeze_model, load_model
    from p53hcc.tools.pipeline.predict import score_patients

    root, cohort, rad = fused_study
    copy = tmp_path / "flat"
    shutil.copytree(root, copy)
    combined = joblib.load(copy / "fusion" / "combined.joblib")
    combined.coef_ = np.zeros_like(combined.coef_)
    combined.coefficients_ = {k: 0.0 for k in combined.coefficients_}
    joblib.dump(combined, copy / "fusion" / "combined.joblib")
    m = pd.read_csv(copy / "metrics.csv")
    m.loc[(m.model == "combined") & (m.metric == "threshold"), "estimate"] = np.nan
    m.to_csv(copy / "metrics.csv", index=False)
    manifest = load_model(freeze_model(copy))["manifest"]
    assert manifest["nomogram"] is None and manifest["threshold"] is None
    assert "weight 0" in manifest["nomogram_note"]
    s = pd.read_parquet(copy / "scores.parquet")
    val = cohort[cohort.split == "validation"]
    pred = score_patients(load_model(copy / "model"), val, rad, s[s.model == "ff_resnet18"].set_index("patient_id")["score"])
    assert pred["probability"].nunique() == 1 and pred["predicted_class"].isna().all()
    assert not any(c.startswith("points_") or c == "total_points" for c in pred.columns)
