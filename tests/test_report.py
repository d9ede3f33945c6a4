"""The HTML report from a fake study folder: every section, embedded images, no external URLs, CSV tables,
"not available" boxes for missing pieces; and the statistics stage that feeds it (checked against sklearn)."""
from __future__ import annotations

import json
import re

import matplotlib

matplotlib.use("Agg")
import joblib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from p53hcc.fusion.models.factories import make_combined_model
from p53hcc.fusion.models.oof import scores_wide
from p53hcc.fusion.report.figures import make_figures
from p53hcc.fusion.report.page import SECTIONS, write_report
from p53hcc.tools.io import atomic_write_json
from p53hcc.tools.pipeline.choice import select_dl_model, write_paper_selection
from p53hcc.tools.pipeline.config import resolve_config
from p53hcc.tools.pipeline.statistics import run_statistics

MODELS = ("clinical", "radiomics", "mc_resnet18", "ff_resnet18", "combined")


def _png(path, title):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    ax.plot([0, 1], [0, 1])
    ax.set_title(title)
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture(scope="module")
def fake_study(tmp_path_factory):
    """A study folder with tidy outputs as the stages write them (scores from the true probability + noise)."""
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    root = tmp_path_factory.mktemp("study")
    cohort, truth = sample_patients(80, seed=3)
    cdir = root / "cohort"
    cdir.mkdir()
    for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
        cohort[col] = f"images/x_{col}.nii.gz"
    cohort.to_csv(cdir / "cohort.csv", index=False)
    truth.to_csv(cdir / "truth.csv", index=False)
    cfg = resolve_config(nets="resnet18")
    cfg.update(cohort=str(cdir / "cohort.csv"), cohort_generated=True)
    (root / "study.yaml").write_text(yaml.safe_dump(cfg))

    rng = np.random.default_rng(0)
    logit = truth.set_index("patient_id")["bayes_logit"]
    rows = []
    for k, model in enumerate(MODELS):
        noise = rng.normal(0, 1.0 + 0.5 * k, len(logit))
        s = 1 / (1 + np.exp(-(logit.to_numpy() + noise)))
        rows.append(pd.DataFrame({"patient_id": logit.index, "model": model, "fold": 0,
                                  "split": cohort.set_index("patient_id").loc[logit.index, "split"].to_numpy(),
                                  "score": s}))
    scores = pd.concat(rows, ignore_index=True)
    y = cohort.set_index("patient_id")["p53"]
    dl = scores[scores.model.str.contains("_")]
    sel = select_dl_model(dl, y, ["mc", "ff"], ["resnet18"])
    atomic_write_json(root / "selection.json", sel)
    scores = pd.concat([scores, scores[scores.model == sel["chosen"]["model"]].assign(model="dl")], ignore_index=True)
    scores.to_parquet(root / "scores.parquet", index=False)
    run_statistics(root, cdir / "cohort.csv", cfg)
    write_paper_selection(root, dl, y, ["mc", "ff"], ["resnet18"], enabled=True)
    Xc = scores_wide(scores, {"clinical": "clinical", "radiomics": "radiomics", "dl": sel["chosen"]["model"]})
    (root / "fusion").mkdir()
    Xc.reset_index().to_parquet(root / "fusion" / "combined_inputs.parquet")
    train = cohort.loc[cohort.split == "train", "patient_id"]
    joblib.dump(make_combined_model().fit(Xc.loc[train], y.loc[train]), root / "fusion" / "combined.joblib")
    for arm, units in (("mc", [""]), ("ff", ["ap", "pvp", "dp"])):  # the fold networks' training histories
        for k in range(3):
            for unit in units:
                dest = root / "dl" / arm / "resnet18" / f"fold{k}" / unit
                dest.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.7, 0.6, 0.5 - k / 20],
                              "val_auc": [0.5, 0.6, 0.62 + k / 50]}).to_csv(dest / "history.csv", index=False)
    make_figures(root, cohort.set_index("patient_id")["p53"])
    _png(root / "gradcam" / "ff_resnet18" / "SYN0001.png", "cam")
    pd.DataFrame({"feature": ["ap_original_firstorder_Mean", "dp_glcm_Contrast"], "coefficient": [0.8, -0.3]}
                 ).to_csv(root / "fusion" / "radiomics_lasso.csv", index=False)
    (root / "dl" / "ff" / "resnet18").mkdir(parents=True, exist_ok=True)
    (root / "dl" / "ff" / "resnet18" / "lasso.json").write_text(json.dumps({"n_selected": {"full": 7}}))
    return root, scores, cohort, truth


def test_statistics_match_sklearn_and_truth(fake_study):
    root, scores, cohort, truth = fake_study
    m = pd.read_csv(root / "metrics.csv")
    y = cohort.set_index("patient_id")["p53"]
    g = scores[(scores.model == "combined") & (scores.split == "validation")]
    auc = m[(m.model == "combined") & (m.split == "validation") & (m.metric == "auc")].iloc[0]
    assert auc.estimate == pytest.approx(roc_auc_score(y.loc[g.patient_id], g.score))
    assert auc.ci_low < auc.estimate < auc.ci_high
    ref = m[(m.model == "combined") & (m.split == "validation") & (m.metric == "reference_auc")].iloc[0]
    t = truth.set_index("patient_id").loc[g.patient_id]
    assert ref.estimate == pytest.approx(roc_auc_score(t.p53, t.preop_bayes_prob))  # what the combined model has
    assert "before surgery" in ref.note
    refs = m[m.metric == "reference_auc"].set_index(["model", "split"])
    for model, column in (("clinical", "clinical_bayes_prob"), ("radiomics", "image_bayes_prob"),
                          ("ff_resnet18", "image_bayes_prob"), ("dl", "image_bayes_prob")):
        assert refs.loc[(model, "validation"), "estimate"] == pytest.approx(roc_auc_score(t.p53, t[column]))
    # one threshold per model (from training OOF), the same on every split
    thr = m[(m.model == "combined") & (m.metric == "threshold")]["estimate"]
    assert thr.nunique() == 1
    d = pd.read_csv(root / "delong.csv")
    assert len(d) == 2 * 15 and d.p_value.between(0, 1).all()  # 6 models (with "dl"), 2 cohorts


def test_figures_all_drawn(fake_study):
    root = fake_study[0]
    assert json.loads((root / "figures" / "missing.json").read_text(encoding="utf-8")) == {}
    names = {p.name for p in (root / "figures").glob("*.png")}
    for sp in ("train", "validation"):
        assert {f"roc_{sp}_mc.png", f"roc_{sp}_ff.png", f"roc_{sp}_final.png", f"calibration_{sp}.png",
                f"dca_{sp}.png", f"confusion_{sp}.png"} <= names
    assert {"nomogram.png", "learning_mc.png", "learning_ff.png"} <= names


def test_report_has_every_section_and_is_self_contained(fake_study):
    root = fake_study[0]
    page = write_report(root, fake_study[2]).read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert f">{heading}" in page, heading
    assert page.count("data:image/png;base64,") >= 16
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    for name in ("table1", "table2", "table3", "table4", "table5", "delong", "radiomics_lasso"):
        assert (root / "tables" / f"{name}.csv").exists(), name
    t5 = pd.read_csv(root / "tables" / "table5.csv")
    assert "Population reference AUC (95% CI)" in t5.columns
    assert t5["Model name"].str.startswith("DL model").any()
    t4 = pd.read_csv(root / "tables" / "table4.csv")
    assert (t4["LASSO-retained features"] == 7).all()
    assert "optimistic" in page and "out-of-fold" in page
    assert "Learning curves of MC3_ResNet18" in page and "Learning curves of DL_ResNet18" in page
    assert "stated here as assumptions" in page  # without recipe.json files: said, and the declared recipe named
    assert "the training recipe (recipe.json) not recorded by this run" in page and "torch.optim.AdamW" in page


def test_gradcam_gallery_names_layer_resolution_and_sanity_check(fake_study):
    root = fake_study[0]
    folder = root / "figures" / "gradcam" / "mc_resnet18"
    _png(folder / "SYN0002.png", "cam")
    layer = {"name": "layer1", "cells": [8, 8], "input_size": [32, 32], "chosen_by": "auto"}
    (folder / "gradcam.json").write_text(json.dumps({"arm": "mc", "net": "resnet18", "min_cells": 7,
                                                     "layers": {"mc": layer}}))
    pd.DataFrame({"patient_id": ["SYN0002", "SYN0003"], "spearman_rho": [0.1, 0.7],
                  "differs": [True, False]}).to_csv(folder / "sanity.csv", index=False)
    page = write_report(root, fake_study[2]).read_text(encoding="utf-8")
    assert ("MC ResNet18 (one map from the three-channel network): target layer <code>layer1</code>, 8x8 cells "
            "at 32x32 px input (chosen automatically") in page
    assert "Spearman rho between trained and re-initialised-weight maps median 0.40; 1 of 2 maps differ" in page
    assert "ff_resnet18/SYN0001.png" in page  # a folder without notes still shows its figures
    assert '<div class="warn">' not in page.split("Grad-CAM gallery")[-1].split("LASSO-selected")[0]
    (folder / "gradcam.json").write_text(json.dumps({"arm": "mc", "net": "resnet18", "layers": {
        "mc": {**layer, "name": "layer3", "cells": [2, 2], "chosen_by": "user"}}}))
    page = write_report(root, fake_study[2]).read_text(encoding="utf-8")
    assert "(chosen by the user)" in page and "The 2x2 feature map of layer3 at 32x32 px shows at most" in page


def test_report_of_empty_study_shows_not_available(tmp_path):
    page = write_report(tmp_path).read_text(encoding="utf-8")
    for heading in SECTIONS:
        assert f">{heading}" in page
    assert page.count("Not available:") >= 10
