"""Grad-CAM maps and the model-randomisation sanity check (Adebayo et al. 2018)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from p53hcc.tools.dl.gradcam import gradcam_maps, randomised_copy, sanity_check, save_overlay, spearman
from p53hcc.tools.dl.nets import build_net


@pytest.fixture(scope="module")
def net_and_images():
    torch.manual_seed(0)
    net = build_net("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    x[:, :, 10:30, 10:30] += 3.0  # a bright "tumour" so the maps have structure
    return net, x


def test_maps_shape_range_and_reproducible(net_and_images):
    net, x = net_and_images
    maps = gradcam_maps(net, x)
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert np.allclose(maps, gradcam_maps(net, x))


def test_randomisation_changes_every_weight_and_the_maps(net_and_images):
    net, x = net_and_images
    rand = randomised_copy(net, seed=1)
    for (name, a), (_, b) in zip(net.state_dict().items(), rand.state_dict().items()):
        if a.ndim >= 2:  # conv / linear kernels (BN starts at 1/0 in an untrained net)
            assert not torch.equal(a, b), name
    maps = gradcam_maps(net, x)
    report = sanity_check(net, x, ["A", "B"], maps=maps)
    assert list(report.columns) == ["patient_id", "spearman_rho", "differs"]
    assert (report["spearman_rho"] < 0.99).all()  # the same maps would give rho = 1
    assert spearman(maps[0], maps[0]) == pytest.approx(1.0)
    assert spearman(maps[0], 2 * maps[0] + 1) == pytest.approx(1.0)  # rank-based
    assert np.isnan(spearman(np.zeros(4), np.arange(4)))


def test_overlay_png(tmp_path, net_and_images):
    net, x = net_and_images
    png = save_overlay(tmp_path / "a.png", x[0].numpy(), gradcam_maps(net, x[:1])[0], title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
