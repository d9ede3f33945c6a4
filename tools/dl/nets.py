"""The networks a study sweeps, built from MONAI: the paper's six 2D CNNs (ResNet18/34/50/101/152, DenseNet121)
with the standard topology, EfficientNet-B0, and two transformers (ViT-Tiny, Swin; :mod:`p53hcc.tools.dl.backbones`).

MONAI's ``ResNet`` defaults to a stride-1 stem (``conv1_t_stride=1``), which keeps 4x more pixels through the
network than torchvision's ResNet and is 2-4x slower; :func:`build_net` uses ``conv1_t_stride=2`` (7x7 stride-2
conv + 3x3 stride-2 max-pool), the topology the paper's ImageNet-style ResNets have. Pretrained weights come only from a local file
(:mod:`p53hcc.tools.dl.weights`; nothing is downloaded). :func:`feature_extractor` returns penultimate-layer
features (the FF arm). What the networks beyond the paper's need and can do: ``docs/dl_variants.md``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from p53hcc.tools.dl.backbones import VIT_SIZE, SwinClassifier, ViTClassifier, swin_width
from p53hcc.tools.dl.weights import load_pretrained
from p53hcc.tools.errors import P53hccError, check_choice
from p53hcc.tools.schema import NETS

_PENULTIMATE = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
                "densenet121": 1024, "efficientnet_b0": 1280, "vit": VIT_SIZE["hidden_size"], "swin": swin_width()}
#: Grad-CAM target layers per family, shallow to deep: the output of each convolutional stage (after its ReLU), of
#: each Swin stage (channel-first, after its patch merging) and EfficientNet's last stage of each stride.
#: Each stage halves the feature map; at the paper's 256 px input the last one is 8x8, at the demo's 32 px 1x1.
GRADCAM_LAYERS = {"resnet": ("layer1", "layer2", "layer3", "layer4"),
                  "densenet": ("features.transition1.relu", "features.transition2.relu",
                               "features.transition3.relu", "class_layers.relu"),
                  "efficientnet": ("_blocks.1", "_blocks.2", "_blocks.4", "_blocks.6"),
                  "swin": ("encoder.layers1.0", "encoder.layers2.0", "encoder.layers3.0", "encoder.layers4.0")}
#: p53hcc's classifiers around MONAI's transformer encoders, by class name (what ``network_config`` targets).
BACKBONES = {"ViTClassifier": ViTClassifier, "SwinClassifier": SwinClassifier}
#: The smallest crop side a network family accepts (EfficientNet-B0 fails below 32 px: measured).
MIN_SIDE = {"efficientnet": 32}
#: Packages a family needs at run time that MONAI imports only optionally (so no ``import`` names them): the
#: transformers' encoders rearrange tensors with einops. Installed with p53hcc, pinned in exported bundles.
RUNTIME_PACKAGES = {"vit": ("einops",), "swin": ("einops",)}
#: The classifier layer (input: the pooled penultimate features) of each family, as a module path.
CLASSIFIERS = {"resnet": "fc", "densenet": "class_layers.out", "efficientnet": "_fc",
               "vit": "vit.classification_head", "swin": "fc"}


def check_net_name(name: str) -> str:
    """Return ``name`` lower-cased if it is one of :data:`NETS`, else raise a one-line error."""
    return check_choice(name, NETS, "network")


def family(name: str) -> str:
    """``resnet``, ``densenet``, ``efficientnet``, ``vit`` or ``swin``."""
    key = check_net_name(name)
    return next(f for f in ("resnet", "densenet", "efficientnet", "vit", "swin") if key.startswith(f))


def penultimate_dim(name: str) -> int:
    """Width of the penultimate (pooled) feature vector of network ``name`` (ResNet18/34 512, the deeper ResNets
    2048, DenseNet121 1024, EfficientNet-B0 1280, ViT-Tiny 192, Swin 384)."""
    return _PENULTIMATE[check_net_name(name)]


def check_net_settings(name: str, spatial_size: int, patch_size: int | None = None) -> None:
    """The settings a network needs, checked before anything trains: a ViT's crop side must be a multiple of its
    patch size (the patches tile the crop); EfficientNet's 5x5 depthwise convolutions at stride 16 need a crop of
    at least :data:`MIN_SIDE` ``["efficientnet"]`` px; the other networks take any crop of at least 8 px.

    Raises:
        P53hccError: naming the network, the values and what would fit.
    """
    kind = family(name)
    if int(spatial_size) < MIN_SIDE.get(kind, 0):
        raise P53hccError(f"network {name}: spatial_size {spatial_size} is too small (its deepest convolutions need "
                          f"a crop of at least {MIN_SIDE[kind]} px); set spatial_size >= {MIN_SIDE[kind]}")
    if kind == "vit" and (not patch_size or int(spatial_size) % int(patch_size)):
        fits = [p for p in (4, 8, 16, 32) if int(spatial_size) % p == 0 and p < int(spatial_size)]
        raise P53hccError(f"network {name}: spatial_size {spatial_size} is not a multiple of patch_size "
                          f"{patch_size} (the patches must tile the crop); patch sizes that fit: "
                          f"{', '.join(map(str, fits)) or 'none: choose another spatial_size'}")


def _target(cls: type) -> str:
    """A class's import path as its module names it: p53hcc's own here, the bundle's ``scripts`` in an exported
    copy of this module (so the copy names no p53hcc module)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def network_config(name: str = "resnet34", in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
                   spatial_size: int | None = None, patch_size: int | None = None) -> dict:
    """The network ``name`` as a bundle config item: its ``_target_`` and arguments (what :func:`build_net` builds,
    and what an exported bundle names as its ``network_def``). The CNNs are the stock MONAI networks; the
    transformers are the thin classifiers of :mod:`p53hcc.tools.dl.backbones` around MONAI's encoders
    (``spatial_size`` and ``patch_size``: the ViT's input and patch side)."""
    key = check_net_name(name)
    kind = family(key)
    if kind == "densenet":
        return {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": spatial_dims,
                "in_channels": in_channels, "out_channels": num_classes}
    if kind == "efficientnet":
        return {"_target_": "monai.networks.nets.EfficientNetBN", "model_name": key.replace("_", "-"),
                "pretrained": False, "spatial_dims": spatial_dims, "in_channels": in_channels,
                "num_classes": num_classes}
    if kind == "vit":
        check_net_settings(key, spatial_size or 0, patch_size)
        return {"_target_": _target(ViTClassifier), "in_channels": in_channels,
                "img_size": int(spatial_size), "patch_size": int(patch_size), "num_classes": num_classes,
                "spatial_dims": spatial_dims}
    if kind == "swin":
        return {"_target_": _target(SwinClassifier), "in_channels": in_channels,
                "num_classes": num_classes, "spatial_dims": spatial_dims}
    return {"_target_": f"monai.networks.nets.{key}", "spatial_dims": spatial_dims, "n_input_channels": in_channels,
            "num_classes": num_classes, "conv1_t_size": 7, "conv1_t_stride": 2, "pretrained": False}


def build_net(name: str = "resnet34", in_channels: int = 3, num_classes: int = 2, spatial_dims: int = 2,
              pretrained_path: str | None = None, spatial_size: int | None = None,
              patch_size: int | None = None) -> nn.Module:
    """Build one of the networks (:data:`NETS`; the CNNs with a standard, torchvision-like stem).

    Args:
        name: resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | densenet121 | efficientnet_b0 | vit | swin.
        in_channels: input channels (3 for the MC arm: AP, PVP, DP; 1 for one phase).
        num_classes: output logits (2: P53 wild type / mutated).
        spatial_dims: 2 (the paper's 2D models).
        spatial_size / patch_size: the input side and the patch side of a ViT (ignored by the other networks).
        pretrained_path: optional local weights: a state-dict file in torchvision's (ImageNet, RadImageNet...) or
            p53hcc's format, or a folder holding ``<name>.pth`` per network; mapped onto the network by
            :func:`p53hcc.tools.dl.weights.load_pretrained` (any mismatch but the classifier is an error).

    Returns:
        The ``torch.nn.Module`` (logits output).
    """
    from monai.networks import nets

    key = check_net_name(name)
    spec = network_config(key, in_channels, num_classes, spatial_dims, spatial_size, patch_size)
    cls = spec.pop("_target_").rpartition(".")[2]
    net = (BACKBONES[cls] if cls in BACKBONES else getattr(nets, cls))(**spec)  # p53hcc's or the bundle's copy
    if pretrained_path:
        load_pretrained(net, pretrained_path, name=key)
    return net


def net_family(net: nn.Module) -> str:
    """The family (:func:`family`) of a network built by :func:`build_net`, read from its modules."""
    net = getattr(net, "module", net)  # DDP / compiled wrappers
    net = getattr(net, "_orig_mod", net)
    for kind, test in (("densenet", "class_layers"), ("efficientnet", "_blocks"), ("vit", "vit"),
                       ("swin", "encoder")):
        if hasattr(net, test):
            return kind
    return "resnet"


def final_linear(net: nn.Module) -> nn.Linear:
    """The classifier ``Linear`` layer whose input is the penultimate feature vector."""
    net = getattr(net, "module", net)  # DDP / compiled wrappers
    net = getattr(net, "_orig_mod", net)
    layer = dict(net.named_modules()).get(CLASSIFIERS[net_family(net)])
    if not isinstance(layer, nn.Linear):
        raise P53hccError(f"cannot find the classifier layer of {type(net).__name__}")
    return layer


def gradcam_layers(net: nn.Module) -> tuple[str, ...]:
    """The Grad-CAM candidate layers of a network from :func:`build_net`, shallow to deep.

    Raises:
        P53hccError: a ViT, which has no feature map (its tokens would have to be folded back into a grid).
    """
    kind = net_family(net)
    if kind == "vit":
        raise P53hccError("Grad-CAM: a ViT has no convolutional feature map (its patch tokens are not a grid a "
                          "gradient-weighted map can be drawn on); explain another network of the sweep, or use "
                          "an attention method outside p53hcc")
    return GRADCAM_LAYERS[kind]


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


def _stem(state: dict) -> torch.Tensor:
    for key in ("conv1.weight", "features.conv0.weight"):
        if key in state:
            return state[key]
    return next(v for k, v in state.items() if k.endswith("weight") and v.ndim in (4, 5))


def infer_in_channels(state: dict) -> int:
    """Input channels of a saved network, read from its first convolution's weight."""
    return int(_stem(state).shape[1])


def infer_shape(state: dict) -> dict[str, int]:
    """What building a saved network needs besides its name, read from its tensors: ``in_channels``,
    ``spatial_dims`` (the first convolution's kernel rank) and, for a ViT, ``patch_size`` (its patch convolution's
    kernel) and ``spatial_size`` (from the number of position embeddings)."""
    stem = _stem(state)
    out = {"in_channels": int(stem.shape[1]), "spatial_dims": stem.ndim - 2}
    pos = state.get("vit.patch_embedding.position_embeddings")
    if pos is not None:
        patch = int(stem.shape[-1])
        out.update(patch_size=patch, spatial_size=patch * round(pos.shape[1] ** (1 / out["spatial_dims"])))
    return out


def load_net(path: str | Path, name: str, num_classes: int = 2) -> nn.Module:
    """Build network ``name`` and load a checkpoint written by ``p53hcc.tools.dl.engine`` (state dict or ``{"model": ...}``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    net = build_net(name, num_classes=num_classes, **infer_shape(state))
    net.load_state_dict(state)
    return net.eval()
