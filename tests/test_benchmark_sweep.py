"""benchmarks/train_sweep.py: the CPU variant runs end to end and writes an honest JSON record."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TinyNet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    sys.path.insert(0, str(REPO))
    import benchmarks.train_sweep as ts

    return ts


def test_images_per_epoch_counts_fold_and_full_models(bench):
    splits = {"fold_of": {str(i): i % 3 for i in range(9)},
              "folds": [{"fold": k, "val": [str(i) for i in range(9) if i % 3 == k]} for k in range(3)]}
    assert bench.images_per_epoch(splits) == 3 * 6 + 9


def test_cpu_variant_writes_record(bench, tmp_path, monkeypatch):
    """Whole script on CPU (tiny cohort, 1 epoch, 2 folds); the network factory is a tiny CNN to stay fast."""
    tiny = lambda name, in_channels=3, *a, **k: TinyNet(in_channels, width=6, stride=4)
    monkeypatch.setattr("p53hcc.tools.dl.nets.build_net", tiny)
    monkeypatch.setattr("p53hcc.tools.dl.engine.build_net", tiny)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dest = bench.main(["--device", "cpu", "--nets", "resnet18", "--n", "10", "--work", str(tmp_path / "w"),
                       "--results", str(tmp_path / "results"), "--limit_steps", "1"])
    rec = json.loads(Path(dest).read_text(encoding="utf-8"))
    assert Path(dest).name == "train_sweep_cpu.json"
    assert rec["gpu_measured"] is False and "GPU figures not measured" in rec["note"]
    (row,) = rec["rows"]
    assert row["net"] == "resnet18" and row["limit_3ch"] > 0 and row["limit_1ch"] > 0
    for arm in ("mc", "ff"):
        assert row[arm]["images"] > 0 and row[arm]["images_per_s"] > 0
        assert row[arm]["ratio_to_limit"] == pytest.approx(row[arm]["images_per_s"] / row[f"limit_{3 if arm == 'mc' else 1}ch"])
    assert rec["total_s"] >= rec["sweep_train_s"] > 0
    study = tmp_path / "w" / "study"
    assert (study / "dl" / "mc" / "resnet18" / "scores.parquet").is_file()
    assert (study / "dl" / "ff" / "resnet18" / "scores.parquet").is_file()
