"""2D ROI transforms on known geometry: largest slice per phase, bbox + 10 px clipped at the border, shapes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from p53hcc.tools.dl.roi import (
    BatchRandCropFlip,
    LargestAreaSlice,
    LargestAreaSliced,
    RenameKeysd,
    largest_area_index,
    roi_transforms,
)
from p53hcc.tools.errors import InputError


def _volume(shape=(40, 30, 8)):
    img = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, *shape)
    return MetaTensor(img, affine=torch.diag(torch.tensor([1.5, 1.5, 4.0, 1.0])))


def _mask(boxes, shape=(40, 30, 8)):
    m = torch.zeros(1, *shape)
    for (x0, x1, y0, y1, z) in boxes:
        m[0, x0:x1, y0:y1, z] = 1
    return MetaTensor(m, affine=torch.diag(torch.tensor([1.5, 1.5, 4.0, 1.0])))


def test_largest_area_index_picks_biggest_slice():
    mask = _mask([(2, 6, 20, 28, 3), (10, 12, 10, 12, 5), (0, 1, 0, 1, 7)])  # areas 32, 4, 1
    assert largest_area_index(mask) == 3
    assert largest_area_index(mask, axis=0) in range(2, 6)
    with pytest.raises(ValueError):
        largest_area_index(torch.zeros(1, 4, 4, 4))


def test_each_phase_uses_its_own_mask_and_keeps_index_in_meta():
    img = _volume()
    d = {"ap": img, "pvp": img.clone(), "ap_mask": _mask([(5, 9, 5, 9, 2)]),
         "pvp_mask": _mask([(5, 9, 5, 9, 6), (5, 6, 5, 6, 2)])}
    out = LargestAreaSliced(["ap", "pvp"], ["ap_mask", "pvp_mask"])(d)
    assert out["ap_roi_slice_index"] == 2 and out["pvp_roi_slice_index"] == 6
    assert out["ap"].shape == (1, 40, 30) and out["pvp_mask"].shape == (1, 40, 30)
    assert torch.equal(out["pvp"].as_tensor(), img[..., 6].as_tensor())
    assert out["ap"].meta["roi_slice_index"] == 2
    assert out["ap"].affine.shape == (3, 3)
    assert torch.equal(LargestAreaSlice()(img, _mask([(5, 9, 5, 9, 4)])).as_tensor(), img[..., 4].as_tensor())


def _reference_crop(img: torch.Tensor, mask: torch.Tensor, margin: int) -> torch.Tensor:
    """The crop of p53hcc <= 0.2 (its own bounding-box code): the mask's box + margin, clipped at the border."""
    idx = torch.nonzero(mask[0] != 0)
    start = [max(0, int(v) - margin) for v in idx.min(dim=0).values]
    end = [min(n, int(v) + 1 + margin) for v, n in zip(idx.max(dim=0).values, mask.shape[1:])]
    return img[:, start[0]:end[0], start[1]:end[1]]


@pytest.mark.parametrize("margin", [0, 3, 10])
def test_the_crop_is_the_mask_box_plus_margin_clipped_at_the_border(margin):
    """MONAI's CropForegroundd with the mask as source cuts exactly what the earlier hand-written crop cut: boxes
    inside the slice and at every border, several margins; the MC and FF chains give the same phases."""
    from monai.transforms import CropForegroundd

    rng = np.random.default_rng(0)
    boxes = [(2, 6, 20, 28), (0, 3, 0, 2), (35, 40, 25, 30), (10, 20, 5, 12), (0, 40, 0, 30)]
    for x0, x1, y0, y1 in boxes + [tuple(sorted(rng.integers(0, 40, 2))) + tuple(sorted(rng.integers(0, 30, 2)))
                                   for _ in range(20)]:
        m = torch.zeros(1, 40, 30)
        m[0, x0:max(x1, x0 + 1), y0:max(y1, y0 + 1)] = 1
        img = torch.rand(1, 40, 30)
        out = CropForegroundd(["image", "mask"], source_key="mask", margin=margin, allow_smaller=True)(
            {"image": img, "mask": m})
        ref = _reference_crop(img, m, margin)
        assert torch.equal(torch.as_tensor(out["image"]), ref)
        assert torch.equal(torch.as_tensor(out["mask"]), _reference_crop(m, m, margin))
    d = {"ap": _volume(), "pvp": _volume() * 2, "dp": _volume() + 5, "patient_id": "P1"}
    for k, z in (("ap", 3), ("pvp", 4), ("dp", 5)):
        d[f"{k}_mask"] = _mask([(10, 20, 5, 12, z)])
    mc = Compose(roi_transforms(spatial_size=32, margin=margin))(dict(d))["image"]
    ff = Compose(roi_transforms(spatial_size=32, margin=margin, concat=False))(dict(d))
    for c, k in enumerate(("ap", "pvp", "dp")):
        assert torch.equal(torch.as_tensor(mc[c:c + 1]), torch.as_tensor(ff[k]))


def test_dict_crop_and_full_chain_shapes_and_zscore():
    img = _volume()
    d = {"ap": img, "pvp": img * 2, "dp": img + 5, "patient_id": "P1"}
    for k, z in (("ap", 3), ("pvp", 4), ("dp", 5)):
        d[f"{k}_mask"] = _mask([(10, 20, 5, 12, z)])
    out = Compose(roi_transforms(spatial_size=32))(d)
    x = out["image"]
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x.mean(dim=(1, 2)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(1, 2), unbiased=False), torch.ones(3), atol=1e-3)
    assert "ap_mask" not in out


@pytest.mark.parametrize("concat", [True, False])
def test_kept_masks_are_cut_like_their_images_which_do_not_change(concat):
    img = _volume()
    d = {"ap": img, "pvp": img * 2, "dp": img + 5, "patient_id": "P1"}
    for k, z in (("ap", 3), ("pvp", 4), ("dp", 5)):
        d[f"{k}_mask"] = _mask([(10, 20, 5, 12, z)])  # bbox + 10 px -> [0:30, 0:22] of the 40 x 30 slice
    plain = Compose(roi_transforms(spatial_size=32, concat=concat))(dict(d))
    kept = Compose(roi_transforms(spatial_size=32, concat=concat, keep_masks=True))(dict(d))
    for key in (["image"] if concat else ["ap", "pvp", "dp"]):
        assert torch.equal(plain[key], kept[key])  # the networks' crops are the same
    masks = kept["mask"] if concat else torch.cat([kept[f"{k}_mask"] for k in ("ap", "pvp", "dp")])
    assert masks.shape == (3, 32, 32) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    # the tumour spans x 10..20 of 30 and y 5..12 of 22 of the crop: resized to 32 px
    inside = masks[:, round(15 * 32 / 30), round(8.5 * 32 / 22)]
    assert torch.allclose(inside, torch.ones(3))
    assert float(masks[:, :9].max()) < 0.5 and float(masks[:, 23:].max()) < 0.5  # x < 10 and x > 21 of 30
    assert float(masks[:, :, :6].max()) < 0.5 and float(masks[:, :, 19:].max()) < 0.5  # y < 5 and y > 12 of 22


def test_empty_mask_names_patient():
    d = {"ap": _volume(), "ap_mask": _mask([]), "patient_id": "P042"}
    with pytest.raises(InputError, match="P042"):
        LargestAreaSliced(["ap"], ["ap_mask"])(d)


def test_rename_keys():
    out = RenameKeysd(["ap_mask"], ["mask_ap"])({"ap_mask": 1, "ap": 2})
    assert out == {"mask_ap": 1, "ap": 2}


def test_batch_aug_flips_exact_and_eval_identity():
    x = torch.rand(4, 3, 16, 16)
    aug = BatchRandCropFlip(min_scale=1.0, p_flip=1.0)
    assert torch.allclose(aug(x), torch.flip(x, dims=(2, 3)), atol=1e-5)  # both flips, no crop
    assert torch.equal(aug.eval()(x), x)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = BatchRandCropFlip(generator=g1)(x), BatchRandCropFlip(generator=g2)(x)
    assert torch.equal(a, b) and a.shape == x.shape and not torch.allclose(a, x)
