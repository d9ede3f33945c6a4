"""The whole FF arm as one network: three phase CNNs and the fitted FF head (PCA -> LASSO -> LR) in torch.

The study keeps the FF arm as three phase networks (``full/<phase>/model.pt``) and a scikit-learn head
(``full/head.joblib``, :class:`p53hcc.fusion.models.ffhead.FFHead`). Model-zoo tools, TorchScript and MONAI Deploy's
bundle operator expect one ``models/model.pt`` whose network maps the input image to the output, so
:class:`FFNet` holds all of it: AP|PVP|DP crops ``[B, 3, S, S]`` -> each phase's network up to its pooled
penultimate features -> that phase's standardisation and PCA -> the standardisation of the concatenated PCA
features -> the LASSO-retained columns -> the logistic regression's log-odds ``z``. It returns the logits
``[0, z]``, so the softmax of the bundles' postprocessing gives ``[1 - p, p]`` with ``p`` the FF score: the same
number the study's head gives (the head runs in float64, as scikit-learn does). :func:`ff_network` builds it from a
study's full-cohort FF folder.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from p53hcc.tools.dl.nets import build_net, final_linear, infer_shape, penultimate_dim
from p53hcc.tools.errors import P53hccError


def headless(net: nn.Module) -> nn.Module:
    """``net`` with its final linear layer replaced by the identity: it returns the pooled penultimate features.

    These are exactly the input of the classifier layer, i.e. what :func:`p53hcc.tools.dl.nets.feature_extractor`
    captures with a hook; unlike the hook, the result is scriptable.
    """
    layer = final_linear(net)  # an error naming the network when it has none
    parent, _, leaf = next(k for k, m in net.named_modules() if m is layer).rpartition(".")
    setattr(net.get_submodule(parent), leaf, nn.Identity())
    return net


class PhaseProjection(nn.Module):
    """One phase's part of the FF head: standardise the features, then project them on the PCA components."""

    def __init__(self, n_features: int, n_components: int) -> None:
        super().__init__()
        self.register_buffer("scaler_mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("scaler_scale", torch.ones(n_features, dtype=torch.float64))
        self.register_buffer("pca_mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("pca_components", torch.zeros(n_components, n_features, dtype=torch.float64))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.double() - self.scaler_mean) / self.scaler_scale
        return (z - self.pca_mean) @ self.pca_components.t()


class FFNet(nn.Module):
    """The FF arm in one module: ``[B, 3, S, S]`` AP|PVP|DP crops -> logits ``[B, 2]`` = ``[0, log-odds]``.

    Args:
        net: the phase networks' architecture.
        n_components: PCA components kept per phase (the fitted head's, capped by its training patients).
        n_selected: LASSO-retained PCA features (0: the head predicts the training prevalence, held in
            ``intercept``).
        spatial_dims: 2 (the paper's 2D networks).
        spatial_size / patch_size: a ViT's input and patch side (ignored by the other networks).
    """

    def __init__(self, net: str = "resnet34", n_components: Sequence[int] = (8, 8, 8), n_selected: int = 0,
                 spatial_dims: int = 2, spatial_size: int | None = None, patch_size: int | None = None) -> None:
        super().__init__()
        dim = penultimate_dim(net)
        self.phases = nn.ModuleList(
            [headless(build_net(net, in_channels=1, num_classes=2, spatial_dims=spatial_dims,
                                spatial_size=spatial_size, patch_size=patch_size)) for _ in n_components])
        self.projections = nn.ModuleList([PhaseProjection(dim, int(k)) for k in n_components])
        total = int(sum(int(k) for k in n_components))
        self.register_buffer("post_mean", torch.zeros(total, dtype=torch.float64))
        self.register_buffer("post_scale", torch.ones(total, dtype=torch.float64))
        self.register_buffer("selected", torch.zeros(int(n_selected), dtype=torch.long))
        self.register_buffer("coef", torch.zeros(int(n_selected), dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(1, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = []
        for i, (phase, projection) in enumerate(zip(self.phases, self.projections)):
            blocks.append(projection(phase(x[:, i : i + 1])))
        z = (torch.cat(blocks, dim=1) - self.post_mean) / self.post_scale
        logit = z.index_select(1, self.selected) @ self.coef + self.intercept
        return torch.stack([torch.zeros_like(logit), logit], dim=1).float()


def network_shape(net: nn.Module) -> dict[str, int]:
    """:class:`FFNet`'s shape arguments of a trained phase network (a ViT's input and patch side; none else)."""
    shape = infer_shape(net.state_dict())
    return {k: shape[k] for k in ("spatial_size", "patch_size") if k in shape}


def _tensor(values, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def ff_network(full_dir: str | Path, net: str, head) -> FFNet:
    """:class:`FFNet` of a study's full-cohort FF folder: ``<phase>/model.pt`` of each phase and the fitted head.

    Args:
        full_dir: ``STUDY/dl/ff/<net>/full``.
        net: the phase networks' architecture.
        head: the fitted :class:`p53hcc.fusion.models.ffhead.FFHead` (``full/head.joblib``), read through its fitted
            attributes only (``phases``, ``pcas_``, ``post_scaler_``, ``selected_``, ``lr_``, ``prevalence_``).
    """
    from p53hcc.tools.dl.nets import load_net

    full_dir = Path(full_dir)
    ks = [int(pca.n_components_) for _, pca in head.pcas_]
    selected = np.flatnonzero(np.asarray(head.selected_)) if head.lr_ is not None else np.zeros(0, int)
    nets = []
    for phase in head.phases:
        path = full_dir / phase / "model.pt"
        if not path.is_file():
            raise P53hccError(f"{path} not found: the FF arm of this study lacks its {phase} network")
        nets.append(headless(load_net(path, net)))
    model = FFNet(net, ks, len(selected), **network_shape(nets[0]))
    for backbone, trained, projection, (scaler, pca) in zip(model.phases, nets, model.projections, head.pcas_):
        backbone.load_state_dict(trained.state_dict())
        projection.scaler_mean.copy_(_tensor(scaler.mean_))
        projection.scaler_scale.copy_(_tensor(scaler.scale_))
        projection.pca_mean.copy_(_tensor(pca.mean_))
        projection.pca_components.copy_(_tensor(pca.components_))
    model.post_mean.copy_(_tensor(head.post_scaler_.mean_))
    model.post_scale.copy_(_tensor(head.post_scaler_.scale_))
    if head.lr_ is not None:
        model.selected.copy_(_tensor(selected, torch.long))
        model.coef.copy_(_tensor(head.lr_.coef_.ravel()))
        model.intercept.copy_(_tensor(head.lr_.intercept_))
    else:
        p = float(np.clip(head.prevalence_, 1e-6, 1 - 1e-6))
        model.intercept.fill_(float(np.log(p / (1 - p))))
    return model.eval()
