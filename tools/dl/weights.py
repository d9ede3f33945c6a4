"""Initialise a network from a local weights file (ImageNet, RadImageNet... in torchvision's format): no download.

The project's networks are MONAI's ResNet / DenseNet121 with the torchvision topology (:mod:`p53hcc.tools.dl.nets`),
so a torchvision state dict maps onto them tensor by tensor:

* ResNet: the same names. torchvision's downsample convolutions have no bias while MONAI's have one: it is set
  to zero, which is exactly torchvision's network.
* DenseNet121: torchvision's ``denselayerN.norm1`` (or the old ``norm.1``) is MONAI's ``denselayerN.layers.norm1``.
* The classifier (torchvision ``fc`` / ``classifier``: 1000 ImageNet classes) is not loaded unless its shape is
  the network's: the new two-class head keeps its fresh initialisation.
* The first convolution: a three-channel (RGB) kernel is used as is by the MC arm (AP, PVP, DP in place of R, G, B)
  and summed over its channels for the one-channel FF networks (a grey image fed to all three channels gives the
  same response), as timm adapts pretrained stems.

Anything else that does not match (a tensor missing from the file, a tensor the network does not have, another
shape: weights of another architecture) is an error naming the file, the network and the tensors, never a
silent partial load. A state dict written by p53hcc itself (``model.pt``, names already MONAI's) loads too.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from p53hcc.tools.errors import P53hccError

#: Weight file suffixes looked for in a folder of per-network files (``<folder>/resnet18.pth``...).
WEIGHT_SUFFIXES = (".pth", ".pt")
_WRAPPERS = ("state_dict", "model", "network")
# torchvision >= 0.4 (norm1) and the older checkpoints (norm.1) of DenseNet layers -> MONAI's "layers" block
_DENSE_NEW = re.compile(r"^(.*denselayer\d+)\.((?:norm|relu|conv)[12]\.(?:weight|bias|running_mean|running_var|"
                        r"num_batches_tracked))$")
_DENSE_OLD = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.([12])\.(weight|bias|running_mean|running_var|"
                        r"num_batches_tracked)$")
_CLASSIFIER = {"classifier.weight": "class_layers.out.weight", "classifier.bias": "class_layers.out.bias"}
_FIRST_CONV = ("conv1.weight", "features.conv0.weight")


def weights_file(path: str | Path, net: str) -> Path:
    """The weights file of network ``net``: ``path`` itself, or ``<path>/<net>.pth`` (``.pt``) when ``path`` is a
    folder holding one file per network (so one study setting serves all six networks).

    Raises:
        P53hccError: the file or the network's file in the folder does not exist.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        for suffix in WEIGHT_SUFFIXES:
            if (path / f"{net}{suffix}").is_file():
                return path / f"{net}{suffix}"
        raise P53hccError(f"pretrained weights folder {path} has no {net}.pth or {net}.pt")
    if not path.is_file():
        raise P53hccError(f"pretrained weights file not found: {path}")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint (plain state dict, or wrapped under ``state_dict``/``model``/``network``),
    with DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.`` prefixes removed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise P53hccError(f"cannot read pretrained weights {path}: {type(err).__name__}: {err}") from err
    for wrapper in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise P53hccError(f"{path} is not a state dict (a mapping of tensor names to tensors)")
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision ResNet / DenseNet state dict under the project's (MONAI's) tensor names."""
    out = {}
    for key, value in state.items():
        key = _DENSE_NEW.sub(r"\1.layers.\2", key)
        key = _DENSE_OLD.sub(r"\1.layers.\2\3.\4", key)
        out[_CLASSIFIER.get(key, key)] = value
    return out


#: Tensor-name prefixes of the networks' classifier layers (see ``p53hcc.tools.dl.nets.CLASSIFIERS``).
CLASSIFIER_PREFIXES = ("fc.", "class_layers.out.", "_fc.", "vit.classification_head.")


def _classifier_keys(own: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in own if k.startswith(CLASSIFIER_PREFIXES)}


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor | None:
    """A pretrained stem kernel ``[O, 3, k, k]`` for ``in_channels`` inputs: as is for 3, summed over the colour
    channels for 1 (a grey image in all three channels gives the same output); None when it cannot be adapted."""
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1 and weight.shape[1] == 3:
        return weight.sum(dim=1, keepdim=True)
    return None


def load_pretrained(net: nn.Module, path: str | Path, name: str = "network") -> list[str]:
    """Load a local state dict (torchvision or p53hcc format) into ``net``; returns the tensors NOT loaded.

    Only the classifier may stay unloaded (another number of classes); see the module docstring for the mapping.

    Raises:
        P53hccError: the file is missing or unreadable, or any other tensor is missing, extra or of another shape
            (the message names the network, the file and up to five tensors of each kind).
    """
    path = weights_file(path, name)
    state = torchvision_names(read_state_dict(path))
    own = net.state_dict()
    classifier = _classifier_keys(own)
    load, shape_errors = {}, []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key].shape
        if key in _FIRST_CONV and value.ndim == 4:
            value = adapt_first_conv(value, int(target[1])) if value.shape[1] != target[1] else value
        if value is not None and value.shape == target:
            load[key] = value
        elif key not in classifier:
            shape_errors.append(f"{key} {tuple(state[key].shape)} vs {tuple(target)}")
    # torchvision's downsample convolutions have no bias: MONAI's are zeroed (the same network)
    zero = {k for k in own if re.search(r"downsample\.0\.bias$", k) and k not in state
            and k.replace(".bias", ".weight") in load}
    missing = sorted(k for k in own if k not in load and k not in zero and k not in classifier
                     and not k.endswith("num_batches_tracked"))
    extra = sorted(k for k in state if k not in own and not k.startswith(CLASSIFIER_PREFIXES))
    if missing or extra or shape_errors:
        parts = [f"{len(v)} {what} (e.g. {', '.join(v[:5])})" for what, v in
                 (("tensor(s) of the network missing from the file", missing),
                  ("tensor(s) the network does not have", extra), ("tensor(s) of another shape", shape_errors)) if v]
        raise P53hccError(f"pretrained weights {path} do not match {name}: {'; '.join(parts)}. Expected a "
                          f"torchvision-format (or p53hcc) state dict of {name}.")
    with torch.no_grad():
        for key in zero:
            load[key] = torch.zeros_like(own[key])
    net.load_state_dict(load, strict=False)
    return sorted(k for k in own if k not in load and not k.endswith("num_batches_tracked"))
