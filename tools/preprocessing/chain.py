"""The preprocessing chain as one MONAI ``Compose``: load -> RAS -> N4 -> 1 mm -> z-score.

Used by :mod:`p53hcc.tools.preprocessing.run` (the study's cached, parallel preprocessing of whole cohorts); the
bundles' raw-image chain wires the same MONAI transforms with the same settings (``tests/test_bundle_chain.py``
checks that the two agree).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ITKReader
from monai.transforms import Compose, LoadImaged, NormalizeIntensityd, Orientationd, Spacingd, Transform
from monai.utils import ensure_tuple

from p53hcc.tools.cohort.dicomseg import is_dicom_seg, read_seg
from p53hcc.tools.cohort.imageio import dicom_files, series_spacing
from p53hcc.tools.preprocessing.n4 import N4BiasFieldCorrectiond
from p53hcc.tools.preprocessing.params import RAS_LABELS, chain_params

# MONAI's LoadImage registers every reader it knows, the GPU DICOM decoder (nvImageCodec) included, and each time
# warns that the decoder is absent: two lines per image read, hundreds in a study log. p53hcc reads DICOM through
# ITK and pydicom on the CPU, so the absent GPU decoder is not news.
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


class SeriesSpacingReader(ITKReader):
    """MONAI's ``ITKReader`` with the slice spacing of DICOM series as the headers state it, and DICOM SEG masks.

    ITK derives a series' z spacing from float32-rounded slice positions (2.5 mm read as 2.4999999 mm, one
    slice fewer after resampling); :func:`p53hcc.tools.cohort.imageio.series_spacing` restores the stated value,
    so the chain and every other reader of the project see the same grid. A DICOM SEG file (which ITK cannot
    read) is decoded by :func:`p53hcc.tools.cohort.dicomseg.read_seg`, as the cohort reader does. Other files
    are read unchanged.
    """

    def read(self, data, **kwargs):
        names = ensure_tuple(data)
        if len(names) == 1 and is_dicom_seg(names[0]):
            return _itk_image(read_seg(names[0]))
        images = super().read(data, **kwargs)
        for name, image in zip(names, ensure_tuple(images)):
            if Path(f"{name}").is_dir() and image.GetImageDimension() == 3:
                image.SetSpacing(series_spacing(dicom_files(name), tuple(image.GetSpacing())))
        return images


def _itk_image(image):
    """A SimpleITK image as an ITK image (voxels and geometry), the type MONAI's ``ITKReader`` hands on."""
    import itk
    import SimpleITK as sitk

    out = itk.image_from_array(np.ascontiguousarray(sitk.GetArrayFromImage(image)))
    out.SetSpacing(tuple(image.GetSpacing()))
    out.SetOrigin(tuple(image.GetOrigin()))
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection(), np.float64).reshape(3, 3)))
    return out


def preprocessing_chain(params: Mapping[str, Any] | None = None, image_keys: Sequence[str] = ("image",),
                        mask_keys: Sequence[str] = ("mask",), load: bool = True, n4: bool = True,
                        resample: bool = True) -> Compose:
    """The paper's preprocessing for dict data: load -> RAS -> N4 -> 1 mm -> z-score (masks only load/RAS/1 mm).

    * ``LoadImaged`` (:class:`SeriesSpacingReader`, channel first): NIfTI, NRRD, DICOM folders.
    * ``Orientationd("RAS")``: lossless axis permutation/flip, so axis 2 is always superior-inferior and the
      "largest axial slice" of the 2D arm means the same thing for every scanner. Skipped if orientation is None.
    * :class:`~p53hcc.tools.preprocessing.n4.N4BiasFieldCorrectiond` on the native grid (images only).
    * ``Spacingd`` to ``pixdim`` (1 mm): bilinear for images, nearest for masks (stay binary); zero padding.
    * ``NormalizeIntensityd`` z-score per image over non-zero voxels when ``normalize_nonzero`` (the body: the
      background and the resampling padding are exactly 0 and would otherwise pull mean and SD by an amount that
      depends on the field of view), else over the whole image.

    Args:
        params: overrides of :data:`~p53hcc.tools.preprocessing.params.CHAIN_DEFAULTS`.
        image_keys, mask_keys: dict keys of images and masks (a key may be absent from ``mask_keys`` data).
        load, n4, resample: include the load+RAS, N4, and resample+normalise stages (the cohort preprocessing
            caches the N4 output separately, so it runs the chain in two parts).
    """
    p = chain_params(params)
    image_keys, mask_keys = list(image_keys), list(mask_keys)
    keys = image_keys + mask_keys
    steps: list[Transform] = []
    if load:
        steps.append(LoadImaged(keys, reader=SeriesSpacingReader(), image_only=True, ensure_channel_first=True,
                                allow_missing_keys=True))
        if p["orientation"]:
            steps.append(Orientationd(keys, axcodes=p["orientation"], labels=RAS_LABELS, allow_missing_keys=True))
    if n4:
        steps.append(N4BiasFieldCorrectiond(image_keys, **p["n4"]))
    if resample:
        steps.append(Spacingd(keys, pixdim=p["pixdim"], mode=["bilinear"] * len(image_keys) + ["nearest"] *
                              len(mask_keys), padding_mode="zeros", dtype=np.float32, allow_missing_keys=True))
        steps.append(NormalizeIntensityd(image_keys, nonzero=bool(p["normalize_nonzero"]), dtype=np.float32))
    return Compose(steps)
