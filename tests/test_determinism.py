"""Reruns, resumes and re-parallelised runs give the same bits; a changed image recomputes what it feeds.

Every cache of the study keys on file contents, so an output that depends on the thread count, the worker count
or where a run was interrupted would silently mix results. These tests run the real image stages on tiny volumes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import p53hcc.tools.preprocessing.run as pp
from p53hcc.tools.io import file_sha256
from tests.conftest import make_tiny_cohort, snapshot

FAST = {"n4": {"n_iterations": [10, 10]}}


def _volumes(study: Path) -> dict[str, str]:
    """sha256 of every preprocessed and N4-cached volume, by path relative to the study."""
    return {str(p.relative_to(study)): file_sha256(p) for p in sorted((study / "preprocessed").rglob("*.nii.gz"))}


@pytest.fixture
def many_threads(monkeypatch):
    """The main process at 4 ITK and 4 torch threads (a bigger machine than CI's): inline work used to follow it."""
    import SimpleITK as sitk

    itk, tt = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(4)
    torch.set_num_threads(4)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk)
    torch.set_num_threads(tt)


def test_preprocessing_bits_do_not_depend_on_workers_threads_or_interruptions(tmp_path, many_threads, monkeypatch):
    """Pool workers (one thread) vs inline at 4 threads, interrupted after two volumes and resumed: same bytes."""
    csv = make_tiny_cohort(tmp_path / "c", n=1, shape=(40, 40, 16))  # 1 mm volumes big enough to run threaded
    pp.preprocess_cohort(csv, tmp_path / "pool", workers=2, params=FAST, progress=False)
    real, done = pp.process_one, []

    def interrupted(task):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(task["phase"])
        return real(task)

    monkeypatch.setattr(pp, "process_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess_cohort(csv, tmp_path / "inline", workers=1, params=FAST, progress=False)
    monkeypatch.setattr(pp, "process_one", real)
    df = pp.preprocess_cohort(csv, tmp_path / "inline", workers=1, params=FAST, progress=False)
    assert df["cached"].sum() == 2                       # the two finished before the interruption are kept
    assert _volumes(tmp_path / "inline") == _volumes(tmp_path / "pool")


def _swap_and_erode(cohort: Path, pid: str) -> None:
    """The fix of a user who had AP and DP swapped and an over-drawn AP mask: swap the files back, erode the mask."""
    from scipy import ndimage

    images = cohort.parent / "images"
    ap, dp = images / f"{pid}_ap.nii.gz", images / f"{pid}_dp.nii.gz"
    tmp = images / "swap.nii.gz"
    ap.rename(tmp)
    dp.rename(ap)
    tmp.rename(dp)
    path = cohort.parent / "masks" / f"{pid}_ap_mask.nii.gz"
    img = nib.load(path)
    eroded = ndimage.binary_erosion(np.asarray(img.dataobj) > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(eroded, img.affine), str(path))


def test_a_fixed_image_recomputes_its_volumes_features_and_crops_only(tmp_path):
    """Stale image / stale crop: after fixing one patient's files, the same calls give that patient's new results
    (equal to a fresh folder's) and reuse every other patient's."""
    from p53hcc.tools.cohort.splits import cohort_items
    from p53hcc.tools.dl.arms import get_arm
    from p53hcc.tools.dl.bundle import training_params
    from p53hcc.tools.radiomics.extract import extract_cohort

    csv = make_tiny_cohort(tmp_path / "c", n=4)
    params = training_params("mc", spatial_size=32, source="preprocessed")

    def run(study: Path):
        pre = pp.preprocess_cohort(csv, study, workers=1, params=FAST, progress=False)
        feats = extract_cohort(csv, study, params="demo", workers=1, progress=False).set_index("patient_id")
        items = pp.preprocessed_items(cohort_items(csv), study)
        return pre, feats, get_arm("mc").crops(study, items, params, None)

    _, feats0, crops0 = run(tmp_path / "study")
    _swap_and_erode(csv, "P001")
    pre1, feats1, crops1 = run(tmp_path / "study")
    _, fresh_feats, fresh_crops = run(tmp_path / "fresh")
    changed = pre1.loc[~pre1["cached"], ["patient_id", "phase"]].values.tolist()
    assert sorted(changed) == [["P001", "ap"], ["P001", "dp"]]   # PVP untouched, other patients cached
    pd.testing.assert_frame_equal(feats1, fresh_feats)
    assert not np.allclose(feats1.loc["P001"].to_numpy(float), feats0.loc["P001"].to_numpy(float))
    pd.testing.assert_frame_equal(feats1.drop(index="P001"), feats0.drop(index="P001"))
    assert torch.equal(crops1, fresh_crops)
    assert not torch.equal(crops1[1], crops0[1]) and torch.equal(crops1[[0, 2, 3]], crops0[[0, 2, 3]])


def test_study_reruns_the_stages_a_changed_image_feeds(tmp_path, fake_image_stages):
    """Only cohort.csv used to be in the stage keys: a replaced image left every stage 'cached'."""
    from p53hcc.tools.pipeline.study import run_study

    kw = dict(out=tmp_path / "study", nets="resnet18", folds=3, epochs=1, **{"synth.n": 40})
    run_study(**kw)
    image = tmp_path / "study" / "cohort" / "x.nii.gz"  # the fake cohort names this one file everywhere
    image.write_bytes(b"new image content")
    fake_image_stages["calls"].clear()
    run_study(**kw)
    assert fake_image_stages["calls"] == ["preprocess", "radiomics", "mc_resnet18", "ff_resnet18"]
    fake_image_stages["calls"].clear()
    run_study(**kw)
    assert fake_image_stages["calls"] == []


def test_study_interrupted_at_every_stage_in_turn_gives_the_same_files(tmp_path, fake_image_stages, monkeypatch):
    """A run killed after each stage's outputs (before its marker), resumed, killed at the next stage, ... ends
    with the files of an uninterrupted run (orchestration; the image stages' own resumes are tested above)."""
    from p53hcc.tools.pipeline import study
    from tests.conftest import Killed

    kw = dict(out=tmp_path / "study", nets="resnet18", folds=3, epochs=1, **{"synth.n": 40})
    study.run_study(**kw)
    clean = snapshot(tmp_path / "study")
    shutil.rmtree(tmp_path / "study")
    real_build, target = study.build_stages, {"name": None}

    def killing_build(*a, **k):
        stages = real_build(*a, **k)
        for s in stages:
            def body(ctx, func=s.func):
                func(ctx)
                if ctx.stage.name == target["name"]:
                    raise Killed(ctx.stage.name)
            s.func = body
        return stages

    monkeypatch.setattr(study, "build_stages", killing_build)
    names = [s.name for s in real_build(study.resolve_config(nets="resnet18"), cohort_given=False)]
    for name in names:
        target["name"] = name
        with pytest.raises(Killed):
            study.run_study(**kw)
    target["name"] = None
    study.run_study(**kw)
    assert snapshot(tmp_path / "study") == clean
    assert set(clean) >= {"metrics.csv", "scores.parquet", "selection.json", "report.html"}


def test_cached_stage_still_names_its_inputs(tmp_path):
    """The stage keys hash every file the cohort names (inputs resolved when the stage's turn comes)."""
    from p53hcc.tools.cohort.manifest import cohort_files

    csv = make_tiny_cohort(tmp_path / "c", n=2, shape=(8, 8, 4))
    files = cohort_files(csv)
    assert files[0] == csv and len(files) == 1 + 2 * 6
    shutil.rmtree(tmp_path / "c" / "masks")
    assert len(cohort_files(csv)) == 1 + 2 * 6  # missing files are still named (hashed as absent)


SLOW_PREPROCESS = """
import sys, time
import p53hcc.tools.preprocessing.run as pp
real = pp._process_one
def slow(task):
    out = real(task)
    time.sleep(1.5)
    return out
pp._process_one = slow  # inherited by the forked workers
from p53hcc.tools.cli import main
sys.exit(main(["preprocess", sys.argv[1], "--out", sys.argv[2], "--params", "demo", "--workers", "2"]))
"""


def test_ctrl_c_stops_the_workers_at_once_and_leaves_a_resumable_folder(tmp_path):
    """Ctrl-C used to let the pool finish its whole queue, then print a traceback per worker."""
    import os
    import signal
    import subprocess
    import sys
    import time

    csv = make_tiny_cohort(tmp_path / "c", n=4, shape=(12, 12, 4))
    out = tmp_path / "study"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREPROCESS, str(csv), str(out)], stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((out / "preprocessed").glob("*/*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = proc.communicate(timeout=300)
    finished = len(list((out / "preprocessed").glob("*/*.json")))
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; run the same command again to resume" in err
    assert finished < 12 - 4, finished  # the queue was dropped: at most the tasks running at the time finished
    df = pp.preprocess_cohort(csv, out, params="demo", workers=1, progress=False)  # resumed inline
    assert len(df) == 12 and df["cached"].sum() == finished


def test_unwritable_output_is_one_line(tmp_path, capsys):
    from p53hcc.tools.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    csv = make_tiny_cohort(tmp_path / "c", n=2, shape=(8, 8, 4))
    assert main(["preprocess", str(csv), "--out", str(blocker / "study")]) == 1
    err = capsys.readouterr().err
    assert "cannot create" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_fixed_threads_nest_and_restore():
    import SimpleITK as sitk

    from p53hcc.tools.parallel import fixed_threads

    before = (sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads())
    with fixed_threads(3):
        assert torch.get_num_threads() == 3 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 3
        with fixed_threads(1):  # e.g. the crops inside a DL stage that trains with 3 threads
            assert torch.get_num_threads() == 1 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        assert torch.get_num_threads() == 3
    assert (sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads()) == before
