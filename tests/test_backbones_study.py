"""The study with the paper's ResNet18 beside ViT, Swin and EfficientNet-B0 (both arms, 32 px, 1 epoch, 28
patients): every network is cross-fitted out of fold, takes part in the choice and the report, trains with the
configured warm-up, and the transformers' arms export as bundles whose own configs rebuild the network that
reproduces the scripted model."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import make_tiny_cohort

pytestmark = pytest.mark.slow  # a real study of 4 networks x 2 arms and two exports (~3 min on 2 cores)

NETS = ("resnet18", "vit", "swin", "efficientnet_b0")
STUDY = dict(profile="demo", nets=",".join(NETS), folds=2, epochs=1, spatial_size=32, batch_size=4, patch_size=8,
             warmup_epochs=2, **{"dl.arms": "mc,ff", "gradcam.n": 2, "fusion.nesting": "apparent",
                                 "preprocess.workers": 1, "radiomics.workers": 1})

# run in a fresh interpreter, from outside the repository: the bundle alone rebuilds its network
LOAD = """
import sys, torch
from pathlib import Path
from monai.bundle import ConfigParser
b = Path(sys.argv[1])
ts = torch.jit.load(str(b / "models" / "model.ts"))
x = torch.randn(2, 3, 32, 32)
for name in ("inference.json", "deploy.json"):
    p = ConfigParser(); p.read_config(b / "configs" / name); p["bundle_root"] = str(b)
    net = p.get_parsed_content("network_def")
    net.load_state_dict(torch.load(b / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ts(x), atol=1e-5), name
    print(name, type(net).__name__)
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from p53hcc.tools.pipeline.study import run_study

    root = tmp_path_factory.mktemp("backbones")
    csv = make_tiny_cohort(root / "cohort", n=28)  # 5 per class in each fold's training part (radiomics LASSO)
    run_study(csv, out=root / "study", **STUDY)
    return root / "study"


def test_every_network_of_both_arms_is_cross_fitted_and_compared(study):
    scores = pd.read_parquet(study / "scores.parquet")
    selection = json.loads((study / "selection.json").read_text(encoding="utf-8"))
    compared = {a["model"] for a in selection["aucs"]}
    for arm in ("mc", "ff"):
        for net in NETS:
            model = f"{arm}_{net}"
            mine = scores[scores["model"] == model]
            train = mine[mine["split"] == "train"]
            assert len(train) == 21 and set(train["fold"]) == {0, 1}, model  # every training patient out of fold
            assert (mine[mine["split"] == "validation"]["fold"] == -1).all() and mine["score"].between(0, 1).all()
            assert model in compared
    page = (study / "report.html").read_text(encoding="utf-8")
    assert all(label in page for label in ("ViT-Tiny", "Swin", "EfficientNet-B0"))


def test_the_transformers_train_with_the_configured_warm_up_and_patches(study):
    for recipe_file in ("mc/vit/full/recipe.json", "ff/vit/full/ap/recipe.json", "mc/swin/full/recipe.json"):
        recipe = json.loads((study / "dl" / recipe_file).read_text(encoding="utf-8"))
        assert recipe["lr_scheduler"].endswith("LinearLR"), recipe_file  # 2 epochs from lr / 3 up to lr
        assert recipe["lr_scheduler_settings"]["start_factor"] == pytest.approx(1 / 3)
        assert recipe["lr_scheduler_settings"]["total_iters"] == 2
    for arm in ("mc", "ff"):
        params = json.loads((study / "dl" / arm / "vit" / "full" / "config.json").read_text(encoding="utf-8"))
        assert (params["patch_size"], params["warmup_epochs"], params["spatial_size"]) == (8, 2, 32)


@pytest.mark.parametrize("arm, net", [("mc", "swin"), ("ff", "vit"), ("mc", "efficientnet_b0")])
def test_the_new_networks_export_as_bundles_that_rebuild_their_network(study, arm, net, tmp_path):
    from p53hcc.tools.export.bundle import export_bundle

    bundle = export_bundle(study, arm=arm, out=tmp_path / "zoo", net=net)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    if net in ("vit", "swin"):
        assert (bundle / "scripts" / "backbones.py").is_file()  # the classifier travels with the bundle
    out = subprocess.run([sys.executable, "-c", LOAD, str(bundle)], cwd=tmp_path, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = {"ff": "FFNet", "mc": {"swin": "SwinClassifier", "efficientnet_b0": "EfficientNetBN"}.get(net)}[arm]
    assert out.stdout.split() == ["inference.json", expected, "deploy.json", expected]
