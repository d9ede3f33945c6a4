"""N4 bias-field correction: the function, its MONAI transforms (array + dictionary twin) and field checks.

N4 (Tustison et al. 2010) is estimated on a shrunken copy of the image, which is what makes it affordable, and the
fitted B-spline log-bias field is then evaluated on the full-resolution grid (the B-spline control-point lattice is
defined in physical space, so it can be sampled on any grid covering the same extent) and divided out. This is
ANTs' and SimpleITK's standard recipe. The filter is ITK's ``N4BiasFieldCorrectionImageFilter`` called through
SimpleITK (ITK 5.4 underneath): its ``GetLogBiasFieldAsImage(reference)`` runs ITK's
``BSplineControlPointImageFilter`` on the reference (full-resolution) grid, which the ``itk`` Python wrapping does
not expose, and SimpleITK loads in 0.1 s where ``itk``'s N4 module costs ~7 s per worker process.

Axis convention: MONAI's, i.e. spatial axes in ITK index order (x, y, z) after the channel axis, with ``pixdim``
(spacing, mm) in the same order. Constructor arguments are JSON-friendly so bundle configs can wire them.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from p53hcc.tools.parallel import fixed_threads
from p53hcc.tools.preprocessing.params import N4Params


def _shrink_factors(size: Sequence[int], shrink_factor: int | Sequence[int], min_size: int = 4) -> list[int]:
    """Per-axis shrink factors: the requested factor, reduced where the shrunken axis would have < min_size voxels.

    Thin slabs (few slices of a thick-slice acquisition) keep enough samples along z for the B-spline fit.
    """
    req = [int(shrink_factor)] * len(size) if np.isscalar(shrink_factor) else [int(s) for s in shrink_factor]
    if len(req) != len(size) or min(req) < 1:
        raise ValueError(f"shrink_factor {shrink_factor!r} must be a positive int or one per spatial axis")
    return [max(1, min(f, n // min_size)) for f, n in zip(req, size)]


def _iterations(n_iterations: int | Sequence[int], n_fitting_levels: int | None) -> list[int]:
    """Iterations per fitting level; a single number or a one-element list is repeated over the levels."""
    its = [int(n_iterations)] if np.isscalar(n_iterations) else [int(i) for i in n_iterations]
    if n_fitting_levels is None:
        return its
    if len(its) == 1:
        return its * int(n_fitting_levels)
    if len(its) != int(n_fitting_levels):
        raise ValueError(f"n_iterations has {len(its)} levels but n_fitting_levels={n_fitting_levels}")
    return its


def _control_points(shape, spacing, n_control_points: int, spline_distance: float | None,
                    spline_order: int) -> list[int]:
    """Control points per axis: fixed, or one mesh span per ``spline_distance`` mm of physical extent."""
    if spline_distance is None:
        return [int(n_control_points)] * len(shape)
    extent = [(n - 1) * float(s) for n, s in zip(shape, spacing)]
    return [max(int(spline_order) + 1, int(np.ceil(e / float(spline_distance))) + int(spline_order))
            for e in extent]


@contextmanager
def _itk_threads(n_threads: int | None) -> Iterator[None]:
    """Run N4 with ``n_threads`` ITK threads (its inner B-spline fitting filters follow the global default, not the
    N4 filter's own setting): :func:`p53hcc.tools.parallel.fixed_threads`, reference-counted across threads."""
    if not n_threads:
        yield
        return
    with fixed_threads(int(n_threads)):
        yield


def _to_sitk(array: np.ndarray, spacing, origin=None, direction=None) -> sitk.Image:
    """(x, y, z)-ordered array -> SimpleITK image with the given physical geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).T))
    image.SetSpacing([float(s) for s in spacing])
    if origin is not None:
        image.SetOrigin([float(o) for o in origin])
    if direction is not None:
        image.SetDirection([float(d) for d in np.asarray(direction).ravel()])
    return image


def n4_correct(array: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None = None, *,
               origin: Sequence[float] | None = None, direction: np.ndarray | None = None,
               n_threads: int | None = 1, **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """N4 bias-field correction of one spatial volume (2D or 3D).

    Args:
        array: voxels in (x, y, z) order (MONAI's spatial order); any real dtype.
        spacing: voxel size in mm per axis, same order; anisotropy matters because the B-spline lattice lives in
            physical space.
        mask: optional voxels to fit on (non-zero = used); overrides ``mask_mode``.
        origin, direction: optional physical placement (ITK/LPS convention); the field in index space does not
            depend on them, they are passed so the ITK images are faithful.
        n_threads: ITK threads for this call (None: ITK's global default). The default 1 makes the result
            bit-reproducible: N4's multi-threaded reductions change the last digits with the thread count, and a
            cached result must not depend on which machine computed it. Parallelism is across patients.
        **params: fields of :class:`~p53hcc.tools.preprocessing.params.N4Params` (its defaults otherwise).

    Returns:
        ``(corrected, bias_field)`` as float32 arrays of the input's shape; ``corrected * bias_field == array``
        up to float rounding.

    Raises:
        ValueError: bad or unknown parameters, or no positive voxel inside the mask.
    """
    p = N4Params.from_dict(params)
    arr = np.asarray(array, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite voxels")
    image = _to_sitk(arr, spacing, origin, direction)
    factors = _shrink_factors(arr.shape, p.shrink_factor)
    # N4 models log(I): fit only where I > 0; clip the rest (outside the fit mask, their value is irrelevant).
    positive = arr > 0
    if mask is not None:
        fit = positive & (np.asarray(mask) > 0)
    elif p.mask_mode == "foreground" or p.mask_mode == "none":
        fit = positive
    else:
        fit = None  # Otsu below, on the shrunken image
    floor = float(arr[positive].min()) if positive.any() else 1.0
    small = sitk.Shrink(_to_sitk(np.maximum(arr, floor), spacing, origin, direction), factors)
    if fit is None:
        small_mask = sitk.OtsuThreshold(small, 0, 1) * sitk.Shrink(
            _to_sitk(positive.astype(np.uint8), spacing, origin, direction), factors)
    else:
        small_mask = sitk.Shrink(_to_sitk(fit.astype(np.uint8), spacing, origin, direction), factors)
    small_mask = sitk.Cast(small_mask, sitk.sitkUInt8)
    small_mask.CopyInformation(small)
    if not sitk.GetArrayViewFromImage(small_mask).any():
        raise ValueError("N4 fitting mask is empty (no positive voxel inside the mask)")
    its = _iterations(p.n_iterations, p.n_fitting_levels)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(its)  # SimpleITK: number of fitting levels = len(its)
    n4.SetConvergenceThreshold(float(p.convergence_threshold))
    n4.SetSplineOrder(int(p.spline_order))
    n4.SetBiasFieldFullWidthAtHalfMaximum(float(p.bias_field_fwhm))
    n4.SetNumberOfControlPoints(_control_points(arr.shape, spacing, p.n_control_points, p.spline_distance,
                                                p.spline_order))
    n4.SetWienerFilterNoise(float(p.wiener_filter_noise))
    n4.SetNumberOfHistogramBins(int(p.n_histogram_bins))
    with _itk_threads(n_threads):
        n4.Execute(small, small_mask)
        log_bias = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image)).T  # full-resolution grid
    bias = np.exp(log_bias).astype(np.float32)
    return (arr / bias).astype(np.float32), bias


def body_region(image: np.ndarray) -> np.ndarray:
    """Otsu foreground of an (x, y, z) image: the body, where a bias field can be judged (air carries no signal)."""
    otsu = sitk.OtsuThreshold(sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(image).T)), 0, 1)
    return sitk.GetArrayFromImage(otsu).T.astype(bool)


def log_bias_error(field: np.ndarray, true_field: np.ndarray, region: np.ndarray) -> float:
    """RMS over ``region`` of ``log(field) - log(true_field)`` after removing the median offset.

    N4 recovers a multiplicative field only up to a constant factor (the global scale is absorbed by the image),
    so the offset is not an error. Used to judge N4 schedules against the synthetic cohort's known field.
    """
    diff = (np.log(np.asarray(field, np.float64)) - np.log(np.asarray(true_field, np.float64)))[np.asarray(region, bool)]
    if diff.size == 0:
        raise ValueError("log_bias_error: empty region")
    return float(np.sqrt(np.mean((diff - np.median(diff)) ** 2)))


def _geometry_from_meta(img: Any, pixdim: Sequence[float] | None, ndim: int):
    """Spacing, origin and direction (ITK/LPS) of a MetaTensor, else ``pixdim`` (or 1 mm) with identity."""
    if isinstance(img, MetaTensor) and pixdim is None:
        full = np.asarray(img.affine, dtype=np.float64)  # 4x4 in MONAI even for 2D images
        lin, translation = full[:ndim, :ndim], full[:ndim, -1]
        spacing = np.linalg.norm(lin, axis=0)
        flip = np.diag([-1.0, -1.0] + [1.0] * (ndim - 2))[:ndim, :ndim]  # RAS (MONAI) -> LPS (ITK)
        direction = flip @ (lin / spacing)
        origin = flip @ translation
        if not np.allclose(direction @ direction.T, np.eye(ndim), atol=1e-4):  # sheared: field is index-space anyway
            direction, origin = None, None
        return spacing, origin, direction
    spacing = [1.0] * ndim if pixdim is None else list(pixdim)[:ndim]
    return spacing, None, None


class N4BiasFieldCorrection(Transform):
    """N4 bias-field correction of a channel-first image (each channel separately); keeps MetaTensor meta.

    Spacing/origin/direction come from the MetaTensor's affine (``pixdim`` overrides, and is required for plain
    arrays with non-1 mm voxels). Other keyword arguments are fields of
    :class:`~p53hcc.tools.preprocessing.params.N4Params` (its defaults otherwise); ``n_threads`` as in
    :func:`n4_correct`.
    """

    def __init__(self, pixdim: Sequence[float] | None = None, n_threads: int | None = 1, **params: Any) -> None:
        self.params = N4Params.from_dict(params).to_dict()
        self.n_threads = n_threads
        self.pixdim = pixdim

    def correct(self, img: Any, mask: Any = None) -> tuple[Any, Any]:
        """Return ``(corrected, bias_field)``, both of ``img``'s type (MetaTensor meta copied), float32."""
        data = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        spacing, origin, direction = _geometry_from_meta(img, self.pixdim, data.ndim - 1)
        m = None
        if mask is not None:
            m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            m = m.reshape(data.shape[1:]) if m.size == int(np.prod(data.shape[1:])) else m
        outs = [n4_correct(ch, spacing, m if m is None or m.ndim == ch.ndim else m[i], origin=origin,
                           direction=direction, n_threads=self.n_threads, **self.params) for i, ch in enumerate(data)]
        corrected = np.stack([o[0] for o in outs])
        bias = np.stack([o[1] for o in outs])
        return self._like(corrected, img), self._like(bias, img)

    @staticmethod
    def _like(arr: np.ndarray, ref: Any) -> Any:
        if isinstance(ref, MetaTensor):
            out = MetaTensor(torch.from_numpy(arr))
            out.copy_meta_from(ref)  # affine, pixdim, filename, applied_operations
            return out
        return torch.from_numpy(arr) if isinstance(ref, torch.Tensor) else arr

    def __call__(self, img: Any, mask: Any = None) -> Any:
        """Bias-corrected image (float32, same shape, meta kept)."""
        return self.correct(img, mask)[0]


class N4BiasFieldCorrectiond(MapTransform):
    """Dictionary twin of :class:`N4BiasFieldCorrection`.

    Args:
        keys: image keys to correct.
        mask_key: optional key of a fit mask (e.g. a body mask); None uses ``mask_mode``. Do not pass the tumour
            ROI: N4 needs the whole body to see the smooth field.
        bias_key_postfix: if set, also store the bias field under ``f"{key}_{bias_key_postfix}"``.
        allow_missing_keys: skip absent keys.
        **n4_params: see :func:`n4_correct` (plus ``pixdim``).
    """

    def __init__(self, keys: KeysCollection, mask_key: str | None = None, bias_key_postfix: str | None = None,
                 allow_missing_keys: bool = False, **n4_params: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.bias_key_postfix = bias_key_postfix
        self.n4 = N4BiasFieldCorrection(**n4_params)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        mask = d.get(self.mask_key) if self.mask_key is not None else None
        for key in self.key_iterator(d):
            d[key], bias = self.n4.correct(d[key], mask)
            if self.bias_key_postfix:
                d[f"{key}_{self.bias_key_postfix}"] = bias
        return d
