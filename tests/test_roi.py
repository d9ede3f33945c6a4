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
    ROIBoundingBoxCrop,
    ROIBoundingBoxCropd,
    largest_area_index,
    roi_bbox,
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


def test_bbox_margin_clipped_at_border():
    m = torch.zeros(1, 40, 30)
    m[0, 2:6, 20:28] = 1  # rows 2..5, cols 20..27
    start, end = roi_bbox(m, margin=10)
    assert start == [0, 10] and end == [16, 30]  # 2-10 -> 0 (border), 6+10 = 16; 20-10 = 10, 28+10 -> 30 (border)
    m2 = torch.zeros(1, 60, 60)
    m2[0, 20:25, 30:33] = 1
    assert roi_bbox(m2, margin=10) == ([10, 20], [35, 43])
    crop = ROIBoundingBoxCrop(margin=10)(torch.rand(1, 60, 60), m2)
    assert crop.shape == (1, 25, 23)


def test_dict_crop_and_full_chain_shapes_and_zscore():
    img = _volume()
    d = {"ap": img, "pvp": img * 2, "dp": img + 5, "patient_id": "P1"}
    for k, z in (("ap", 3), ("pvp", 4), ("dp", 5)):
        d[f"{k}_mask"] = _mask([(10, 20, 5, 12, z)])
    cropped = ROIBoundingBoxCropd(["ap"], ["ap_mask"])(LargestAreaSliced(["ap"], ["ap_mask"])(dict(d)))
    assert cropped["ap"].shape == (1, 30, 22) and cropped["ap_roi_bbox"] == ([0, 0], [30, 22])
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
