"""Cohort preprocessing: outputs and index, cache (no-op re-run, partial recompute), failures, process pool, Dask."""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import p53hcc.tools.preprocessing.run as pp
from p53hcc.tools.errors import P53hccError
from tests.conftest import make_tiny_cohort

FAST = {"n4": {"n_iterations": [10, 10]}}
PHASES = ("ap", "pvp", "dp")


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """A 3-patient cohort preprocessed once in-process: (cohort.csv, study dir, returned table)."""
    root = tmp_path_factory.mktemp("pp")
    csv = make_tiny_cohort(root / "cohort", n=3, shape=(17, 17, 5))
    df = pp.preprocess_cohort(csv, root / "study", workers=1, params=FAST, progress=False)
    return csv, root / "study", df


def _outputs(study: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in sorted((study / "preprocessed").rglob("*")) if p.is_file()}


def test_writes_index_and_volumes(done):
    _csv, study, df = done
    index = pd.read_csv(study / "preprocessed" / "index.csv", dtype={"patient_id": str})
    assert list(index.columns) == pp.INDEX_COLUMNS
    assert len(index) == 9 and set(index["phase"]) == set(PHASES) and not df["cached"].any()
    for row in index.itertuples():
        img = nib.load(study / "preprocessed" / row.image)
        mask = nib.load(study / "preprocessed" / row.mask)
        assert img.shape == mask.shape == (25, 25, 17)  # 17x17x5 voxels of 1.5x1.5x4 mm -> 1 mm (centre extent)
        np.testing.assert_allclose(img.header.get_zooms(), (1, 1, 1))
        assert img.get_data_dtype() == np.float32 and mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj))) == {0, 1}
        vals = np.asarray(img.dataobj)
        assert abs(vals[vals != 0].mean()) < 1e-3 and abs(vals[vals != 0].std() - 1) < 1e-2


def test_rerun_is_a_noop(done, monkeypatch):
    csv, study, _ = done
    before = _outputs(study)

    def boom(task):  # any recomputation would call the worker
        raise AssertionError(f"recomputed {task['patient_id']} {task['phase']}")

    monkeypatch.setattr(pp, "process_one", boom)
    df = pp.preprocess_cohort(csv, study, workers=1, params=FAST, progress=False)
    assert df["cached"].all() and len(df) == 9
    after = _outputs(study)
    assert {k: v for k, v in after.items() if not k.endswith("index.csv")} == \
        {k: v for k, v in before.items() if not k.endswith("index.csv")}


def test_normalisation_change_reuses_n4(done, tmp_path):
    csv, study, first = done
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    df = pp.preprocess_cohort(csv, copy, workers=1, params={**FAST, "normalize_nonzero": False}, progress=False)
    assert not df["cached"].any() and df["n4_cached"].all()  # outputs recomputed, N4 taken from its cache
    assert (df["key"].to_numpy() != first["key"].to_numpy()).all()
    df2 = pp.preprocess_cohort(csv, copy, workers=1, params={**FAST, "n4": {"n_iterations": [5, 5]}},
                               progress=False)
    assert not df2["n4_cached"].any()  # an N4 parameter invalidates the N4 cache


def test_failing_patient_is_named_and_others_kept(done, tmp_path):
    csv, _, first = done
    root = tmp_path / "cohort"
    shutil.copytree(csv.parent, root)
    bad = root / "images" / "P001_pvp.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(P53hccError) as err:  # two local worker processes: the ProcessPoolExecutor path
        pp.preprocess_cohort(root / "cohort.csv", tmp_path / "study", workers=2, params=FAST, progress=False)
    msg = str(err.value)
    assert "P001" in msg and "P001_pvp.nii.gz" in msg and "1 of 9" in msg
    index = pd.read_csv(tmp_path / "study" / "preprocessed" / "index.csv", dtype={"patient_id": str})
    assert len(index) == 8 and not ((index["patient_id"] == "P001") & (index["phase"] == "pvp")).any()
    # the others are cached: after fixing the file only the failed one is computed
    shutil.copy(csv.parent / "images" / "P001_pvp.nii.gz", bad)
    df = pp.preprocess_cohort(root / "cohort.csv", tmp_path / "study", workers=1, params=FAST, progress=False)
    assert df["cached"].sum() == 8 and len(df) == 9
    # process-pool outputs equal the in-process ones
    assert df.set_index(["patient_id", "phase"])["key"].equals(first.set_index(["patient_id", "phase"])["key"])


def test_dask_cluster_gives_identical_outputs(done, tmp_path):
    distributed = pytest.importorskip("distributed")
    csv, study, _first = done
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        df = pp.preprocess_cohort(csv, tmp_path / "study", scheduler=lc.scheduler_address, params=FAST,
                                  progress=False)
    assert not df["cached"].any() and len(df) == 9
    for row in pd.read_csv(study / "preprocessed" / "index.csv", dtype={"patient_id": str}).itertuples():
        for rel in (row.image, row.mask):
            a = np.asarray(nib.load(study / "preprocessed" / rel).dataobj)
            b = np.asarray(nib.load(tmp_path / "study" / "preprocessed" / rel).dataobj)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_missing_file_and_bad_params(tmp_path):
    csv = make_tiny_cohort(tmp_path / "c", n=1, shape=(12, 12, 4))
    (tmp_path / "c" / "masks" / "P000_dp_mask.nii.gz").unlink()
    with pytest.raises(P53hccError, match=r"P000 phase dp: file .*P000_dp_mask.nii.gz: cannot read mask"):
        pp.preprocess_cohort(csv, tmp_path / "s", workers=1, params=FAST, progress=False)
    with pytest.raises(P53hccError, match="unknown"):
        pp.preprocess_cohort(csv, tmp_path / "s", params={"voxel": 1}, progress=False)
