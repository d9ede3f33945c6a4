"""The choice of the final DL model (``p53hcc.tools.pipeline.choice``): training out-of-fold AUC, never the
validation cohort; ties to the simpler network, then MC; the paper's practice only as a labelled record."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from p53hcc.tools.io import atomic_write_json
from p53hcc.tools.pipeline.choice import choose_dl_model, select_dl_model, write_paper_selection


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
