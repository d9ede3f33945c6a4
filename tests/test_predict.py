"""The frozen study model applied to new patients (``p53hcc.tools.pipeline.freeze`` and ``.predict``): it
reproduces the study's scores, evaluates a labelled cohort and never invents a number (fixture ``fused_study``)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from p53hcc.tools.errors import P53hccError


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


def test_evaluation_report_shows_predicts_warnings(fused_study, tmp_path, monkeypatch):
    """evaluate's report.html lists the patients predict's checks flagged (not only the console and the CSV), and
    says so when there are none."""
    from p53hcc.fusion.report.evaluation_page import warnings_section
    from p53hcc.tools.pipeline import predict

    root, cohort, rad = fused_study
    new = cohort[cohort.split == "validation"].assign(split="external").reset_index(drop=True)
    new.loc[0, "afp"] = 1e7  # far above the training cohort's range
    csv = tmp_path / "new" / "cohort.csv"
    csv.parent.mkdir()
    new.to_csv(csv, index=False)
    s = pd.read_parquet(root / "scores.parquet")
    monkeypatch.setattr(predict, "cohort_problems", lambda path, *a, **kw: [])
    monkeypatch.setattr(predict, "extract_cohort", lambda cohort_csv, out, params=None, **kw: rad)
    monkeypatch.setattr(predict, "preprocess_cohort", lambda *a, **k: None)
    predict.evaluate_cohort(root / "model", csv, tmp_path / "eval",
                            dl_scorer=lambda *a: s[s.model == "ff_resnet18"].set_index("patient_id")["score"])
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    pred = pd.read_csv(tmp_path / "eval" / "predictions.csv", dtype={"patient_id": str}, keep_default_na=False)
    flagged = pred[pred["warnings"] != ""]
    assert new.loc[0, "patient_id"] in set(flagged["patient_id"])
    section = page[page.index("Warnings of the input checks"):]
    assert f"{len(flagged)} of {len(pred)} patients flagged" in section
    assert section.count("<tr>") == len(flagged) + 1  # header + one row per flagged patient
    assert "afp: 1e+07 is outside the training cohort&#x27;s range" in section
    assert "No warnings" not in page
    clean = warnings_section(pd.DataFrame({"patient_id": ["A", "B"], "probability": [0.2, 0.7], "warnings": ["", None]}))
    assert "No warnings: none of the 2 patients was flagged" in clean and "<table" not in clean


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
