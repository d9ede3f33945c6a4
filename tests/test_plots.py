"""Figures render with proper labels and without overlapping text; nomogram points reproduce the LR."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from p53hcc.fusion.models.clinical import ClinicalModel, encode_clinical
from p53hcc.fusion.models.factories import make_combined_model
from p53hcc.fusion.models.nomogram import Nomogram
from p53hcc.fusion.report.nomogram_figure import nomogram_figure
from tests.test_clinical import raw_cohort

plots = pytest.importorskip("p53hcc.fusion.report.plots", reason="p53hcc.fusion.report.plots needs p53hcc.fusion.stats")


@pytest.fixture(scope="module")
def scores_long() -> pd.DataFrame:
    r = np.random.default_rng(0)
    n = 120
    y = r.binomial(1, 0.55, n)
    rows = []
    for model, s in (("clinical", 1.2), ("radiomics", 0.4), ("dl", 1.6), ("combined", 2.0)):
        score = 1 / (1 + np.exp(-(s * (y - 0.5) + r.normal(0, 1, n))))
        rows.append(pd.DataFrame({"patient_id": [f"P{i}" for i in range(n)], "model": model, "fold": -1,
                                  "split": np.where(np.arange(n) < 80, "train", "validation"), "score": score,
                                  "label": y}))
    return pd.concat(rows, ignore_index=True)


def texts_overlap(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty text artists whose rendered boxes intersect."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    artists = {id(t): t for t in fig.findobj(Text)}
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in artists.values()
             if t.get_visible() and t.get_text()]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2)
            if ba.overlaps(bb) and ba.width > 0 and bb.width > 0]


def test_roc_figure_labels(scores_long, tmp_path):
    fig = plots.roc_figure(scores_long, "validation", names={"dl": "DL model"})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "1 \u2212 Specificity" and ax.get_ylabel() == "Sensitivity"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_legend().get_title().get_text() == "AUC (95% CI)"
    assert len(legend) == 4 and any(t.startswith("DL model: 0.") for t in legend)
    assert all("(" in t and "\u2013" in t for t in legend)
    assert not texts_overlap(fig)
    path = tmp_path / "roc.png"
    fig.savefig(path, dpi=100)
    assert path.stat().st_size > 0


def test_other_figures_render(scores_long, tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    figs = {
        "cal": plots.calibration_figure(scores_long, "train", models=["clinical", "combined"]),
        "dca": plots.decision_curve_figure(scores_long, "validation"),
        "cm": plots.confusion_figure(scores_long, "validation", {"clinical": 0.5, "combined": 0.45}),
    }
    assert plt.get_fignums() == before  # no pyplot global state
    assert figs["cal"].axes[0].get_xlabel() == "Predicted probability of P53 mutation"
    assert figs["dca"].axes[0].get_ylabel() == "Net benefit"
    dca_labels = [t.get_text() for t in figs["dca"].axes[0].get_legend().get_texts()]
    assert dca_labels[:2] == ["Treat all", "Treat none"]
    cm_counts = sum(int(t.get_text()) for t in figs["cm"].axes[0].texts)
    assert cm_counts == 40  # 40 validation patients in each confusion matrix
    for name, fig in figs.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path, dpi=100)
        assert path.stat().st_size > 0
        assert not texts_overlap(fig), name


def test_nomogram_points_reproduce_clinical_lr():
    df = raw_cohort(300, seed=2)
    model = ClinicalModel().fit(df.drop(columns='p53'), df.p53)
    X = encode_clinical(df)[model.selected_]
    coefs = model.params_.drop("intercept").to_dict()
    ranges = {k: (X[k].min(), X[k].max()) for k in coefs}
    nom = Nomogram.from_logistic(coefs, model.params_["intercept"], ranges)
    pts = nom.points(X)
    assert max(nom.max_points().values()) == pytest.approx(100.0)
    assert (pts.filter(like="points_") >= -1e-9).all().all()
    np.testing.assert_allclose(pts["probability"], model.predict_proba(df)[:, 1], atol=1e-6)
    np.testing.assert_allclose(nom.total_to_probability(pts["total_points"]), model.predict_proba(df)[:, 1],
                               atol=1e-6)
    np.testing.assert_allclose(nom.probability_to_total(pts["probability"]), pts["total_points"], atol=1e-6)


def test_negative_coefficient_gets_zero_points_at_top_of_range():
    nom = Nomogram.from_logistic({"a": 2.0, "b": -0.5}, 0.3, {"a": (0, 1), "b": (0, 10)})
    assert nom.predictor_points("b", 10) == pytest.approx(0.0)
    assert nom.predictor_points("b", 0) == pytest.approx(100.0 * 5 / 5)  # b has the largest effect (5 > 2)
    assert nom.predictor_points("a", 1) == pytest.approx(40.0)
    lp = 0.3 + 2.0 * 1 - 0.5 * 4
    assert nom.total_to_probability(nom.predictor_points("a", 1) + nom.predictor_points("b", 4)) == \
        pytest.approx(1 / (1 + np.exp(-lp)), abs=1e-12)


def test_nomogram_figure_combined_model(tmp_path):
    r = np.random.default_rng(1)
    n = 200
    y = r.binomial(1, 0.5, n)
    W = pd.DataFrame({k: 1 / (1 + np.exp(-(s * (y - 0.5) + r.normal(0, 1, n))))
                      for k, s in (("clinical", 1.5), ("radiomics", 0.6), ("dl", 2.0))})
    model = make_combined_model().fit(W, y)
    nom = model.nomogram(W, labels={"clinical": "Clinical model", "radiomics": "Radiomics model", "dl": "DL model"})
    pts = nom.points(model.logits(W))
    np.testing.assert_allclose(pts["probability"], model.predict_proba(W)[:, 1], atol=1e-6)
    fig = nomogram_figure(nom)
    labels = {t.get_text() for t in fig.axes[0].texts}
    assert {"Points", "Clinical model", "Radiomics model", "DL model", "Total points",
            "Probability of P53 mutation"} <= labels
    assert not texts_overlap(fig)
    path = tmp_path / "nomogram.png"
    fig.savefig(path, dpi=100)
    assert path.stat().st_size > 0


def test_overlap_checker_detects_overlap():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, "overlapping label")
    ax.text(0.52, 0.5, "another label")
    assert texts_overlap(fig)
