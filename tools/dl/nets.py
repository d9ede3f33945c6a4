"""The paper's six 2D CNNs (ResNet18/34/50/101/152, DenseNet121) built from MONAI with the standard topology.

MONAI's ``ResNet`` defaults to a stride-1 stem (``conv1_t_stride=1``), which keeps 4x more pixels through the
network than torchvision's ResNet and is 2-4x slower; :func:`build_net` uses ``conv1_t_stride=2`` (7x7 stride-2
conv + 3x3 stride-2 max-pool), the topology the paper's ImageNet-style ResNets have. Pretrained weights come only
from a local file in torchvision's format (:mod:`p53hcc.tools.dl.weights`; nothing is downloaded). :func:`feature_extractor` returns penultimate-layer features (the FF arm).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from p53hcc.tools.dl.weights import load_pretrained
from p53hcc.tools.errors import P53hccError, check_choice
from p53hcc.tools.schema import NETS

_PENULTIMATE = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                "densenet121": 1024}
#: Grad-CAM target layers per family, shallow to deep: the output of each convolutional stage (after its ReLU).
#: Each stage halves the feature map; at the paper's 256 px input the last one is 8x8, at the demo's 32 px 1x1.
GRADCAM_LAYERS = {"resnet": ("layer1", "layer2", "layer3", "layer4"),
                  "densenet": ("features.transition1.relu", "features.transition2.relu",
                               "features.transition3.relu", "class_layers.relu")}


def check_net_name(name: str) -> str:
    """Return ``name`` lower-cased if it is one of :data:`NETS`, else raise a one-line error."""
    return check_choice(name, NETS, "network")


def penultimate_dim(name: str) -> int:
    """Width of the penultimate (pooled) feature vector of network ``name`` (512/512/2048/2048/2048/1024)."""
    return _PENULTIMATE[check_net_name(name)]


def network_config(name: str = "resnet34", in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2) -> dict:
    """The MONAI network ``name`` with the standard stem as a bundle config item: a stock MONAI ``_target_`` and
    its arguments (what :func:`build_net` builds, and what an exported bundle names as its ``network_def``)."""
    key = check_net_name(name)
    if key == "densenet121":
        return {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": spatial_dims,
                "in_channels": in_channels, "out_channels": num_classes}
    return {"_target_": f"monai.networks.nets.{key}", "spatial_dims": spatial_dims, "n_input_channels": in_channels,
            "num_classes": num_classes, "conv1_t_size": 7, "conv1_t_stride": 2, "pretrained": False}


def build_net(name: str = "resnet34", in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
              pretrained_path: str | None = None) -> nn.Module:
    """Build one of the six networks with a standard (torchvision-like) stem.

    Args:
        name: resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | densenet121.
        in_channels: input channels (3 for the MC arm: AP, PVP, DP; 1 for one phase).
        num_classes: output logits (2: P53 wild type / mutated).
        spatial_dims: 2 (the paper's 2D models).
        pretrained_path: optional local weights: a state-dict file in torchvision's (ImageNet, RadImageNet...) or
            p53hcc's format, or a folder holding ``<name>.pth`` per network; mapped onto the network by
            :func:`p53hcc.tools.dl.weights.load_pretrained` (any mismatch but the classifier is an error).

    Returns:
        The ``torch.nn.Module`` (logits output).
    """
    from monai.networks import nets

    key = check_net_name(name)
    spec = network_config(key, in_channels, num_classes, spatial_dims)
    net = getattr(nets, spec.pop("_target_").rpartition(".")[2])(**spec)
    if pretrained_path:
        load_pretrained(net, pretrained_path, name=key)
    return net


def final_linear(net: nn.Module) -> nn.Linear:
    """The classifier ``Linear`` layer whose input is the penultimate feature vector."""
    net = getattr(net, "module", net)  # DDP / compiled wrappers
    net = getattr(net, "_orig_mod", net)
    if hasattr(net, "fc") and isinstance(net.fc, nn.Linear):
        return net.fc
    if hasattr(net, "class_layers") and hasattr(net.class_layers, "out"):
        return net.class_layers.out
    raise P53hccError(f"cannot find the classifier layer of {type(net).__name__}")


def gradcam_layers(net: nn.Module) -> tuple[str, ...]:
    """The Grad-CAM candidate layers of a network from :func:`build_net`, shallow to deep."""
    return GRADCAM_LAYERS["densenet" if hasattr(net, "class_layers") else "resnet"]


def feature_map_sizes(net: nn.Module, input_shape: tuple[int, ...], layers: tuple[str, ...] | None = None
                      ) -> dict[str, tuple[int, ...]]:
    """Spatial size of the output of each of ``layers`` (default :func:`gradcam_layers`) for one input of
    ``input_shape`` (``[C, H, W]``), measured with forward hooks on a zero image (nothing is assumed about strides).
    """
    modules = dict(net.named_modules())
    layers = gradcam_layers(net) if layers is None else layers
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise P53hccError(f"layer(s) {unknown} not in {type(net).__name__}; Grad-CAM candidates: "
                          f"{', '.join(gradcam_layers(net))}")
    sizes: dict[str, tuple[int, ...]] = {}
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[2:]))) for name in layers]
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *input_shape, device=next(net.parameters()).device))
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    return {name: sizes[name] for name in layers}


class FeatureExtractor(nn.Module):
    """Wrap a classifier so ``forward`` returns its penultimate features ``[B, D]`` (via a forward hook).

    The hook captures the input of the final ``Linear`` layer, so the features are exactly what the trained
    classifier saw (after global pooling). ``logits`` keeps the last logits too.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._features: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self._handle = final_linear(net).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self._features = inputs[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.logits = self.net(x)
        feats, self._features = self._features, None
        return torch.flatten(feats, 1)

    def remove(self) -> None:
        """Detach the hook from the wrapped network."""
        self._handle.remove()


def feature_extractor(net: nn.Module) -> FeatureExtractor:
    """Return a module mapping images to the penultimate features of ``net`` (see :class:`FeatureExtractor`)."""
    return FeatureExtractor(net)


def infer_in_channels(state: dict) -> int:
    """Input channels of a saved network, read from its first convolution's weight."""
    for key in ("conv1.weight", "features.conv0.weight"):
        if key in state:
            return int(state[key].shape[1])
    first = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 4)
    return int(first.shape[1])


def load_net(path: str | Path, name: str, num_classes: int = 2) -> nn.Module:
    """Build network ``name`` and load a checkpoint written by ``p53hcc.tools.dl.engine`` (state dict or ``{"model": ...}``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    net = build_net(name, in_channels=infer_in_channels(state), num_classes=num_classes)
    net.load_state_dict(state)
    return net.eval()
