"""The shipped MONAI bundles: where they are, their training defaults, and running their configs.

The bundles (``p53_mc``, ``p53_ff``) are package data of ``p53hcc.bundles`` and are found through
``importlib.resources``, so an installed copy trains exactly like a checkout. Each bundle's ``train.json`` is the
one home of the DL training hyperparameters (network, epochs, batch size, learning rate, ROI size...): the
in-process engine reads them from there, the study YAML overrides them.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from p53hcc.tools.config.check import check_keys, validated
from p53hcc.tools.config.schema import NULLABLE_TRAINING, EngineOptions, Training, TrainingValues
from p53hcc.tools.errors import P53hccError, check_choice
from p53hcc.tools.schema import ARMS

log = logging.getLogger(__name__)
BUNDLE_NAMES = {"mc": "p53_mc", "ff": "p53_ff"}
#: Top-level values of ``train.json`` that are training hyperparameters (what the engine and the study read),
#: typed in :class:`p53hcc.tools.config.schema.TrainingValues`.
TRAINING_KEYS = tuple(TrainingValues.model_fields)
#: The recipe's components: each engine instantiates them from the parsed ``train.json``.
COMPONENT_KEYS = ("optimizer", "loss", "lr_scheduler", "batch_augmentation")
#: Values that change the deterministic 2D crops (their cache is keyed by them).
CROP_KEYS = ("spatial_size", "margin", "pixdim", "n4")
#: Settings that apply to some networks only (a ViT's patch side) or only when set (a warm-up of > 0 epochs).
NET_ONLY_KEYS = ("patch_size", "warmup_epochs")
#: Engine-only options (not in the bundle), typed with their defaults in
#: :class:`p53hcc.tools.config.schema.EngineOptions`: ``source`` "raw" runs the bundle's own chain on the
#: manifest's images, "preprocessed" reads the study's preprocessed volumes (N4 runs once per patient-phase);
#: ``compile`` wraps the network in ``torch.compile``; ``cpu_threads`` is torch's thread count while training and
#: scoring: fixed (and in the resume keys) because CPU convolutions give other bits with another thread count, so
#: the networks depend on this value, never on the machine's core count.
ENGINE_DEFAULTS = EngineOptions().model_dump()


def check_arm(arm: str) -> str:
    """``arm`` lower-cased if it is ``mc`` or ``ff``, else a one-line error."""
    return check_choice(arm, ARMS, "arm")


def bundle_dir(arm: str) -> Path:
    """Folder of the bundle of ``arm`` (``mc`` -> ``p53_mc``) inside the installed package."""
    path = Path(str(resources.files("p53hcc.bundles").joinpath(BUNDLE_NAMES[check_arm(arm)])))
    if not (path / "configs" / "train.json").is_file():
        raise P53hccError(f"bundle {path} is incomplete (no configs/train.json); reinstall p53hcc")
    return path


@functools.cache
def _train_config(arm: str) -> dict:
    return json.loads((bundle_dir(arm) / "configs" / "train.json").read_text())


def training_defaults(arm: str) -> dict[str, Any]:
    """The training hyperparameters of ``arm``'s ``train.json`` (keys :data:`TRAINING_KEYS`)."""
    cfg = _train_config(check_arm(arm))
    missing = [k for k in TRAINING_KEYS if k not in cfg]
    if missing:
        raise P53hccError(f"{bundle_dir(arm) / 'configs' / 'train.json'} lacks training value(s) {missing}")
    return {k: cfg[k] for k in TRAINING_KEYS}


def training_params(arm: str, **overrides: Any) -> dict[str, Any]:
    """Bundle defaults <- engine defaults <- ``overrides``, checked against the typed schema.

    A None override means "the bundle's value", except for the settings whose null is a value
    (``pretrained_path``, ``lr_scheduler``, ``batch_augmentation``: none). With ``source="preprocessed"`` N4 is
    switched off: the study's preprocessed volumes are already bias-corrected, resampled and normalised.

    Raises:
        P53hccError: an unknown key (naming the closest one), a wrong type or value, a component whose
            ``_target_`` does not exist.
    """
    check_keys(overrides, "training settings", Training, what="training setting")
    given = {k: v for k, v in overrides.items() if v is not None or k in NULLABLE_TRAINING}
    where = {k: "training settings" for k in given}
    params = validated(Training, {**training_defaults(arm), **ENGINE_DEFAULTS, **given}, where,
                       f"{BUNDLE_NAMES[check_arm(arm)]} train.json", "training setting").model_dump(mode="json")
    for key in COMPONENT_KEYS:
        check_component(params[key], f"training setting {key}")
    from p53hcc.tools.dl.nets import check_net_settings

    check_net_settings(params["net"], params["spatial_size"], params["patch_size"])
    if params["source"] == "preprocessed":
        params["n4"] = False
    return params


def applied_params(params: dict) -> dict[str, Any]:
    """``params`` without the settings that change nothing in this run (the resume key of a network): the patch
    size of any network but a ViT, a warm-up of 0 epochs. A study that does not use them keeps the key it had
    before they existed, so its networks are not retrained."""
    out = {k: v for k, v in params.items() if k not in NET_ONLY_KEYS}
    if str(params.get("net", "")).startswith("vit"):
        out["patch_size"] = params.get("patch_size")
    if int(params.get("warmup_epochs") or 0):
        out["warmup_epochs"] = int(params["warmup_epochs"])
    return out


def check_component(value: dict | None, where: str) -> None:
    """A config component's ``_target_`` must name something importable (MONAI's short names included), so a
    typo fails before anything trains, not at the first network."""
    if value is None:
        return
    from monai.bundle.config_item import ComponentLocator

    target = value["_target_"]
    if target.startswith(("$", "@", "%")):
        return  # an expression or reference: resolved by the config parser at run time
    try:
        found = ComponentLocator().get_component_module_name(target) or _locate(target)
    except Exception:  # noqa: BLE001 - any import problem means "not found" here
        found = None
    if not found:
        raise P53hccError(f"{where}: _target_ {target!r} is neither a MONAI component nor an importable name")


def _locate(name: str):
    import pydoc

    return pydoc.locate(name)


def bundle_parser(arm: str, config: str = "train.json", overrides: dict | None = None):
    """A ``monai.bundle.ConfigParser`` of one of ``arm``'s configs, with ``overrides`` applied."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_dir(arm) / "configs" / config))
    parser.update(overrides or {})
    return parser


def run_workflow(configs: Sequence[str | Path], workflow_type: str, overrides: dict) -> None:
    """Run a bundle config (a list = base + overrides) through MONAI's ``ConfigWorkflow``, checking its properties."""
    from monai.bundle import ConfigWorkflow

    configs = [Path(c) for c in configs]
    wf = ConfigWorkflow(config_file=[str(c) for c in configs], workflow_type=workflow_type,
                        meta_file=str(configs[0].parent / "metadata.json"),
                        logging_file=str(configs[0].parent / "logging.conf"), **overrides)
    wf.initialize()
    missing = wf.check_properties()
    if missing:
        raise P53hccError(f"bundle {configs[-1]} lacks required properties {missing}")
    wf.run()
    wf.finalize()
