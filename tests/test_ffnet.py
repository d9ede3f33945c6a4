"""The FF arm as one network (three phase CNNs + the fitted PCA -> LASSO -> LR head in torch) gives the scikit-learn
head's scores, scripted or not, also when the LASSO keeps nothing."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from p53hcc.fusion.models.ffhead import make_ff_head, wide_features
from p53hcc.tools.dl.arms import features_frame
from p53hcc.tools.dl.ffnet import FFNet, ff_network, headless
from p53hcc.tools.dl.nets import build_net, feature_extractor
from p53hcc.tools.schema import PHASES


@pytest.fixture(scope="module")
def phase_nets(tmp_path_factory):
    """Three saved 1-channel resnet18s, 30 patients' crops, and their penultimate features (tidy)."""
    root = tmp_path_factory.mktemp("full")
    torch.manual_seed(0)
    x = torch.randn(30, 3, 32, 32)
    ids = [f"P{i:02d}" for i in range(30)]
    parts = []
    for i, phase in enumerate(PHASES):
        net = build_net("resnet18", in_channels=1).eval()
        (root / phase).mkdir()
        torch.save(net.state_dict(), root / phase / "model.pt")
        extractor = feature_extractor(net)
        with torch.no_grad():
            parts.append(features_frame(ids, phase, -1, extractor(x[:, i:i + 1]).numpy()))
        extractor.remove()
    return root, x, wide_features(pd.concat(parts, ignore_index=True), PHASES)


@pytest.mark.parametrize("lasso_C", [1.0, 1e-4])
def test_ffnet_reproduces_the_sklearn_head(phase_nets, lasso_C):
    root, x, wide = phase_nets
    y = np.array([0, 1] * 15)
    head = make_ff_head(n_components=4, lasso_C=lasso_C).fit(wide, y)
    assert (head.n_selected_ > 0) == (lasso_C == 1.0)  # 1e-4: LASSO keeps nothing, the score is the prevalence
    model = ff_network(root, "resnet18", head)
    expected = head.predict_proba(wide)[:, 1]
    with torch.no_grad():
        got = torch.softmax(model(x), dim=1)[:, 1].numpy()
        scripted = torch.softmax(torch.jit.script(model)(x), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(scripted, got, rtol=1e-6)
    fresh = FFNet("resnet18", [4, 4, 4], head.n_selected_ if head.lr_ is not None else 0)
    fresh.load_state_dict(model.state_dict())  # the config's network_def loads the exported weights
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(fresh.eval()(x), 1)[:, 1].numpy(), got, rtol=1e-6)


def test_headless_network_gives_the_hooked_features():
    net = build_net("densenet121", in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    extractor = feature_extractor(net)
    with torch.no_grad():
        hooked = extractor(x)
    extractor.remove()
    with torch.no_grad():
        assert torch.allclose(headless(net)(x), hooked)
