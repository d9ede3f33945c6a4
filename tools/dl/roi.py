"""2D ROI transforms of the paper's "DL procedure" (array + dictionary twins, MONAI style).

Pipeline per phase (each phase uses its own mask): the axial slice with the largest mask area
(:class:`LargestAreaSlice`) -> the smallest bounding box of the ROI on that slice expanded by ``margin`` px (10 in
the paper) and clipped at the image border (MONAI ``CropForegroundd`` with the mask as its source) -> resize to
``spatial_size`` (256) -> z-score -> AP|PVP|DP stacked as three channels (MONAI ``Resized``,
``NormalizeIntensityd``, ``ConcatItemsd``; see :func:`roi_transforms`).

Training-time augmentation is a random crop (rescaled back to the network size) plus horizontal and vertical
flips of a whole batch in one ``grid_sample`` call (:class:`BatchRandCropFlip`), on the device the batch is on:
the bundles' ``batch_augmentation``, which both the fast engine and the bundle's own trainer apply. Test time:
normalisation only.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from p53hcc.tools.errors import InputError
from p53hcc.tools.schema import MASK_COLUMNS, PHASES

SLICE_INDEX_KEY = "roi_slice_index"


def largest_area_index(mask: torch.Tensor | np.ndarray, axis: int = -1) -> int:
    """Index along ``axis`` of the slice with the most foreground voxels (first one on ties).

    Args:
        mask: channel-first mask ``[C, X, Y, Z]`` (any non-zero value is foreground).
        axis: spatial axis (0-based over X, Y, Z) that indexes slices (default the last: axial).

    Raises:
        ValueError: the mask is empty.
    """
    m = torch.as_tensor(mask) != 0
    axis = axis % (m.ndim - 1) + 1
    dims = [d for d in range(m.ndim) if d != axis]
    area = m.sum(dim=dims)
    if int(area.max()) == 0:
        raise ValueError("mask is empty: no slice contains the ROI")
    return int(torch.argmax(area))


def _slice_affine(affine: torch.Tensor, spatial_axis: int) -> torch.Tensor:
    """Drop one spatial axis from a (d+1)x(d+1) affine (row and column), keeping the translation."""
    keep = [i for i in range(affine.shape[0]) if i != spatial_axis]
    return affine[keep][:, keep]


class LargestAreaSlice(Transform):
    """Take the 2D slice of a channel-first 3D image at the slice where ``mask`` has the largest area.

    Args:
        axis: spatial axis of the slices (0-based over X, Y, Z; -1 = last = axial).
    """

    def __init__(self, axis: int = -1) -> None:
        self.axis = axis

    def __call__(self, img: torch.Tensor, mask: torch.Tensor | None = None, index: int | None = None):
        """Return the 2D slice ``[C, H, W]``; ``mask`` defaults to ``img``; ``index`` overrides the search."""
        src = img if mask is None else mask
        if index is None:
            index = largest_area_index(src, self.axis)
        spatial = self.axis % (img.ndim - 1)
        out = torch.select(torch.as_tensor(img), spatial + 1, index)
        if isinstance(img, MetaTensor):
            meta = dict(img.meta)
            meta["affine"] = _slice_affine(img.affine, spatial)
            meta[SLICE_INDEX_KEY] = index
            out = MetaTensor(out.as_tensor() if isinstance(out, MetaTensor) else out, meta=meta)
        return out


class LargestAreaSliced(MapTransform):
    """Dictionary twin of :class:`LargestAreaSlice`: each image key is sliced at its own mask's largest slice.

    The mask keys are sliced too (at the same index), and the chosen index is stored as
    ``data[f"{key}_roi_slice_index"]`` and in the image's meta (``roi_slice_index``). An empty mask becomes an
    :class:`InputError` naming the patient and the mask.

    Args:
        keys: image keys (e.g. ``["ap", "pvp", "dp"]``).
        mask_keys: one mask key per image key (e.g. ``["ap_mask", "pvp_mask", "dp_mask"]``).
        axis: slice axis over the spatial dims (default -1, axial).
    """

    def __init__(self, keys: KeysCollection, mask_keys: Sequence[str], axis: int = -1,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = list(mask_keys)
        if len(self.mask_keys) != len(self.keys):
            raise ValueError(f"{type(self).__name__} needs one mask key per image key")
        self.slicer = LargestAreaSlice(axis)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key, mkey in self.key_iterator(d, self.mask_keys):
            try:
                index = largest_area_index(d[mkey], self.slicer.axis)
            except ValueError as err:
                raise InputError(d.get("patient_id"), str(err), column=str(mkey)) from err
            d[key], d[mkey] = self.slicer(d[key], index=index), self.slicer(d[mkey], index=index)
            d[f"{key}_{SLICE_INDEX_KEY}"] = index
        return d


class RenameKeysd(MapTransform):
    """Move ``data[key]`` to ``data[name]`` for each pair (MONAI has no plain rename transform).

    Why: MONAI's ``Spacingd`` treats every key that starts with ``f"{key}_"`` as a meta dict of ``key`` (NIfTI
    inputs), so a mask stored as ``ap_mask`` next to the image ``ap`` breaks it. The bundles load
    ``ap_mask`` (the datalist contract) and rename it to ``mask_ap`` right after loading.
    """

    def __init__(self, keys: KeysCollection, names: Sequence[str], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.names = list(names)
        if len(self.names) != len(self.keys):
            raise ValueError("RenameKeysd needs one new name per key")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key, name in self.key_iterator(d, self.names):
            d[name] = d.pop(key)
        return d


class SplitChannelsd(MapTransform):
    """Split a channel-first volume under ``key`` into one single-channel volume per name (meta kept), drop ``key``.

    The deploy configs' in-memory input: the app (or a ``monai.bundle`` user) hands over one volume whose
    channels are the three phases and their masks on one grid (``ap, pvp, dp, mask_ap, mask_pvp, mask_dp``);
    each becomes its own key, so the rest of the chain is the study's, file loading aside.
    """

    def __init__(self, keys: KeysCollection, names: Sequence[str], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.names = list(names)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d.pop(key)
            if img.ndim < 2 or img.shape[0] != len(self.names):
                raise InputError(d.get("patient_id"), f"the input volume has shape {tuple(img.shape)}; expected "
                                 f"{len(self.names)} channels ({', '.join(self.names)}) first", column=str(key))
            for i, name in enumerate(self.names):
                d[name] = img[i:i + 1]
        return d


def roi_transforms(image_keys: Sequence[str] = PHASES,
                   mask_keys: Sequence[str] = MASK_COLUMNS, spatial_size: int = 256,
                   margin: int = 10, concat: bool = True, out_key: str = "image", keep_masks: bool = False,
                   mask_key: str = "mask") -> list:
    """Deterministic 2D part on loaded 3D volumes: largest slice -> bbox+margin -> resize -> z-score -> concat.

    Args:
        image_keys / mask_keys: phase keys and their masks (one each).
        spatial_size: output side length (256 in the paper).
        margin: bbox expansion in pixels (10 in the paper).
        concat: stack the phases as channels into ``out_key`` (MC arm); False keeps them apart (FF arm).
        keep_masks: also keep each mask cut and resized exactly like its image (bilinear, so a contour at 0.5 is
            smooth), stacked into ``mask_key`` when ``concat``; for displays (the Grad-CAM tumour contour). The
            images are the same either way.
    """
    from monai.transforms import ConcatItemsd, CropForegroundd, DeleteItemsd, NormalizeIntensityd, Resized

    size = (spatial_size, spatial_size)
    # each phase and its mask cut to the box of that mask on its slice, + margin, clipped at the border
    crops = [CropForegroundd([k, m], source_key=m, margin=margin, allow_smaller=True)
             for k, m in zip(image_keys, mask_keys)]
    t = [LargestAreaSliced(list(image_keys), list(mask_keys)), *crops,
         Resized(list(image_keys), spatial_size=size, mode="bilinear", anti_aliasing=True),
         NormalizeIntensityd(list(image_keys))]
    if keep_masks:
        t.append(Resized(list(mask_keys), spatial_size=size, mode="bilinear", anti_aliasing=False))
        if concat:
            t.append(ConcatItemsd(list(mask_keys), name=mask_key, dim=0))
    else:
        t.append(DeleteItemsd(list(mask_keys)))
    if concat:
        t.append(ConcatItemsd(list(image_keys), name=out_key, dim=0))
    return t


class BatchRandCropFlip(torch.nn.Module):
    """GPU-side augmentation of a whole batch ``[B, C, H, W]``: random crop + resize back + H/V flips.

    One affine ``grid_sample`` per batch (the crop of side ``s`` in [min_scale, 1] at a random position, scaled
    back to ``H x W``, with random sign flips of each axis); no host syncs, so it runs at GPU speed on inputs
    that stay on the device. Works the same on the CPU. In eval mode (``.eval()``) it is the identity.

    Args:
        min_scale: smallest crop side as a fraction of the image side.
        p_flip: probability of each flip.
        generator: optional ``torch.Generator`` on the batch's device (reproducible augmentation).
    """

    def __init__(self, min_scale: float = 0.8, p_flip: float = 0.5, generator: torch.Generator | None = None):
        super().__init__()
        self.min_scale, self.p_flip, self.generator = min_scale, p_flip, generator

    def _rand(self, n: int, x: torch.Tensor) -> torch.Tensor:
        return torch.rand(n, device=x.device, generator=self.generator, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b = x.shape[0]
        scale = self.min_scale + (1.0 - self.min_scale) * self._rand(b, x)
        tx, ty = [(2 * self._rand(b, x) - 1) * (1 - scale) for _ in range(2)]
        fx, fy = [torch.where(self._rand(b, x) < self.p_flip, -1.0, 1.0) for _ in range(2)]
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
        theta[:, 0, 0], theta[:, 0, 2] = scale * fx, tx
        theta[:, 1, 1], theta[:, 1, 2] = scale * fy, ty
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        out = torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                                              align_corners=False)
        return out.to(x.dtype).contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) and x.ndim == 4 else out.to(x.dtype)
