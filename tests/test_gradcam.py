"""Grad-CAM: the target layer by feature-map size, maps that find a known discriminative blob, the
model-randomisation sanity check (Adebayo et al. 2018) and the figure."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from p53hcc.fusion.report.gradcam_figure import figure_caption, heat_rgba, radiological_view, save_overlay
from p53hcc.tools.dl.gradcam import (
    TargetLayer,
    choose_layer,
    gradcam_maps,
    randomised_copy,
    sanity_check,
    scale_maps,
    spearman,
)
from p53hcc.tools.dl.nets import build_net, feature_map_sizes
from p53hcc.tools.errors import P53hccError


@pytest.fixture(scope="module")
def net_and_images():
    torch.manual_seed(0)
    net = build_net("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    x[:, :, 10:30, 10:30] += 3.0  # a bright "tumour" so the maps have structure
    return net, x


@pytest.mark.parametrize("name, size, layer, cells", [
    ("resnet18", 32, "layer1", (8, 8)), ("resnet18", 64, "layer2", (8, 8)), ("resnet18", 128, "layer3", (8, 8)),
    ("resnet18", 256, "layer4", (8, 8)), ("resnet50", 96, "layer2", (12, 12)),
    ("densenet121", 32, "features.transition1.relu", (8, 8)),
    ("densenet121", 128, "features.transition3.relu", (8, 8)), ("densenet121", 256, "class_layers.relu", (8, 8)),
])
def test_the_layer_is_the_deepest_with_at_least_7x7_cells_at_the_input_size(name, size, layer, cells):
    net = build_net(name, in_channels=1)
    target = choose_layer(net, (1, size, size))
    assert (target.name, target.cells, target.input_size, target.chosen_by) == (layer, cells, (size, size), "auto")
    assert target.describe() == f"layer {layer} ({cells[0]}x{cells[1]} cells) at {size}x{size} px input"
    assert target.warning() is None


def test_feature_map_sizes_are_measured_not_assumed():
    net = build_net("resnet18")
    sizes = feature_map_sizes(net, (3, 32, 48))  # not square: each side halves on its own
    assert sizes == {"layer1": (8, 12), "layer2": (4, 6), "layer3": (2, 3), "layer4": (1, 2)}
    assert net.training  # the probe leaves the network's mode alone
    with pytest.raises(P53hccError, match="layer9.*layer1, layer2"):
        feature_map_sizes(net, (3, 32, 32), ("layer9",))


def test_a_1x1_map_is_refused_and_a_2x2_map_warned_about(caplog):
    net = build_net("resnet18")
    with pytest.raises(P53hccError, match=r"layer4 \(1x1 cells\) at 32x32 px input is a single value.*layer1 8x8"):
        choose_layer(net, (3, 32, 32), layer="layer4")  # the old default layer at the demo's input size
    with caplog.at_level(logging.WARNING, logger="p53hcc.tools.dl.gradcam"):
        target = choose_layer(net, (3, 32, 32), layer="layer3")
    assert target.chosen_by == "user" and target.cells == (2, 2) and target.coarse
    assert "coarse map" in caplog.text and "coarse map" in target.warning()
    tiny = choose_layer(build_net("resnet18"), (3, 16, 16))  # no stage reaches 7x7: the finest one, 4x4
    assert tiny.name == "layer1" and tiny.cells == (4, 4) and not tiny.coarse


# ----------------------------------------------------------------------------------------- the known blob
def blob_images(n: int, channels: int, seed: int, size: int = 32):
    """Noise images ``[n, C, size, size]``: every image has a dark disk (not discriminative), the odd-numbered ones
    (label 1) also a bright disk at a random place at least 3 radii away (radius ``size / 8``); returns images,
    labels, the bright disks' centres and their radius.
    """
    g = np.random.default_rng(seed)
    radius = size // 8
    rows, cols = np.mgrid[:size, :size]
    x = g.normal(0.0, 1.0, (n, channels, size, size)).astype(np.float32)
    y = np.arange(n) % 2
    centres = np.zeros((n, 2))
    for i in range(n):
        for _ in range(100):
            bright, dark = g.uniform(radius + 1, size - radius - 1, (2, 2))
            if np.hypot(*(bright - dark)) >= 3 * radius:
                break
        x[i, :, np.hypot(rows - dark[0], cols - dark[1]) <= radius] -= 2.5
        centres[i] = bright
        if y[i]:
            x[i, :, np.hypot(rows - bright[0], cols - bright[1]) <= radius] += 2.5
    return torch.from_numpy(x), torch.from_numpy(y), centres, radius


def train_blob_finder(channels: int, name: str = "resnet18", size: int = 32) -> torch.nn.Module:
    """One of the project's networks trained a few epochs to tell images with the bright disk from those without."""
    x, y, _, _ = blob_images(160, channels, seed=0, size=size)
    torch.manual_seed(0)
    net = build_net(name, in_channels=channels)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(4):
        net.train()
        for idx in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for m in net.modules():  # exact BatchNorm statistics of the training set (a few epochs leave them lagging)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        net(x)
    return net.eval()


def peaks_inside(maps: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Whether each map's maximum lies inside its disk (half a pixel of slack)."""
    peaks = np.array([np.unravel_index(np.argmax(m), m.shape) for m in maps])
    return np.hypot(*(peaks - centres).T) <= radius + 0.5


@pytest.mark.parametrize("channels, name, size", [
    (3, "resnet18", 32), (1, "resnet18", 32), (1, "densenet121", 32),
    (1, "resnet18", 64), pytest.param(3, "resnet18", 128, marks=pytest.mark.slow)],
    ids=["MC-3-channel", "FF-1-channel", "FF-densenet121", "FF-64px", "MC-128px"])
def test_the_map_peaks_inside_the_discriminative_blob(channels, name, size):
    net = train_blob_finder(channels, name, size)
    x, y, centres, radius = blob_images(64, channels, seed=1, size=size)
    with torch.no_grad():
        pred = net(x).argmax(1)
    assert (pred == y).float().mean() >= 0.85  # the network did learn the blob, so its map should show it
    found = [i for i in range(len(x)) if y[i] == 1 and pred[i] == 1]
    target = choose_layer(net, tuple(x.shape[1:]))
    assert target.cells == (8, 8)  # layer1 / transition1 at 32 px, layer2 at 64 px, layer3 at 128 px
    inside = peaks_inside(gradcam_maps(net, x[found]), centres[found], radius)
    assert inside.mean() >= 0.8, f"peak inside the blob for {inside.mean():.0%} of {len(found)} images"
    rand = gradcam_maps(randomised_copy(net), x[found])  # no learned weights: no blob
    assert peaks_inside(rand, centres[found], radius).mean() < 0.5


# ----------------------------------------------------------------------------------------- maps and sanity
def test_maps_shape_range_and_reproducible(net_and_images):
    net, x = net_and_images
    maps = gradcam_maps(net, x)
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0
    assert np.allclose(maps, gradcam_maps(net, x))
    scaled = scale_maps(maps)  # one scale for all maps: the common maximum becomes 1
    assert scaled.max() == pytest.approx(1.0) and np.allclose(scaled * maps.max(), maps)
    assert not scale_maps(np.zeros((2, 4, 4))).any()


def test_randomisation_changes_every_weight_and_the_maps(net_and_images):
    net, x = net_and_images
    rand = randomised_copy(net, seed=1)
    for (name, a), (_, b) in zip(net.state_dict().items(), rand.state_dict().items()):
        if a.ndim >= 2:  # conv / linear kernels (BN starts at 1/0 in an untrained net)
            assert not torch.equal(a, b), name
    maps = gradcam_maps(net, x)
    report = sanity_check(net, x, ["A", "B"], maps=maps)
    assert list(report.columns) == ["patient_id", "spearman_rho", "differs", "reason"]
    assert (report["spearman_rho"] < 0.99).all()  # the same maps would give rho = 1
    assert spearman(maps[0], maps[0]) == pytest.approx(1.0)
    assert spearman(maps[0], 2 * maps[0] + 1) == pytest.approx(1.0)  # rank-based
    assert np.isnan(spearman(np.zeros(4), np.arange(4)))


def test_an_undefined_rho_says_which_map_was_constant(net_and_images, monkeypatch):
    net, x = net_and_images
    structured = gradcam_maps(net, x)
    empty = np.zeros_like(structured)
    monkeypatch.setattr("p53hcc.tools.dl.gradcam.gradcam_maps", lambda *a, **k: empty)  # the randomised maps
    report = sanity_check(net, x, ["A", "B"], maps=structured, layer="layer2")
    assert report["spearman_rho"].isna().all() and report["differs"].all()  # structure only with learned weights
    assert (report["reason"] == "randomised map constant").all()
    monkeypatch.setattr("p53hcc.tools.dl.gradcam.gradcam_maps", lambda *a, **k: structured)
    report = sanity_check(net, x, ["A", "B"], maps=empty, layer="layer2")
    assert not report["differs"].any() and (report["reason"] == "trained map constant").all()


# ----------------------------------------------------------------------------------------- the figure
def test_heat_is_transparent_where_the_map_is_low():
    rgba = heat_rgba(np.array([[0.0, 0.1, 0.2, 0.6, 1.0]]))
    assert (rgba[0, :3, 3] == 0).all() and 0 < rgba[0, 3, 3] < rgba[0, 4, 3]
    assert rgba[0, 4, 0] > rgba[0, 4, 2]  # the top of the scale is red, not blue


def test_crops_are_shown_in_radiological_view():
    a = np.zeros((1, 8, 8))
    a[0, 7, 7] = 1.0  # RAS array: highest x (patient's right) and highest y (anterior)
    shown = radiological_view(a, 8)[0]
    assert shown[0, 0] == 1.0 and shown.sum() == 1.0  # top row (anterior), left column (patient's right)


def _colour(pixels: np.ndarray) -> float:
    return float(np.abs(pixels[..., 0] - pixels[..., 2]).max())


def test_overlay_png_colours_only_where_the_map_is_high(tmp_path):
    import matplotlib.image as mpimg

    x = np.random.default_rng(0).normal(size=(3, 32, 32))
    cam = np.zeros((3, 32, 32))
    cam[:, 12:20, 12:20] = 1.0
    mask = np.zeros((3, 32, 32))
    mask[:, 10:22, 10:22] = 1.0
    caption = figure_caption("ff", "resnet18", TargetLayer("layer1", (8, 8), (32, 32), "auto").describe(),
                             [0.1, 0.2, float("nan")], [True, True, False], ["", "", "trained map constant"],
                             ["ap", "pvp", "dp"])
    assert "layer layer1 (8x8 cells) at 32x32 px input" in caption
    assert "AP 0.10, PVP 0.20, DP n/a (trained map constant)" in caption
    assert "may show image structure" in caption  # DP's constant map does not pass the sanity check
    png = save_overlay(tmp_path / "a.png", x, cam, mask, title="t", caption=caption,
                       panel_notes=["P(mutated) 0.50"] * 3)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(png)[..., :3]
    assert img.shape[1] > 2.2 * img.shape[0]  # three phases side by side
    h, w = img.shape[:2]
    panel = img[int(0.15 * h):int(0.75 * h), : int(0.3 * w)]  # the AP panel (left of the colour bar)
    centre = img[int(0.43 * h):int(0.47 * h), int(0.13 * w):int(0.17 * w)]
    assert _colour(centre) > 0.3  # the map's maximum is coloured
    corner = panel[: int(0.1 * h), : int(0.1 * w)]
    assert _colour(corner) < 0.02  # where the map is 0 the crop stays grey (no wash)
    plain = mpimg.imread(save_overlay(tmp_path / "b.png", x, np.zeros((1, 32, 32))))[..., :3]
    assert _colour(plain[int(0.15 * h):int(0.75 * h), : int(0.3 * w)]) < 0.02
