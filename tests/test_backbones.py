"""The networks beyond the paper's six (EfficientNet-B0, ViT-Tiny, Swin): their published sizes, what the engines
need of them (logits, penultimate features, the classifier layer, a headless copy for the FF arm, a reloadable
checkpoint), the settings they need (checked before anything runs), the warm-up schedule and Grad-CAM's reach."""
from __future__ import annotations

import pytest
import torch

from p53hcc.tools.dl.bundle import applied_params, training_params
from p53hcc.tools.dl.components import with_warmup
from p53hcc.tools.dl.ffnet import FFNet, headless
from p53hcc.tools.dl.gradcam import choose_layer, gradcam_maps
from p53hcc.tools.dl.nets import (
    build_net,
    check_net_settings,
    feature_extractor,
    final_linear,
    gradcam_layers,
    load_net,
    penultimate_dim,
)
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import params_hash
from p53hcc.tools.pipeline.config import resolve_config

NEW = ("efficientnet_b0", "vit", "swin")
SIZE = {"spatial_size": 32, "patch_size": 8}


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_efficientnet_b0_has_the_published_size():
    # torchvision's efficientnet_b0 (ImageNet, 1000 classes): 5,288,548 parameters, the same network as MONAI's
    assert _count(build_net("efficientnet_b0", num_classes=1000)) == 5_288_548


def test_vit_is_deit_tiny():
    # DeiT-Ti (timm deit_tiny_patch16_224): 5,717,416 parameters. MONAI's ViT has no qkv bias (12 x 576 fewer), no
    # position embedding for the class token (192 fewer) and an unused cross-attention norm per block (12 x 384 more)
    net = build_net("vit", num_classes=1000, spatial_size=224, patch_size=16)
    assert _count(net) == 5_717_416 - 12 * 576 - 192 + 12 * 384
    assert len(net.vit.blocks) == 12 and net.vit.blocks[0].attn.num_heads == 3 and penultimate_dim("vit") == 192


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("channels", [3, 1])
def test_each_new_net_steps_and_gives_its_penultimate_features(name, channels):
    torch.manual_seed(0)
    net = build_net(name, in_channels=channels, **SIZE)
    fe = feature_extractor(net)
    x = torch.randn(2, channels, 32, 32)
    feats = fe(x)
    assert feats.shape == (2, penultimate_dim(name)) and fe.logits.shape == (2, 2)
    # the hooked features are the classifier's input: the classifier reproduces the logits from them
    assert torch.allclose(final_linear(net)(feats), fe.logits, atol=1e-5)
    fe.logits.sum().backward()
    # every trainable weight gets a gradient (DDP needs it); the ViT's unused cross-attention branch is frozen
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert all("cross_attn" in k for k, p in net.named_parameters() if not p.requires_grad)
    fe.remove()
    net.eval()
    with torch.no_grad():
        hooked = feature_extractor(net)(x)
        assert torch.allclose(headless(net)(x), hooked, atol=1e-5)  # the FF arm's scriptable copy


@pytest.mark.parametrize("name", NEW)
def test_a_saved_network_reloads_with_its_shape(name, tmp_path):
    src = build_net(name, in_channels=1, spatial_size=48, patch_size=16).eval()
    torch.save(src.state_dict(), tmp_path / "model.pt")
    back = load_net(tmp_path / "model.pt", name)  # the ViT's input and patch side come from its tensors
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(back(x), src(x))


@pytest.mark.parametrize("name", NEW)
def test_the_ff_network_builds_each_new_phase_network(name):
    model = FFNet(name, [2, 2, 2], 1, **SIZE).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 2) and torch.all(out[:, 0] == 0)


def test_vit_settings_are_checked_before_anything_runs():
    with pytest.raises(P53hccError, match=r"vit: spatial_size 36 is not a multiple of patch_size 8.*fit: 4"):
        check_net_settings("vit", 36, 8)
    with pytest.raises(P53hccError, match="efficientnet_b0: spatial_size 24 is too small.*>= 32"):
        check_net_settings("efficientnet_b0", 24)
    check_net_settings("resnet18", 36, 8)  # a patch size means nothing to a CNN
    with pytest.raises(P53hccError, match=r"dl.patch_size.*spatial_size 36 is not a multiple of patch_size 8"):
        resolve_config(nets="resnet18,vit", spatial_size=36, patch_size=8)
    with pytest.raises(P53hccError, match="vit: spatial_size 36"):
        training_params("mc", net="vit", spatial_size=36, patch_size=8)
    cfg = resolve_config(nets="resnet18,vit,swin,efficientnet_b0", spatial_size=32, patch_size=8, warmup_epochs=2)
    assert cfg["dl"]["nets"] == ["resnet18", "vit", "swin", "efficientnet_b0"] and cfg["dl"]["warmup_epochs"] == 2
    assert resolve_config()["dl"]["nets"] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                                              "densenet121"]  # the paper's six stay the default sweep


def test_the_resume_key_changes_only_with_what_a_network_uses():
    base = training_params("mc", net="resnet18", spatial_size=32)
    key = params_hash(applied_params(base))
    assert params_hash(applied_params({**base, "patch_size": 4})) == key  # a CNN has no patches: not retrained
    assert params_hash(applied_params({**base, "warmup_epochs": 0})) == key
    assert params_hash(applied_params({**base, "warmup_epochs": 1})) != key
    vit = training_params("mc", net="vit", spatial_size=32, patch_size=8)
    assert params_hash(applied_params({**vit, "patch_size": 4})) != params_hash(applied_params(vit))


def test_warmup_ramps_the_rate_linearly_then_hands_over():
    def rates(warmup, scheduler=None):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = with_warmup(opt, scheduler(opt) if scheduler else None, warmup)
        out = []
        for _ in range(6):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
        return out

    assert rates(3) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])  # lr / (w + 1) up to lr in w epochs
    # after the warm-up the recipe's own schedule runs from its start: StepLR(step 2, gamma 0.1)
    def step(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)

    assert rates(2, step) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0, 0.1, 0.1])
    assert rates(0) == [1.0] * 6
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert with_warmup(opt, None, 0) is None  # no warm-up: the recipe's schedule itself, unchanged


@pytest.mark.parametrize("name, layer", [("efficientnet_b0", "_blocks.1"), ("swin", "encoder.layers1.0")])
def test_gradcam_explains_the_new_cnn_and_swin(name, layer):
    torch.manual_seed(0)
    net = build_net(name).eval()
    target = choose_layer(net, (3, 32, 32))
    assert (target.name, target.cells) == (layer, (8, 8))
    maps = gradcam_maps(net, torch.randn(2, 3, 32, 32), layer=target.name)
    assert maps.shape == (2, 32, 32) and (maps >= 0).all()


def test_gradcam_refuses_a_vit_naming_why():
    with pytest.raises(P53hccError, match="ViT has no convolutional feature map"):
        gradcam_layers(build_net("vit", **SIZE))


def test_the_study_draws_no_gradcam_of_a_chosen_vit_and_says_why(tmp_path, monkeypatch, caplog):
    import json
    from types import SimpleNamespace

    from p53hcc.tools.pipeline import explain
    from p53hcc.tools.pipeline.study import build_stages

    called = []
    monkeypatch.setattr(explain, "gradcam_command", lambda *a, **k: called.append(k["net"]))
    stage = next(s for s in build_stages(resolve_config(nets="vit,swin", spatial_size=32, patch_size=8),
                                         cohort_given=True) if s.name == "gradcam")
    ctx = SimpleNamespace(study_dir=tmp_path, params=stage.params)
    for net in ("vit", "swin"):
        chosen = {"arm": "mc", "net": net, "model": f"mc_{net}"}
        (tmp_path / "selection.json").write_text(json.dumps({"chosen": chosen}), encoding="utf-8")
        with caplog.at_level("WARNING"):
            stage.func(ctx)
    assert called == ["swin"]  # Swin is explained; the ViT is skipped with a reason in the log
    assert "mc_vit is a ViT, which has no feature map for Grad-CAM" in caplog.text


def test_an_exported_transformer_bundle_pins_the_package_monai_imports_only_optionally():
    """MONAI imports einops only when a ViT or Swin is built, so no ``import`` in the bundle code names it; a zoo
    environment built from ``required_packages_version`` alone would fail to build the network without the pin."""
    from p53hcc.tools.dl.nets import RUNTIME_PACKAGES, family
    from p53hcc.tools.export.metadata import release, required_packages

    for net in ("vit", "swin"):
        assert required_packages([], RUNTIME_PACKAGES.get(family(net), ()))["einops"] == release("einops")
    assert "einops" not in required_packages([], RUNTIME_PACKAGES.get(family("resnet18"), ()))
