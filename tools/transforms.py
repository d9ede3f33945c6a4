"""MONAI transforms added by p53hcc: N4 bias-field correction (array + dictionary twin) and the preprocessing chain.

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

import threading
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
    Transform,
)

# The parameter sets live in tools.preprocess (no MONAI import there), so a cached re-run never loads MONAI.
from tools.preprocess import CHAIN_DEFAULTS, MASK_MODES, N4_DEFAULTS, RAS_LABELS, chain_params  # noqa: F401


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


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 0}


@contextmanager
def _itk_threads(n_threads: int | None) -> Iterator[None]:
    """Set ITK's global thread count while N4 runs (its inner B-spline fitting filters follow the global default,
    not the N4 filter's own setting). Reference-counted, so concurrent calls in threads (a threaded Dask worker)
    all run under the setting and the previous value is restored when the last one leaves."""
    if not n_threads:
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n_threads))
        _THREADS_STATE["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(_THREADS_STATE["saved"])


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
               shrink_factor: int | Sequence[int] = 6, n_iterations: int | Sequence[int] = (50, 50),
               convergence_threshold: float = 1e-3, n_fitting_levels: int | None = None, mask_mode: str = "otsu",
               spline_order: int = 3, bias_field_fwhm: float = 0.15, n_control_points: int = 4,
               spline_distance: float | None = None, wiener_filter_noise: float = 0.01,
               n_histogram_bins: int = 200, n_threads: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """N4 bias-field correction of one spatial volume (2D or 3D).

    Args:
        array: voxels in (x, y, z) order (MONAI's spatial order); any real dtype.
        spacing: voxel size in mm per axis, same order; anisotropy matters because the B-spline lattice lives in
            physical space.
        mask: optional voxels to fit on (non-zero = used); overrides ``mask_mode``.
        origin, direction: optional physical placement (ITK/LPS convention); the field in index space does not
            depend on them, they are passed so the ITK images are faithful.
        shrink_factor: fit on an image subsampled by this factor per axis (reduced per axis so that at least 4
            voxels remain, e.g. along z of a thin slab); the field is still applied at full resolution.
        n_iterations: maximum iterations per fitting level (len = number of levels unless n_fitting_levels).
        convergence_threshold: stop a level when the coefficient-of-variation change falls below this.
        n_fitting_levels: number of multi-resolution B-spline levels (default: len(n_iterations)).
        mask_mode: "otsu" (Otsu threshold of the shrunken image: the body, ANTs' usual choice), "foreground"
            (voxels > 0) or "none" (every voxel). Non-positive voxels are always excluded (N4 works on log I).
        spline_order: B-spline order of the field.
        bias_field_fwhm: FWHM of the Gaussian deconvolving the log-intensity histogram (N4's sharpening kernel).
        n_control_points: control points per axis at the coarsest level (>= spline_order + 1). ITK lays them
            evenly over each axis's extent, so with this option the fit is the same in index space whatever the
            spacing.
        spline_distance: if set (mm), the coarsest B-spline mesh has one span per ``spline_distance`` mm of each
            axis's physical extent (ANTs' ``-b [distance]``), so a short z extent of thick slices gets fewer
            control points than the in-plane axes; overrides ``n_control_points``.
        wiener_filter_noise: Wiener filter noise of the histogram deconvolution.
        n_histogram_bins: histogram bins of the deconvolution.
        n_threads: ITK threads for this call (None: ITK's global default). The default 1 makes the result
            bit-reproducible: N4's multi-threaded reductions change the last digits with the thread count, and a
            cached result must not depend on which machine computed it. Parallelism is across patients.

    Returns:
        ``(corrected, bias_field)`` as float32 arrays of the input's shape; ``corrected * bias_field == array``
        up to float rounding.

    Raises:
        ValueError: bad parameters, or no positive voxel inside the mask.
    """
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode {mask_mode!r} must be one of {MASK_MODES}")
    arr = np.asarray(array, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite voxels")
    image = _to_sitk(arr, spacing, origin, direction)
    factors = _shrink_factors(arr.shape, shrink_factor)
    # N4 models log(I): fit only where I > 0; clip the rest (outside the fit mask, their value is irrelevant).
    positive = arr > 0
    if mask is not None:
        fit = positive & (np.asarray(mask) > 0)
    elif mask_mode == "foreground" or mask_mode == "none":
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
    its = _iterations(n_iterations, n_fitting_levels)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(its)  # SimpleITK: number of fitting levels = len(its)
    n4.SetConvergenceThreshold(float(convergence_threshold))
    n4.SetSplineOrder(int(spline_order))
    n4.SetBiasFieldFullWidthAtHalfMaximum(float(bias_field_fwhm))
    n4.SetNumberOfControlPoints(_control_points(arr.shape, spacing, n_control_points, spline_distance,
                                                spline_order))
    n4.SetWienerFilterNoise(float(wiener_filter_noise))
    n4.SetNumberOfHistogramBins(int(n_histogram_bins))
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
    arrays with non-1 mm voxels). All keyword arguments are those of :func:`n4_correct`.
    """

    def __init__(self, shrink_factor: int | Sequence[int] = 6, n_iterations: int | Sequence[int] = (50, 50),
                 convergence_threshold: float = 1e-3, n_fitting_levels: int | None = None, mask_mode: str = "otsu",
                 spline_order: int = 3, bias_field_fwhm: float = 0.15, n_control_points: int = 4,
                 spline_distance: float | None = None, wiener_filter_noise: float = 0.01,
                 n_histogram_bins: int = 200, pixdim: Sequence[float] | None = None, n_threads: int | None = 1) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode {mask_mode!r} must be one of {MASK_MODES}")
        self.params = {
            "shrink_factor": shrink_factor, "n_iterations": n_iterations,
            "convergence_threshold": convergence_threshold, "n_fitting_levels": n_fitting_levels,
            "mask_mode": mask_mode, "spline_order": spline_order, "bias_field_fwhm": bias_field_fwhm,
            "n_control_points": n_control_points, "spline_distance": spline_distance,
            "wiener_filter_noise": wiener_filter_noise, "n_histogram_bins": n_histogram_bins, "n_threads": n_threads,
        }
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
                           direction=direction, **self.params) for i, ch in enumerate(data)]
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


def preprocessing_chain(params: Mapping[str, Any] | None = None, image_keys: Sequence[str] = ("image",),
                        mask_keys: Sequence[str] = ("mask",), load: bool = True, n4: bool = True,
                        resample: bool = True) -> Compose:
    """The paper's preprocessing for dict data: load -> RAS -> N4 -> 1 mm -> z-score (masks only load/RAS/1 mm).

    * ``LoadImaged`` (ITKReader, channel first): NIfTI, NRRD, DICOM folders.
    * ``Orientationd("RAS")``: lossless axis permutation/flip, so axis 2 is always superior-inferior and the
      "largest axial slice" of the 2D arm means the same thing for every scanner. Skipped if orientation is None.
    * :class:`N4BiasFieldCorrectiond` on the native grid (images only).
    * ``Spacingd`` to ``pixdim`` (1 mm): bilinear for images, nearest for masks (stay binary); zero padding.
    * ``NormalizeIntensityd`` z-score per image over non-zero voxels when ``normalize_nonzero`` (the body: the
      background and the resampling padding are exactly 0 and would otherwise pull mean and SD by an amount that
      depends on the field of view), else over the whole image.

    Args:
        params: overrides of :data:`CHAIN_DEFAULTS` (see :func:`chain_params`).
        image_keys, mask_keys: dict keys of images and masks (a key may be absent from ``mask_keys`` data).
        load, n4, resample: include the load+RAS, N4, and resample+normalise stages (tools.preprocess caches the
            N4 output separately, so it runs the chain in two parts).
    """
    p = chain_params(params)
    image_keys, mask_keys = list(image_keys), list(mask_keys)
    keys = image_keys + mask_keys
    steps: list[Transform] = []
    if load:
        steps.append(LoadImaged(keys, reader="ITKReader", image_only=True, ensure_channel_first=True,
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


try:  # the 2D ROI transforms live in tools.roi; re-exported so everything is reachable as tools.transforms.X
    from tools.roi import *
except ImportError:
    pass
