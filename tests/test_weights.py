"""Initialisation from a local torchvision-format weights file (p53hcc.tools.dl.weights), written by the test itself.

The checkpoints are made the way torchvision names its tensors (ResNet: no bias in the downsample convolutions,
a 1000-class ``fc``; DenseNet: ``denselayerN.norm1`` without MONAI's ``layers`` block, ``classifier``), with
ImageNet's three-channel stem, so the mapping onto the project's MONAI networks is checked end to end: the
loaded network must compute exactly what the checkpoint's network computes.
"""
from __future__ import annotations

import re

import pytest
import torch

from p53hcc.tools.dl.nets import build_net, feature_extractor
from p53hcc.tools.dl.weights import load_pretrained, weights_file
from p53hcc.tools.errors import P53hccError


def torchvision_checkpoint(name: str, seed: int = 1, old_densenet: bool = False) -> tuple[torch.nn.Module, dict]:
    """A 3-channel network with random weights and its state dict under torchvision's names (1000 classes)."""
    torch.manual_seed(seed)
    src = build_net(name, in_channels=3).eval()
    for key, value in src.state_dict().items():  # torchvision ResNets have no downsample bias: make it zero
        if key.endswith("downsample.0.bias"):
            value.zero_()
        if key.endswith("running_var"):  # non-trivial BatchNorm statistics, so a missed tensor shows
            value.uniform_(0.5, 2.0)
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
    state = {}
    for key, value in src.state_dict().items():
        if key.endswith("downsample.0.bias"):
            continue
        key = key.replace(".layers.", ".")
        if old_densenet:  # torchvision < 0.4 checkpoints: denselayer1.norm.1.weight
            key = re.sub(r"(denselayer\d+)\.(norm|relu|conv)([12])\.", r"\1.\2.\3.", key)
        key = key.replace("class_layers.out.", "classifier.")
        state[key] = value.clone()
    head = "fc" if name.startswith("resnet") else "classifier"
    width = state[f"{head}.weight"].shape[1]
    state[f"{head}.weight"], state[f"{head}.bias"] = torch.randn(1000, width), torch.randn(1000)
    return src, state


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_torchvision_weights_give_the_same_network(tmp_path, name):
    src, state = torchvision_checkpoint(name)
    assert not any(".layers." in k for k in state) and "layer1.0.downsample.0.bias" not in state
    torch.save(state, tmp_path / "imagenet.pth")
    torch.manual_seed(99)
    fresh_head = build_net(name, in_channels=3)
    torch.manual_seed(99)
    dst = build_net(name, in_channels=3, pretrained_path=str(tmp_path / "imagenet.pth")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, got = feature_extractor(src)(x), feature_extractor(dst)(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # every backbone tensor mapped
    head = "fc" if name.startswith("resnet") else "class_layers.out"
    # the 1000-class ImageNet classifier is not loaded: the 2-class head keeps its fresh initialisation
    assert torch.equal(dst.state_dict()[f"{head}.weight"], fresh_head.state_dict()[f"{head}.weight"])


def test_old_densenet_names_and_one_channel_stem(tmp_path):
    src, state = torchvision_checkpoint("densenet121", old_densenet=True)
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save({"state_dict": state}, tmp_path / "w.pth")  # wrapped checkpoints are unwrapped
    one = build_net("densenet121", in_channels=1, pretrained_path=str(tmp_path / "w.pth")).eval()
    grey = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # a grey image in all three colour channels == the summed one-channel stem
        torch.testing.assert_close(feature_extractor(one)(grey), feature_extractor(src)(grey.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-4)


def test_resnet_one_channel_stem_and_folder_of_weights(tmp_path):
    src, state = torchvision_checkpoint("resnet18")
    (tmp_path / "weights").mkdir()
    torch.save(state, tmp_path / "weights" / "resnet18.pth")
    assert weights_file(tmp_path / "weights", "resnet18") == tmp_path / "weights" / "resnet18.pth"
    one = build_net("resnet18", in_channels=1, pretrained_path=str(tmp_path / "weights")).eval()
    grey = torch.randn(3, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(feature_extractor(one)(grey), feature_extractor(src)(grey.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-4)
    with pytest.raises(P53hccError, match="has no resnet34.pth or resnet34.pt"):
        build_net("resnet34", pretrained_path=str(tmp_path / "weights"))


def test_mismatched_weights_are_an_error_naming_the_tensors(tmp_path):
    _, state = torchvision_checkpoint("resnet34")
    torch.save(state, tmp_path / "resnet34.pth")
    with pytest.raises(P53hccError, match=r"do not match resnet18: .*tensor\(s\) the network does not have "
                                          r"\(e\.g\. layer1\.2\."):
        build_net("resnet18", pretrained_path=str(tmp_path / "resnet34.pth"))
    _, dense = torchvision_checkpoint("densenet121")
    torch.save(dense, tmp_path / "densenet.pth")
    with pytest.raises(P53hccError, match="do not match resnet50: .*missing from the file"):
        build_net("resnet50", pretrained_path=str(tmp_path / "densenet.pth"))
    _, r18 = torchvision_checkpoint("resnet18")
    r18["conv1.weight"] = torch.randn(64, 4, 7, 7)  # a four-channel stem cannot feed three or one channels
    torch.save(r18, tmp_path / "four.pth")
    with pytest.raises(P53hccError, match=r"another shape \(e\.g\. conv1\.weight \(64, 4, 7, 7\) vs \(64, 3, 7, 7\)"):
        build_net("resnet18", pretrained_path=str(tmp_path / "four.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(P53hccError, match="cannot read pretrained weights"):
        load_pretrained(build_net("resnet18"), tmp_path / "junk.pth")


def test_replaced_weights_change_the_resume_key(tmp_path):
    from p53hcc.tools.dl.crossfit import init_weights_digest

    assert init_weights_digest({"pretrained_path": None}, "resnet18") == {}  # from scratch: keys as before
    _, state = torchvision_checkpoint("resnet18")
    torch.save(state, tmp_path / "resnet18.pth")
    first = init_weights_digest({"pretrained_path": str(tmp_path)}, "resnet18")
    state["conv1.weight"] += 1
    torch.save(state, tmp_path / "resnet18.pth")
    assert init_weights_digest({"pretrained_path": str(tmp_path)}, "resnet18") != first
