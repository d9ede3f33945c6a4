"""N4 bias correction (array + dict) and the preprocessing chain on tiny synthetic phantoms."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from p53hcc.tools.preprocessing.chain import preprocessing_chain
from p53hcc.tools.preprocessing.n4 import (
    N4BiasFieldCorrection,
    N4BiasFieldCorrectiond,
    body_region,
    log_bias_error,
    n4_correct,
)
from p53hcc.tools.preprocessing.params import N4_DEFAULTS, PRESETS, N4Params, chain_params, resolve_params

SPACING = (1.5, 1.5, 4.0)
FAST = {"n_iterations": [20, 20, 10]}


def _phantom(shape=(48, 48, 12), spacing=SPACING, seed=0):
    """Homogeneous ellipsoidal 'body' (100) on a zero background, times a smooth field, plus a little noise."""
    grid = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    radii = [0.45 * n * s for n, s in zip(shape, spacing)]
    body = sum((g / r) ** 2 for g, r in zip(grid, radii)) < 1
    inner = sum((g / r) ** 2 for g, r in zip(grid, radii)) < 0.5
    x, y, z = (g / (n * s) for g, n, s in zip(grid, shape, spacing))
    bias = np.exp(0.35 * x - 0.5 * y**2 + 0.15 * z).astype(np.float32)
    noise = np.random.default_rng(seed).normal(0, 1.0, shape)
    image = (np.where(body, 100.0, 0.0) * bias + body * noise).astype(np.float32)
    return image, bias, inner


def _cv(a, region):
    return float(a[region].std() / a[region].mean())


def test_n4_removes_known_bias_at_full_resolution():
    image, _, inner = _phantom()
    corrected, field = n4_correct(image, SPACING, shrink_factor=4, **FAST)
    assert corrected.shape == image.shape and field.shape == image.shape  # shrunk fit, full-resolution field
    assert corrected.dtype == np.float32 and field.dtype == np.float32
    before, after = _cv(image, inner), _cv(corrected, inner)
    assert before > 0.05
    assert after < 0.35 * before, (before, after)
    np.testing.assert_allclose(corrected * field, image, rtol=1e-5, atol=1e-4)  # field * corrected == input
    assert np.all(np.isfinite(field)) and field.min() > 0


def test_n4_uses_physical_spacing():
    """With a physical control-point distance, the true anisotropic spacing gives a different field than 1 mm."""
    image, _, _ = _phantom()
    _, f_true = n4_correct(image, SPACING, spline_distance=40.0, **FAST)
    _, f_iso = n4_correct(image, (1.0, 1.0, 1.0), spline_distance=40.0, **FAST)
    _, f_again = n4_correct(image, SPACING, spline_distance=40.0, **FAST)
    np.testing.assert_allclose(f_true, f_again, rtol=1e-6)  # deterministic
    assert np.abs(f_true - f_iso).max() > 1e-3


def test_n4_masks_and_bad_parameters():
    image, _, inner = _phantom()
    corrected, _ = n4_correct(image, SPACING, mask=inner, **FAST)
    assert _cv(corrected, inner) < 0.5 * _cv(image, inner)
    with pytest.raises(ValueError, match="mask_mode"):
        n4_correct(image, SPACING, mask_mode="tumour")
    with pytest.raises(ValueError, match="empty"):
        n4_correct(np.zeros((16, 16, 8), np.float32), SPACING)
    with pytest.raises(ValueError, match="n_fitting_levels"):
        n4_correct(image, SPACING, n_iterations=[5, 5], n_fitting_levels=3)


def test_array_and_dict_transforms_keep_meta():
    image, _, _inner = _phantom()
    affine = torch.tensor(np.diag([*SPACING, 1.0]))
    img = MetaTensor(torch.from_numpy(image[None]), affine=affine, meta={"filename_or_obj": "ap.nii.gz"})
    out = N4BiasFieldCorrectiond("image", bias_key_postfix="bias", spline_distance=40.0, **FAST)(
        {"image": img, "label": 1})
    res = out["image"]
    assert isinstance(res, MetaTensor) and res.dtype == torch.float32 and res.shape == img.shape
    assert torch.equal(res.affine, img.affine) and res.meta["filename_or_obj"] == "ap.nii.gz"
    assert out["label"] == 1 and out["image_bias"].shape == img.shape
    # spacing is read from the MetaTensor affine: same result as the pure function with that spacing
    expected, _ = n4_correct(image, SPACING, spline_distance=40.0, **FAST)
    np.testing.assert_allclose(res.numpy()[0], expected, rtol=1e-5)
    plain = N4BiasFieldCorrection(pixdim=list(SPACING), spline_distance=40.0, **FAST)(image[None])
    np.testing.assert_allclose(plain[0], expected, rtol=1e-5)


def test_chain_resamples_to_1mm_and_masks_stay_binary(tmp_path):
    image, _, inner = _phantom(shape=(21, 21, 6))  # (n - 1) * spacing integral: no rounding ambiguity
    # LPS-stored file (x and y flipped in the affine): the chain reorients to RAS
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    nib.save(nib.Nifti1Image(inner.astype(np.uint8), affine), str(tmp_path / "mask.nii.gz"))
    chain = preprocessing_chain({"n4": FAST})
    out = chain({"image": str(tmp_path / "img.nii.gz"), "mask": str(tmp_path / "mask.nii.gz")})
    # MONAI keeps the extent between the outer voxel centres: (n - 1) * spacing / 1 mm + 1 voxels
    expected = (31, 31, 21)
    assert tuple(out["image"].shape[1:]) == expected and tuple(out["mask"].shape[1:]) == expected
    np.testing.assert_allclose(np.diag(out["image"].affine.numpy())[:3], [1.0, 1.0, 1.0], atol=1e-6)
    assert set(np.unique(out["mask"].numpy())) <= {0.0, 1.0} and out["mask"].sum() > 0
    body = out["image"].numpy()[0] != 0
    vals = out["image"].numpy()[0][body]
    assert abs(vals.mean()) < 1e-4 and abs(vals.std() - 1) < 1e-3  # z-score over the non-zero (body) voxels


def test_chain_params_rejects_unknown_keys():
    assert chain_params({"n4": {"shrink_factor": 2}})["n4"]["n_iterations"] == N4_DEFAULTS["n_iterations"]
    with pytest.raises(ValueError, match="unknown"):
        chain_params({"spacing": 1})
    with pytest.raises(ValueError, match="unknown N4"):
        chain_params({"n4": {"iterations": 3}})


def test_n4_does_not_depend_on_itk_thread_count():
    """A cached result must not depend on the machine: the default n_threads=1 pins N4's threaded reductions."""
    import SimpleITK as sitk

    image, _, _ = _phantom(shape=(24, 24, 8))
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    try:
        fields = []
        for threads in (1, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            fields.append(n4_correct(image, SPACING, **FAST)[1])
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)
    np.testing.assert_array_equal(fields[0], fields[1])


def test_one_home_for_the_n4_defaults():
    """N4Params holds the N4 defaults; the function, the transforms (which the bundles wire without arguments), the
    chain and the paper preset all take them from there."""
    assert N4BiasFieldCorrection().params == N4Params().to_dict() == N4_DEFAULTS
    assert chain_params()["n4"] == resolve_params("paper")["n4"] == resolve_params(None)["n4"] == N4_DEFAULTS
    image, _, _ = _phantom(shape=(24, 24, 8))
    np.testing.assert_array_equal(n4_correct(image, SPACING)[1], n4_correct(image, SPACING, **N4_DEFAULTS)[1])
    with pytest.raises(ValueError, match="unknown N4"):
        N4BiasFieldCorrection(shrink=4)


def test_presets_recover_the_synthetic_bias_field():
    """The ground-truth yardstick behind the presets (benchmarks/n4_presets.py): each preset's field is far closer
    to the true field than no correction, and the paper preset is at least as close as the strict 4-level
    schedule it replaced (whose finer levels fit anatomy)."""
    from benchmarks.n4_presets import render

    errors = {name: [] for name in (*PRESETS, "strict", "none")}
    strict = {"shrink_factor": 4, "n_iterations": [50, 50, 30, 20], "convergence_threshold": 1e-6}
    for _, scanner, _, image, spacing, truth in render(2, "demo", seed=1):
        if scanner != "S2_Skyra_3T":  # the second patient, on the 3 T profile: a strong field
            continue
        body = body_region(image)
        errors["none"].append(log_bias_error(np.ones_like(truth), truth, body))
        for name in PRESETS:  # the N4 parameters preprocessing resolves for each preset
            errors[name].append(log_bias_error(n4_correct(image, spacing, **resolve_params(name)["n4"])[1], truth,
                                               body))
        errors["strict"].append(log_bias_error(n4_correct(image, spacing, **strict)[1], truth, body))
    mean = {k: float(np.mean(v)) for k, v in errors.items()}
    assert mean["none"] > 0.1, mean  # the scanner's field is strong enough to matter
    for name in PRESETS:
        assert mean[name] < 0.5 * mean["none"], mean
    assert mean["paper"] <= mean["strict"], mean


def test_log_bias_error_ignores_a_constant_factor():
    rng = np.random.default_rng(0)
    truth = np.exp(rng.normal(0, 0.2, (8, 8, 4)))
    region = np.ones(truth.shape, bool)
    assert log_bias_error(3.0 * truth, truth, region) < 1e-12
    assert abs(log_bias_error(np.ones_like(truth), truth, region) - np.log(truth).std()) < 0.02
    with pytest.raises(ValueError, match="empty"):
        log_bias_error(truth, truth, np.zeros(truth.shape, bool))
