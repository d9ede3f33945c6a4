"""The paper's six networks (the others: test_backbones.py): build, one forward+backward step, penultimate features, standard stem, local weights."""
from __future__ import annotations

import pytest
import torch

from p53hcc.tools.dl.nets import (
    build_net,
    feature_extractor,
    load_net,
    load_pretrained,
    penultimate_dim,
)
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.schema import PAPER_NETS

# Penultimate widths of the paper's networks (ResNet basic blocks 512, bottleneck 2048, DenseNet121 1024).
WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
          "densenet121": 1024}


@pytest.mark.parametrize("name", PAPER_NETS)
def test_one_channel_nets_give_the_published_penultimate_width(name):
    net = build_net(name, in_channels=1, num_classes=2).eval()
    with torch.no_grad():
        feats = feature_extractor(net)(torch.randn(2, 1, 64, 64))
    assert feats.shape == (2, WIDTHS[name]) == (2, penultimate_dim(name))


@pytest.mark.parametrize("name", PAPER_NETS)
def test_each_net_steps_and_gives_penultimate_features(name):
    # 3x64x64 keeps the deep nets within the CPU test budget; the 256 input is checked once below.
    net = build_net(name)
    fe = feature_extractor(net)
    feats = fe(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, penultimate_dim(name)) and fe.logits.shape == (2, 2)
    fe.logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_256_input_and_standard_stem():
    net = build_net("resnet18")
    assert net.conv1.stride == (2, 2) and net.conv1.kernel_size == (7, 7)  # torchvision topology
    x = torch.randn(1, 3, 256, 256)
    out = net(x)
    assert out.shape == (1, 2)
    out.sum().backward()
    stem = net.maxpool(net.act(net.bn1(net.conv1(x))))
    assert stem.shape[-2:] == (64, 64)  # /4 after the stem, as in torchvision (MONAI's default stride 1 gives /2)


def test_local_pretrained_weights_and_checkpoint_roundtrip(tmp_path):
    src = build_net("resnet18", in_channels=1)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pt")
    dst = build_net("resnet18", in_channels=1, num_classes=5)
    skipped = load_pretrained(dst, tmp_path / "w.pt")
    assert skipped == ["fc.bias", "fc.weight"]  # classifier shape differs: skipped, everything else loaded
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    torch.save(src.state_dict(), tmp_path / "m.pt")
    back = load_net(tmp_path / "m.pt", "resnet18")
    assert back.conv1.in_channels == 1 and torch.equal(back.fc.weight, src.fc.weight)
    with pytest.raises(P53hccError):
        build_net("vgg16")
    with pytest.raises(P53hccError):
        build_net("resnet18", pretrained_path=str(tmp_path / "missing.pt"))
