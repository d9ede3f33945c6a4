"""The bundles' deploy configs (in-memory input, metadata kept, no file I/O) cut the same crops as their file-based
inference; boolean config values from the command line mean what they say; an empty inference part is an error
that leaves no earlier table behind."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from p53hcc.tools.cohort.splits import select_items, write_datalist
from p53hcc.tools.dl import components
from p53hcc.tools.dl.bundle import bundle_dir, bundle_parser
from p53hcc.tools.dl.components import as_bool
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.schema import PHASES
from tests.conftest import make_tiny_cohort

TINY = {"spatial_size": 32, "net": "resnet18", "device": "cpu"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    write_datalist(make_tiny_cohort(root / "cohort", n=8), root / "study", folds=2)
    return root / "study"


def in_memory(item: dict):
    """The deploy input of one datalist item: its three phases and masks as one 6-channel volume (meta kept)."""
    from monai.transforms import LoadImaged

    from p53hcc.tools.preprocessing.chain import SeriesSpacingReader

    keys = [*PHASES, *(f"{p}_mask" for p in PHASES)]
    d = LoadImaged(keys, reader=SeriesSpacingReader(), image_only=True, ensure_channel_first=True)(item)
    return torch.cat([d[k] for k in keys])  # MetaTensor: the first volume's affine and meta


def deploy(arm: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir(arm) / "configs" / "deploy.json"))
    parser.update({**TINY, **overrides})
    return parser


@pytest.mark.parametrize("n4", [False, True])
def test_mc_deploy_crops_equal_the_inference_crops(study, n4):
    from monai.data import MetaTensor
    from monai.transforms import Compose

    item = select_items(study / "datalist.json", "validation")[0]
    parser = deploy("mc", n4=n4)
    image = in_memory(item)
    assert image.shape[0] == 6 and isinstance(image, MetaTensor)
    out = parser.get_parsed_content("preprocessing")({"image": image})
    ref = Compose(bundle_parser("mc", overrides={**TINY, "n4": n4}).get_parsed_content("deterministic_transforms"))(
        dict(item))["image"]
    assert isinstance(out["image"], MetaTensor) and out["image"].shape == (3, 32, 32)  # metadata kept
    np.testing.assert_allclose(out["image"].numpy(), ref.numpy(), atol=1e-5)
    names = {type(t).__name__ for t in parser.get_parsed_content("preprocessing").transforms}
    assert not names & {"LoadImaged", "SaveImaged"} and ("N4BiasFieldCorrectiond" in names) == n4
    logits = parser.get_parsed_content("network")(out["image"][None].float())
    # MonaiBundleInferenceOperator hands every other tensor of the dict to the network as an argument
    assert [k for k, v in out.items() if isinstance(v, torch.Tensor) and k != "image"] == []
    probs = parser.get_parsed_content("postprocessing")({"pred": logits[0]})["pred"]  # unbatched, as the SDK
    assert probs.shape == (2,) and float(probs.sum()) == pytest.approx(1.0)


def test_ff_deploy_crops_one_phase_like_its_inference(study):
    from monai.transforms import Compose

    item = select_items(study / "datalist.json", "validation")[0]
    out = deploy("ff", phase="dp", n4=False).get_parsed_content("preprocessing")({"image": in_memory(item)})
    phase_item = select_items(study / "datalist.json", "validation", -1, "dp")[0]
    ref = Compose(bundle_parser("ff", overrides={**TINY, "n4": False}).get_parsed_content(
        "deterministic_transforms"))(phase_item)["image"]
    assert out["image"].shape == (1, 32, 32)
    np.testing.assert_allclose(out["image"].numpy(), ref.numpy(), atol=1e-5)


def test_a_wrong_input_volume_names_the_problem(study):
    item = select_items(study / "datalist.json", "validation")[0]
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps the transform's own error
        deploy("mc", n4=False).get_parsed_content("preprocessing")({"image": in_memory(item)[:3]})
    assert isinstance(err.value.__cause__, P53hccError) and "expected 6 channels" in str(err.value.__cause__)


@pytest.mark.parametrize("word,value", [("false", False), ("False", False), ("0", False), (0, False), ("no", False),
                                        ("true", True), ("True", True), ("1", True), (True, True)])
def test_boolean_flags_mean_the_same_everywhere(word, value):
    from p53hcc.tools.dl.bundle import training_params
    from p53hcc.tools.pipeline.config import resolve_config

    assert as_bool(word) is value
    assert bool(components.n4_transforms(["image"], word)) is value
    assert training_params("mc", compile=word)["compile"] is value
    cfg = resolve_config(**{"validate.phase_order": word, "compile": word})
    assert cfg["validate"]["phase_order"] is value and cfg["dl"]["compile"] is value
    chain = bundle_parser("mc", overrides={"n4": word}).get_parsed_content("deterministic_transforms")
    assert any(type(t).__name__ == "N4BiasFieldCorrectiond" for t in chain) is value
    with pytest.raises(P53hccError, match="expects true or false"):
        as_bool("maybe", "n4")


def test_n4_parameters_reach_the_bundle_chain():
    chain = bundle_parser("mc", overrides={"n4_params": {"shrink_factor": 8, "n_iterations": [20, 20]}})
    n4 = next(t for t in chain.get_parsed_content("n4_transforms"))
    assert n4.n4.params["shrink_factor"] == 8 and n4.n4.params["n_iterations"] == [20, 20]


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_an_empty_inference_part_is_an_error_and_removes_the_old_table(study, tmp_path, arm):
    from monai.bundle import ConfigWorkflow

    configs = bundle_dir(arm) / "configs"
    old = tmp_path / "scores.csv"
    old.write_text("patient_id,score\nP0,0.5\n")
    wf = ConfigWorkflow(config_file=str(configs / "inference.json"), workflow_type="infer",
                        meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
                        dataset_dir=str(study), infer_part="external",
                        predictions_path=str(old), work_dir=str(tmp_path / "work"), **TINY)
    wf.initialize()
    with pytest.raises(RuntimeError) as err:  # MONAI's config parser wraps the expression's own error
        wf.run()
    cause = err.value.__cause__
    assert isinstance(cause, P53hccError) and "'external' holds no patients" in str(cause) and not old.exists()


def test_bundle_defaults_write_outside_the_bundle():
    for arm in ("mc", "ff"):
        for name in ("train.json", "inference.json"):
            parser = bundle_parser(arm, name)
            for key in [k for k in ("output_dir", "cache_dir", "ckpt_dir") if parser.get(k) is not None]:
                path = parser.get_parsed_content(key)
                assert "p53hcc-work" in path and str(bundle_dir(arm)) not in path, (arm, name, key, path)
        deploy_cfg = json.loads((bundle_dir(arm) / "configs" / "deploy.json").read_text(encoding="utf-8"))
        assert "datalist" not in json.dumps(deploy_cfg) and "handlers" not in deploy_cfg


def test_patient_table_writer_drops_an_earlier_table_when_attached(tmp_path):
    class Engine:
        def add_event_handler(self, *args):
            pass

    old = tmp_path / "scores.csv"
    pd.DataFrame({"patient_id": ["P0"], "score": [0.5]}).to_csv(old, index=False)
    components.PatientTableWriter(old).attach(Engine())
    assert not old.exists()
    with pytest.raises(P53hccError, match="holds no patients"):
        components.require_items([], "validation")
