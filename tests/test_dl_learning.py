"""benchmarks/dl_learning.py (+ its report): the numbers are the reference statistics on the same patients, the
null check and the learning curves are what the histories say, --device cuda without a GPU exits 0, and (slow)
the whole benchmark runs end to end on a small synthetic cohort."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from tests.conftest import TinyNet

REPO = Path(__file__).resolve().parents[1]
ARMS = ("mc_resnet18", "ff_resnet18")


@pytest.fixture
def bench():
    sys.path.insert(0, str(REPO))
    import benchmarks.dl_learning as dl
    import benchmarks.dl_learning_report as rep

    return dl, rep


def _study(root: Path, seed: int, signal: float) -> tuple[Path, Path]:
    """A study folder as the benchmark leaves it: cohort + truth, folds, scores of every model, fold histories."""
    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.cohort.synth.cohort import sample_patients

    cohort, truth = sample_patients(200, seed=seed)
    for col in ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask"):
        cohort[col] = f"images/x_{col}.nii.gz"
    (root / "cohort").mkdir(parents=True)
    csv = root / "cohort" / "cohort.csv"
    cohort.to_csv(csv, index=False)
    truth.to_csv(root / "cohort" / "truth.csv", index=False)
    study = root / "study"
    study.mkdir()
    write_datalist(csv, study, folds=5, seed=0)
    splits = json.loads((study / "splits.json").read_text())
    fold_of = {p: int(k) for p, k in splits["fold_of"].items()}
    rng = np.random.default_rng(seed)
    t = truth.set_index("patient_id")
    rows = []
    for model, term in (("clinical", "llr_semantic"), ("radiomics", "llr_latent"), ("mc_resnet18", "llr_latent"),
                        ("ff_resnet18", "llr_semantic")):
        s = 1 / (1 + np.exp(-(signal * t[term] + rng.normal(0, 1, len(t)))))
        rows.append(pd.DataFrame({"patient_id": t.index, "model": model, "fold": [fold_of.get(p, -1) for p in t.index],
                                  "split": cohort.set_index("patient_id").loc[t.index, "split"].to_numpy(),
                                  "score": s.to_numpy()}))
    pd.concat(rows, ignore_index=True).to_parquet(study / "scores.parquet", index=False)
    for arm, units in (("mc", [""]), ("ff", ["ap", "pvp", "dp"])):
        for k in range(5):
            for unit in units:
                d = study / "dl" / arm / "resnet18" / f"fold{k}" / unit
                d.mkdir(parents=True, exist_ok=True)
                pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.6 - k / 100], "val_auc": [0.5, 0.6 + k / 100]}
                             ).to_csv(d / "history.csv", index=False)
    return csv, study


def test_analysis_compares_on_the_same_patients(bench, tmp_path):
    _, rep = bench
    real = _study(tmp_path / "real", seed=1, signal=1.5)
    null = _study(tmp_path / "null", seed=2, signal=0.0)
    (null[0].parent / "truth.csv").unlink()
    record = rep.analyse({"real": real, "null": null}, {"nets": ["resnet18"], "arms": ["mc", "ff"]})
    csv, study = real
    y = pd.read_csv(csv).set_index("patient_id")["p53"]
    truth = pd.read_csv(csv.parent / "truth.csv").set_index("patient_id")
    scores = pd.read_parquet(study / "scores.parquet")
    va = scores[(scores.split == "validation") & (scores.model == "mc_resnet18")].set_index("patient_id")
    mc = record["arms"]["mc_resnet18"]
    assert mc["validation"]["auc"] == pytest.approx(roc_auc_score(y.loc[va.index], va.score))
    assert mc["validation"]["ci_low"] < mc["validation"]["auc"] < mc["validation"]["ci_high"]
    ref = mc["references"]
    assert ref["image_ceiling"]["validation"]["auc"] == pytest.approx(
        roc_auc_score(y.loc[va.index], truth.loc[va.index, "image_bayes_prob"]))
    assert ref["latent_only"]["validation"]["auc"] == pytest.approx(
        roc_auc_score(y.loc[va.index], truth.loc[va.index, "latent_bayes_prob"]))
    # the size-blind ceiling ranks by findings + latent: the image posterior without the LTD term
    from p53hcc.tools.cohort.synth.cohort import log_likelihood_ratios

    size = log_likelihood_ratios(pd.read_csv(csv).set_index("patient_id").loc[va.index].reset_index())["ltd_mm"]
    blind = truth.loc[va.index, "llr_semantic"] + truth.loc[va.index, "llr_latent"] - size.to_numpy()
    assert ref["image_ceiling_size_blind"]["validation"]["auc"] == pytest.approx(roc_auc_score(y.loc[va.index], blind))
    rho = spearmanr(va.score, truth.loc[va.index, "llr_latent"]).statistic
    assert mc["spearman"]["llr_latent"]["validation"]["rho"] == pytest.approx(rho)
    assert rho > 0.3  # the emulated MC arm is built on llr_latent
    tr = scores[(scores.split == "train") & (scores.model == "mc_resnet18")]
    folds = [roc_auc_score(y.loc[g.patient_id], g.score) for _, g in tr.groupby("fold")]
    assert mc["train_oof"]["auc"] == pytest.approx(np.mean(folds))  # fold mean (Nadeau-Bengio CI)
    cp = mc["clinical_plus_arm"]
    assert cp["clinical_vs_clinical_plus_validation"]["auc_a"] == pytest.approx(cp["clinical"]["validation"]["auc"])
    assert cp["validation"]["auc"] > cp["clinical"]["validation"]["auc"]  # the arm carries what clinical lacks
    assert [c["epoch"] for c in mc["learning_curve"]] == [1, 2]
    assert mc["learning_curve"][1]["val_auc"] == pytest.approx(0.62)  # mean over the five folds
    assert record["null"]["mc_resnet18"]["ci_covers_half"] == (
        record["null"]["mc_resnet18"]["validation"]["ci_low"] <= 0.5 <= record["null"]["mc_resnet18"]["validation"]["ci_high"]
        and record["null"]["mc_resnet18"]["train_oof"]["ci_low"] <= 0.5 <= record["null"]["mc_resnet18"]["train_oof"]["ci_high"])
    assert set(record["checks"]["arm_learns"]) == set(ARMS)
    record["config"] = {"spatial_size": 64, "epochs": 2}
    png = rep.draw_figure(record, tmp_path / "fig.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cuda_without_gpu_says_so_and_exits_0(tmp_path):
    code = (f"import sys, torch; torch.cuda.is_available = lambda: False; sys.path.insert(0, {str(REPO)!r}); "
            "import benchmarks.dl_learning as d; sys.argv = ['x', '--device', 'cuda', '--profile', 'paper', "
            f"'--results', {str(tmp_path)!r}]; d.main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "no GPU is available" in out.stdout
    assert not list(tmp_path.iterdir())  # no dl_learning_gpu.json


@pytest.mark.slow
def test_whole_benchmark_on_a_small_cohort(bench, tmp_path, monkeypatch):
    """The real chain (synthetic cohort, preprocessing, radiomics, both arms, null cohort, fusion, statistics) on
    40 patients with a tiny CNN; resumable: a second run trains nothing."""
    dl, _ = bench
    tiny = lambda name, in_channels=3, *a, **k: TinyNet(in_channels, width=6, stride=2)
    monkeypatch.setattr("p53hcc.tools.dl.engine.build_net", tiny)
    monkeypatch.setitem(dl.PROFILES["cpu"], "preprocess", "demo")
    args = ["--n", "40", "--epochs", "2", "--null-epochs", "1", "--spatial-size", "16", "--work",
            str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    first = json.loads(Path(dl.main([*args, "--part", "real"])).read_text())
    assert "null" not in first and set(first["arms"]) == set(ARMS)
    assert dl.main([*args, "--part", "null"]) is None  # the null cohort alone: trained and fused, no record
    dest = dl.main(args)  # both cohorts done: the whole record
    rec = json.loads(Path(dest).read_text())
    assert rec["arms"]["mc_resnet18"]["validation"] == first["arms"]["mc_resnet18"]["validation"]
    assert len(rec["null"]["mc_resnet18"]["learning_curve"]) == 1  # --null-epochs
    assert set(rec["seconds"]["train"]) == set(rec["seconds"]["train_null"]) == set(ARMS)
    assert rec["cohort"]["n"] == 40 and set(rec["arms"]) == set(ARMS)
    assert set(rec["null"]) == {*ARMS, "radiomics", "clinical"}
    for arm in ARMS:
        assert len(rec["arms"][arm]["learning_curve"]) == 2 and "val_auc" in rec["arms"][arm]["learning_curve"][0]
        assert 0 <= rec["arms"][arm]["validation"]["auc"] <= 1
    assert rec["machine_load"]["samples"] >= 1 and rec["config"]["spatial_size"] == 16
    assert (tmp_path / "r" / "dl_learning_cpu.png").is_file()
    study = tmp_path / "w" / "study"
    assert not list(study.rglob("model.pt"))  # weights deleted once each arm is scored
    done = {p: p.stat().st_mtime_ns for p in [*study.rglob("done.json"), study / "fused.json"]}
    dl.main(args)  # resumed: every network is done, nothing retrained, the fusion stages not run again
    assert {p: p.stat().st_mtime_ns for p in [*study.rglob("done.json"), study / "fused.json"]} == done
    # training variants on the held-out folds of the same study: the validation cohort is never scored
    import benchmarks.dl_tuning as tune

    monkeypatch.setattr(tune, "BASE", {**tune.BASE, "spatial_size": 16, "epochs": 2})
    out = tune.main(["--variants", "default", "--folds", "0,1", "--work", str(tmp_path / "w"),
                     "--results", str(tmp_path / "r")])
    var = json.loads(Path(out).read_text())["variants"]["default"]
    splits = json.loads((study / "splits.json").read_text())
    held = [p for p, k in splits["fold_of"].items() if k in (0, 1)]
    assert var["n_held_out"] == len(held) and len(var["curve"]) == 2 and var["folds"] == [0, 1]
    assert 0 <= var["pooled_auc"]["auc"] <= 1
