"""Thin classifiers around MONAI's transformer encoders (the networks beyond the paper's CNNs).

MONAI's ``ViT`` returns ``(logits, hidden states)`` and its ``SwinTransformer`` (the SwinUNETR encoder) returns the
five stage outputs, so neither is a ``logits = net(x)`` classifier as the engines, the bundles' evaluators, the
FF arm's feature hook and TorchScript expect. These wrappers add only that: ViT's own class-token head, and for
Swin a global average pool of the deepest stage and one linear layer (``fc``). Their sizes are fixed per name, like
``resnet18`` vs ``resnet34``, and are published small configurations:

* ``vit``: ViT-Tiny (DeiT-Ti: hidden size 192, MLP 768, 12 layers, 3 heads; 5.4 M weights at 3x32x32 with 8 px
  patches); the patch size is the study's ``patch_size`` (the crop side must be a multiple of it).
* ``swin``: the SwinUNETR encoder at its default size (feature size 24, depths 2-2-2-2, heads 3-6-12-24, window 7,
  patch 2: 1.6 M weights); pooled deepest stage (16 x 24 = 384 features) -> linear.

The study uses them in 2D (MONAI's encoders also take ``spatial_dims=3``). Their settings and data appetite: ``docs/dl_variants.md``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: ViT-Tiny (DeiT-Ti) dimensions.
VIT_SIZE = {"hidden_size": 192, "mlp_dim": 768, "num_layers": 12, "num_heads": 3}
#: The SwinUNETR encoder's default size.
SWIN_SIZE = {"embed_dim": 24, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window": 7, "patch": 2}


class ViTClassifier(nn.Module):
    """MONAI's ``ViT`` in classification mode (class token -> linear head), returning the logits only.

    Args:
        in_channels: input channels.
        img_size: side of the (square / cubic) input.
        patch_size: side of a patch; ``img_size`` must be a multiple of it.
        num_classes: output logits.
        spatial_dims: 2 or 3.
    """

    def __init__(self, in_channels: int, img_size: int, patch_size: int, num_classes: int = 2,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        self.vit = ViT(in_channels=in_channels, img_size=[int(img_size)] * spatial_dims,
                       patch_size=[int(patch_size)] * spatial_dims, classification=True, num_classes=num_classes,
                       spatial_dims=spatial_dims, post_activation=None, **VIT_SIZE)
        # each block also holds a cross-attention branch the classifier never runs: frozen, so distributed
        # training (DDP, which expects a gradient for every trainable weight) and optimizers skip it
        for name, weight in self.vit.named_parameters():
            if "cross_attn" in name:
                weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)[0]


class SwinClassifier(nn.Module):
    """MONAI's Swin transformer encoder (SwinUNETR's) -> global average pool of the deepest stage -> ``fc``.

    Args:
        in_channels: input channels.
        num_classes: output logits.
        spatial_dims: 2 or 3.
        embed_dim, depths, num_heads, window, patch: the encoder's size (default :data:`SWIN_SIZE`).
    """

    def __init__(self, in_channels: int, num_classes: int = 2, spatial_dims: int = 2,
                 embed_dim: int = SWIN_SIZE["embed_dim"], depths: Sequence[int] = SWIN_SIZE["depths"],
                 num_heads: Sequence[int] = SWIN_SIZE["num_heads"], window: int = SWIN_SIZE["window"],
                 patch: int = SWIN_SIZE["patch"]) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        self.encoder = SwinTransformer(in_chans=in_channels, embed_dim=embed_dim, window_size=[window] * spatial_dims,
                                       patch_size=[patch] * spatial_dims, depths=list(depths),
                                       num_heads=list(num_heads), spatial_dims=spatial_dims)
        self.fc = nn.Linear(embed_dim * 2 ** len(depths), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deepest = self.encoder(x)[-1]
        return self.fc(torch.flatten(deepest, 2).mean(dim=2))


def swin_width() -> int:
    """Width of the Swin classifier's pooled features (the deepest stage's channels) at :data:`SWIN_SIZE`."""
    return SWIN_SIZE["embed_dim"] * 2 ** len(SWIN_SIZE["depths"])
