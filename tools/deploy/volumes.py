"""One image as MONAI reads it, without loading the ``itk`` package: the Deploy app's reader of its inputs.

MONAI's ``ITKReader`` (the study's :class:`p53hcc.tools.preprocessing.chain.SeriesSpacingReader`) costs the app
several seconds per run just to load the ``itk`` package's wrapped modules, and it decodes a DICOM SEG through
SimpleITK anyway. :func:`read_volume` reads with the project's SimpleITK reader
(:func:`p53hcc.tools.cohort.imageio.read_image`: the same ITK IO underneath, DICOM slice spacing as the headers
state it, DICOM SEG masks) and builds the MetaTensor ``LoadImage(SeriesSpacingReader, ensure_channel_first)``
gives: the voxels as float32 ``[1, x, y, z]``, the affine in RAS with the same formula as MONAI's ITK reader
(``tests/test_deploy_checks.py`` compares the two on DICOM series, SEG and NIfTI inputs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_volume(path: str | Path):
    """``path`` (DICOM series folder, DICOM SEG, NIfTI...) as a channel-first float32 MetaTensor in RAS space."""
    import SimpleITK as sitk
    import torch
    from monai.data import MetaTensor
    from monai.data.utils import orientation_ras_lps
    from monai.utils import MetaKeys, SpaceKeys

    from p53hcc.tools.cohort.imageio import read_image

    image = read_image(path)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image).T, dtype=np.float32)  # (x, y, z)
    spacing, origin = np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin())
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    affine = orientation_ras_lps(affine)
    meta = {MetaKeys.ORIGINAL_AFFINE: affine.copy(), MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape), MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            "spacing": spacing, "filename_or_obj": str(path)}
    return MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)
