"""Parameters of the preprocessing chain (N4 -> 1 mm -> z-score): the one home of their defaults and presets.

No MONAI or ITK import here, so a cached re-run (which only compares parameter hashes) never loads them.

* :class:`N4Params` holds the N4 defaults; the N4 function, its MONAI transforms and the chain all take them
  from here.
* :data:`CHAIN_DEFAULTS` adds orientation, voxel size and normalisation.
* :data:`PRESETS` are named overrides. The schedule of the default (two B-spline levels, convergence 1e-3,
  shrink 6) comes from ``benchmarks/n4_presets.py``, which scores schedules against the synthetic cohort's known
  bias field: two levels were the most accurate (the usual four-level 50/50/30/20 schedule at 1e-6 had 1.4-2.2x
  the error at ~9x the time: its finer levels fit anatomy as "bias"), and shrink 6 came within 5-6 % of shrink
  4's error at ~2.6x less time. ``demo`` fits on a coarser grid with at most 20 iterations per level, ~1.8x
  cheaper for 7-17 % more field error, so that the demo and the tests stay quick.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from p53hcc.tools.errors import P53hccError

MASK_MODES = ("otsu", "foreground", "none")
#: Axis labels of MONAI's world space (the ITKReader converts ITK's LPS to RAS); explicit to pin the meaning.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
#: Bump when the computation changes in a way that invalidates cached results.
CACHE_VERSION = 2  # 2: every step single-threaded (thread-independent bits), DICOM slice spacing from the headers


@dataclass(frozen=True)
class N4Params:
    """Parameters of N4 bias-field correction (ITK's filter through SimpleITK); every field is JSON-friendly.

    Attributes:
        shrink_factor: fit on an image subsampled by this factor per axis (reduced per axis so that at least 4
            voxels remain, e.g. along z of a thin slab); the field is still applied at full resolution.
        n_iterations: maximum iterations per fitting level (its length is the number of levels unless
            ``n_fitting_levels`` repeats a single value).
        convergence_threshold: stop a level when the coefficient-of-variation change falls below this.
        n_fitting_levels: number of multi-resolution B-spline levels (default: ``len(n_iterations)``).
        mask_mode: "otsu" (Otsu threshold of the shrunken image: the body, ANTs' usual choice), "foreground"
            (voxels > 0) or "none" (every voxel). Non-positive voxels are always excluded (N4 works on log I).
        spline_order: B-spline order of the field.
        bias_field_fwhm: FWHM of the Gaussian deconvolving the log-intensity histogram (N4's sharpening kernel).
        n_control_points: control points per axis at the coarsest level (>= spline_order + 1), laid evenly over
            each axis's extent.
        spline_distance: if set (mm), one coarsest mesh span per ``spline_distance`` mm of each axis's physical
            extent (ANTs' ``-b [distance]``); overrides ``n_control_points``.
        wiener_filter_noise: Wiener filter noise of the histogram deconvolution.
        n_histogram_bins: histogram bins of the deconvolution.
    """

    shrink_factor: int | tuple[int, ...] = 6
    n_iterations: int | tuple[int, ...] = (50, 50)
    convergence_threshold: float = 1e-3
    n_fitting_levels: int | None = None
    mask_mode: str = "otsu"
    spline_order: int = 3
    bias_field_fwhm: float = 0.15
    n_control_points: int = 4
    spline_distance: float | None = None
    wiener_filter_noise: float = 0.01
    n_histogram_bins: int = 200

    def __post_init__(self) -> None:
        for name in ("shrink_factor", "n_iterations"):  # lists from YAML/JSON -> tuples (hashable, frozen)
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(int(v) for v in value))
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode {self.mask_mode!r} must be one of {MASK_MODES}")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any] | None) -> N4Params:
        """Build from a dict, naming any unknown key (e.g. a typo in a study YAML)."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown N4 parameter(s) {sorted(unknown)} (known: {sorted(known)})")
        return cls(**params)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples as lists): what caches hash and ``study.yaml`` records."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: The N4 defaults as a dict (derived from :class:`N4Params`, not a second copy).
N4_DEFAULTS: dict[str, Any] = N4Params().to_dict()

#: Default parameters of :func:`p53hcc.tools.preprocessing.chain.preprocessing_chain` (part of the cache key).
CHAIN_DEFAULTS: dict[str, Any] = {
    "orientation": "RAS",
    "n4": N4_DEFAULTS,
    "pixdim": [1.0, 1.0, 1.0],
    "normalize_nonzero": True,
}

#: Preprocessing presets: overrides of :data:`CHAIN_DEFAULTS` (see the module docstring for how they were chosen).
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {"n4": {"shrink_factor": 8, "n_iterations": [20, 20], "convergence_threshold": 1e-3}},
    "paper": {"n4": {}},  # the defaults as they stand
}
#: The preset of plain function and CLI calls: the same as ``p53hcc study`` on a user's cohort.
DEFAULT_PRESET = "paper"


def chain_params(params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:data:`CHAIN_DEFAULTS` updated by ``params`` (the ``n4`` sub-dict is merged key by key and checked)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in CHAIN_DEFAULTS.items()}
    for k, v in (params or {}).items():
        if k not in out:
            raise ValueError(f"unknown preprocessing parameter {k!r} (known: {sorted(out)})")
        out[k] = N4Params.from_dict({**out["n4"], **v}).to_dict() if k == "n4" else v
    return out


def resolve_params(params: Mapping[str, Any] | str | None = None) -> dict[str, Any]:
    """Full parameter set from a preset name ("demo", "paper"), a dict of overrides of the default preset, or None
    (the default preset, :data:`DEFAULT_PRESET`)."""
    if params is None:
        params = DEFAULT_PRESET
    if isinstance(params, str):
        if params not in PRESETS:
            raise P53hccError(f"unknown preprocessing preset {params!r} (use {', '.join(PRESETS)})")
        return chain_params(PRESETS[params])
    base = chain_params(PRESETS[DEFAULT_PRESET])
    over = dict(params)
    if "n4" in over:
        over["n4"] = {**base["n4"], **over["n4"]}
    try:
        return chain_params({**base, **over})
    except ValueError as exc:
        raise P53hccError(f"preprocessing parameters: {exc}") from exc
