"""The configs of an exported bundle: the shipped bundles' configs with the study's values and the bundle's own code.

Nothing is written twice: each exported config starts from a shipped config of ``bundles/p53_<arm>/configs`` and
only values change. Both arms score the three-phase crop stack of ``p53_mc``'s ``inference.json`` and
``deploy.json``; the FF arm's network is :class:`p53hcc.tools.dl.ffnet.FFNet` (three phase CNNs and the head),
while its ``train.json`` trains one phase network as ``p53_ff``'s does. The values are the study's: the network,
the crop settings, the training recipe, the study's N4 parameters (the bundle reads raw images, so it runs the
study's preprocessing itself), the DL threshold, and the shipped weights under ``models/``; the module
``p53hcc.tools.dl.components`` becomes ``scripts.components``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from p53hcc.tools.dl.bundle import bundle_dir
from p53hcc.tools.dl.engine import precision_of
from p53hcc.tools.export.scripts import ROOT, script_module

#: Configs each exported bundle carries: (file, the arm whose shipped config it starts from; None: the exported arm).
CONFIG_SOURCES = {"inference.json": "mc", "deploy.json": "mc", "train.json": None, "evaluate.json": None,
                  "multi_gpu_train.json": None, "multi_gpu_evaluate.json": None}
#: Configs exported when the shipped bundle has them (multi-GPU evaluation: the shipped bundles' own file).
OPTIONAL = {"multi_gpu_evaluate.json"}
#: Training values copied from the study into train.json (the recipe its networks were trained with).
RECIPE_KEYS = ("epochs", "batch_size", "learning_rate", "weight_decay", "min_scale", "seed", "precision", "optimizer",
               "loss", "lr_scheduler", "warmup_epochs", "batch_augmentation")
#: The network and what its input is made of (every exported config holds them).
CROP_KEYS = ("net", "spatial_size", "margin", "pixdim", "patch_size")


def _shipped(arm: str, name: str) -> dict:
    return json.loads((bundle_dir(arm) / "configs" / name).read_text(encoding="utf-8"))


def work_dir(name: str) -> str:
    """The default folder of a bundle's caches, logs and trained models: outside the bundle, in the user's home."""
    return f"$os.path.join(os.path.expanduser('~'), 'p53hcc-work', '{name}')"


#: p53hcc modules an exported config may take names from -> the config item holding the bundle's copy of it.
#: The network modules are their own items, so building a network imports only what the network needs.
SCRIPT_ITEMS = {ROOT: "p53", "p53hcc.tools.dl.nets": "p53_nets", "p53hcc.tools.dl.ffnet": "p53_ffnet",
                "p53hcc.tools.dl.backbones": "p53_backbones"}


def ff_network_def(params: dict, n_components: list[int], n_selected: int) -> dict:
    """``network_def`` of the FF arm as one network (the shape of its head's fitted parts; a ViT's input and patch
    side)."""
    vit = ({"spatial_size": int(params["spatial_size"]), "patch_size": int(params["patch_size"])}
           if str(params["net"]).startswith("vit") else {})
    return {"_target_": "p53hcc.tools.dl.ffnet.FFNet", "net": "@net", "n_components": list(n_components),
            "n_selected": int(n_selected), "spatial_dims": 2, **vit}


def weights_digest(files: Mapping[str, str]) -> str:
    """One SHA-256 over ``{relative path: file sha256}`` of a network's ``full/`` folder (order-free).

    The export records it for the study's files (``p53hcc_source.weights_sha256``) and the Deploy app recomputes
    it from the frozen study model's manifest (which lists the same files with their hashes), so the two can be
    compared without the weights."""
    text = "\n".join(f"{k}:{files[k]}" for k in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def _network_def(cfg: dict, arm: str, params: dict, file: str) -> dict:
    """The exported ``network_def``: the MC network by ``_target_`` (inference and deploy): the stock MONAI network
    it is, or for a transformer p53hcc's thin classifier around MONAI's encoder (in ``scripts/backbones.py``);
    otherwise ``build_net`` from the bundle's minimal network module (training keeps its pretrained weights)."""
    old = cfg["network_def"]
    if arm == "mc" and file in ("inference.json", "deploy.json"):
        from p53hcc.tools.dl.nets import network_config

        return network_config(params["net"], int(old["in_channels"]), int(old["num_classes"]),
                              int(old["spatial_dims"]), int(params["spatial_size"]), params.get("patch_size"))
    return {**old, "_target_": "p53hcc.tools.dl.nets.build_net"}


def exported_configs(arm: str, name: str, params: dict, n4_params: dict, threshold: float | None,
                     ff_shape: tuple[list[int], int] | None = None, source: dict | None = None) -> dict[str, dict]:
    """``{file name: config}`` of an exported bundle.

    Args:
        arm: ``mc`` or ``ff``.
        name: the bundle's name (its default ``work_dir``).
        params: the full-cohort networks' training parameters (``dl/<arm>/<net>/full/config.json``).
        n4_params: the study's N4 parameters (its preprocessing preset).
        threshold: the DL model's operating threshold (training Youden), or None when it has none.
        ff_shape: FF only: PCA components per phase and LASSO-retained features of the fitted head.
        source: where the weights come from (``arm``, ``net``, ``weights_sha256`` of the study's ``full/``
            folder, :func:`weights_digest`), written as ``p53hcc_source`` in
            the inference and deploy configs so the Deploy app can tie the bundle to the frozen study model.
    """
    # a study trained before patch_size existed keeps the shipped default (it was never used by its CNNs)
    values = {**{k: params[k] for k in CROP_KEYS if k in params}, "n4": True, "n4_params": dict(n4_params), "work_dir": work_dir(name)}
    out: dict[str, dict] = {}
    for file, source_arm in CONFIG_SOURCES.items():
        if file in OPTIONAL and not (bundle_dir(source_arm or arm) / "configs" / file).is_file():
            continue
        cfg = copy.deepcopy(_shipped(source_arm or arm, file))
        if "network_def" in cfg:  # a whole config, not an override of train.json
            cfg.update(values)
        if file == "train.json":
            cfg.update({k: params[k] for k in RECIPE_KEYS if k in params})
        if file in ("inference.json", "deploy.json"):
            if source:
                cfg["p53hcc_source"] = dict(source)
            cfg.update(threshold=threshold, ckpt_dir="$os.path.join(@bundle_root, 'models')",
                       ckpt_path="$os.path.join(@ckpt_dir, 'model.pt')")
            if "precision" in cfg:
                cfg["precision"] = precision_of(params)
            if arm == "ff":
                cfg["network_def"] = ff_network_def(params, *ff_shape)
        if "network_def" in cfg and str(cfg["network_def"].get("_target_", "")).endswith(".build_net"):
            cfg["network_def"] = _network_def(cfg, arm, params, file)
        for handler in cfg.get("handlers", []) if file == "inference.json" else []:
            if handler["_target_"].endswith("PatientTableWriter"):
                handler["threshold"] = "@threshold"
                handler.pop("extra", None)  # the study's fold/phase/model labels mean nothing to a zoo user
        out[file] = cfg
    return out


def script_names(config: dict[str, Any]) -> dict[str, set[str]]:
    """``{p53hcc module: names}`` a config takes from p53hcc (``_target_`` paths and the ``p53.`` alias)."""
    text = json.dumps(config)
    out = {m: set(re.findall(rf"{re.escape(m)}\.(\w+)", text)) for m in SCRIPT_ITEMS}
    out[ROOT] |= set(re.findall(r"(?<![@\w.])p53\.(\w+)", text))
    return {m: names for m, names in out.items() if names}


def _loader(module: str) -> str:
    """A config expression giving the bundle's copy of ``module`` (``scripts.<name>``), with the bundle root on
    ``sys.path`` first: the bundle runs with ``--bundle_root`` from any working directory. (An expression, not an
    ``$import``: MONAI evaluates every import statement before any other item.)"""
    return ("$(sys.path.insert(0, @bundle_root) if @bundle_root not in sys.path else None, "
            f"pkgutil.resolve_name('{script_module(module)}'))[1]")


def to_bundle_module(config: dict[str, Any]) -> str:
    """A config as JSON text that names the bundle's own ``scripts`` package instead of p53hcc: each p53hcc module
    becomes a config item (:data:`SCRIPT_ITEMS`) loading its copy from the bundle root, ``_target_`` paths become
    references to it (``"$@p53.SplitChannelsd"``), and expressions use ``@p53.<name>``."""
    used = script_names(config)
    text = json.dumps(config, indent=4)
    for module, item in SCRIPT_ITEMS.items():
        text = re.sub(rf'"{re.escape(module)}\.(\w+)"', rf'"$@{item}.\1"', text)
    text = re.sub(r"(?<![@\w.])p53\.(\w+)", r"@p53.\1", text)
    cfg = json.loads(text)
    if "imports" in cfg:  # a whole config: it defines the items (an override config uses its base config's)
        imports = [i for i in cfg["imports"] if "p53hcc" not in i]
        cfg["imports"] = imports + [i for i in ("$import sys", "$import pkgutil") if i not in imports]
        cfg.update({SCRIPT_ITEMS[m]: _loader(m) for m in SCRIPT_ITEMS if m in used})
    return json.dumps(cfg, indent=4) + "\n"
