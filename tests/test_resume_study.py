"""The real study, interrupted inside each stage in turn (preprocessing, radiomics and DL training mid-way, every
later stage after its outputs), resumed with other worker and thread counts: the same metrics, scores, DL choice,
features and preprocessed volumes as an uninterrupted run. (Four interruptions used to change 29 of 150
metrics.csv rows: preprocessing followed the thread count of whichever process ran it.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from p53hcc.tools.io import file_sha256
from tests.conftest import Killed, make_tiny_cohort

pytestmark = pytest.mark.slow  # a real study twice (~3 min on 2 cores)

# 2 folds: no pair networks; margin, pixdim, optimizer and epochs differ from both profiles' values, so the report
# and study.yaml must say what ran, not a default
STUDY = dict(profile="demo", nets="resnet18", folds=2, epochs=1, spatial_size=32, batch_size=4, margin=6, pixdim=1.5,
             **{"dl.arms": "mc", "gradcam.n": 2, "fusion.nesting": "apparent",
                "dl.optimizer": {"_target_": "torch.optim.SGD", "momentum": 0.9}})
COMPARED = ("metrics.csv", "scores.parquet", "selection.json", "radiomics.parquet", "dl/mc/resnet18/scores.parquet")


def _results(study: Path) -> dict[str, str]:
    files = {name: file_sha256(study / name) for name in COMPARED}
    files.update({str(p.relative_to(study)): file_sha256(p) for p in (study / "preprocessed").rglob("*.nii.gz")})
    return files


def _reports_what_ran(study: Path) -> None:
    """study.yaml and the report's methods state the margin, spacing, optimizer, loss and epochs that ran."""
    import json

    import yaml

    dl = yaml.safe_load((study / "study.yaml").read_text(encoding="utf-8"))["dl"]
    assert (dl["margin"], dl["pixdim"], dl["epochs"]) == (6, 1.5, 1)
    assert dl["optimizer"]["_target_"] == "torch.optim.SGD" and dl["optimizer"]["momentum"] == 0.9
    recipe = json.loads((study / "dl" / "mc" / "resnet18" / "full" / "recipe.json").read_text(encoding="utf-8"))
    assert recipe["optimizer"] == "torch.optim.sgd.SGD" and recipe["optimizer_settings"]["momentum"] == 0.9
    page = (study / "report.html").read_text(encoding="utf-8")
    methods = page.split("Methods actually run</h2>")[1].split("</section>")[0]
    for said in ("bounding box + 6 px", "(at 1.5 mm)", "1 epochs", "<code>torch.optim.sgd.SGD</code>",
                 "momentum 0.9", "<code>torch.nn.modules.loss.CrossEntropyLoss</code>",
                 "N4 bias-field correction (shrink factor 8"):
        assert said in methods, said


def _interrupt_on_call(monkeypatch, target, name: str, calls: int) -> None:
    """Make ``target.name`` raise KeyboardInterrupt on its ``calls``-th call (Ctrl-C in the middle of a stage)."""
    real, seen = getattr(target, name), []

    def wrapped(*args, **kwargs):
        seen.append(1)
        if len(seen) == calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


def test_study_resumed_after_interruptions_in_every_stage_is_identical(tmp_path, monkeypatch):
    import SimpleITK as sitk

    import p53hcc.tools.preprocessing.run as pp
    import p53hcc.tools.radiomics.extract as rad
    from p53hcc.tools.dl import crossfit
    from p53hcc.tools.pipeline import study

    csv = make_tiny_cohort(tmp_path / "cohort", n=28)  # 5 per class in each fold's training part (radiomics LASSO)
    study.run_study(csv, out=tmp_path / "clean", **STUDY, **{"preprocess.workers": 2, "radiomics.workers": 2})
    clean = _results(tmp_path / "clean")
    _reports_what_ran(tmp_path / "clean")

    # the resumed runs: inline, with the main process at 4 ITK / torch threads
    itk, tt = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(4)
    torch.set_num_threads(4)
    inline = dict(out=tmp_path / "resumed", **STUDY, **{"preprocess.workers": 1, "radiomics.workers": 1})
    try:
        for target, name, calls in ((pp, "process_one", 5), (rad, "_run_task", 5), (crossfit, "_train_unit", 2)):
            with monkeypatch.context() as mp:
                _interrupt_on_call(mp, target, name, calls)
                with pytest.raises(KeyboardInterrupt):
                    study.run_study(csv, **inline)
        real_build = study.build_stages
        for stage in ("fusion", "statistics", "gradcam", "figures", "report", "model"):
            def killing_build(*a, stage=stage, **k):
                stages = real_build(*a, **k)
                for s in stages:
                    if s.name == stage:
                        def body(ctx, func=s.func):
                            func(ctx)
                            raise Killed(ctx.stage.name)  # outputs written, marker not
                        s.func = body
                return stages
            with monkeypatch.context() as mp:
                mp.setattr(study, "build_stages", killing_build)
                with pytest.raises(Killed):
                    study.run_study(csv, **inline)
        study.run_study(csv, **inline)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk)
        torch.set_num_threads(tt)
    assert _results(tmp_path / "resumed") == clean
