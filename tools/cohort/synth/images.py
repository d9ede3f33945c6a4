"""Image phantom of the synthetic cohort: three DCE-MRI phases and per-phase tumour masks of one patient.

Everything is built in physical millimetres (LPS-like: x to the patient's left, y posterior, z cranial) from
closed-form shapes evaluated with numpy broadcasting, then "acquired" by one of the scanner profiles (grid
spacing, gain/offset, smooth multiplicative bias field, Rician noise). Smooth random fields are low-resolution
noise zoomed up, and everything tumour-related is evaluated only inside the tumour's bounding box, so a demo
patient takes a few tens of milliseconds. The model is described in ``docs/synthetic_cohort.md``.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist
from scipy.special import expit

from p53hcc.tools.io import atomic_path
from p53hcc.tools.schema import PHASES

#: Field of view (x, y, z) in mm. "demo" is a liver-centred crop around the tumour (at most 1.6 M voxels at 1 mm);
#: "paper" covers the whole upper abdomen.
SIZES = {"demo": {"fov": (128.0, 128.0, 96.0), "crop": True},
         "paper": {"fov": (360.0, 300.0, 180.0), "crop": False}}


def _scanner(inplane: float, slice_mm: float, gain: float, offset: float, noise: float, bias: float,
             weight: float) -> dict:
    """One scanner profile as a dict (see :data:`INTERNAL_SCANNERS`)."""
    return {"inplane": inplane, "slice": slice_mm, "gain": gain, "offset": offset, "noise": noise, "bias": bias,
            "weight": weight}


#: Scanner profiles: in-plane spacing (mm), slice thickness = z spacing (mm), intensity gain and offset, noise SD
#: as a fraction of the liver's portal-venous signal, bias-field strength (SD of the log field), sampling weight.
INTERNAL_SCANNERS = {
    "S1_Aera_1.5T": _scanner(1.19, 3.0, 1.00, 0.0, 0.035, 0.20, 3),
    "S2_Skyra_3T": _scanner(0.94, 2.5, 1.80, 30.0, 0.025, 0.35, 2),
    "S3_Avanto_1.5T": _scanner(1.37, 4.0, 0.85, 10.0, 0.045, 0.15, 2),
    "S4_Prisma_3T": _scanner(0.78, 3.0, 2.40, 0.0, 0.030, 0.40, 1),
    "S5_uMR770_3T": _scanner(1.09, 3.5, 1.30, 50.0, 0.030, 0.30, 1),
    "S6_SignaHDxt_1.5T": _scanner(1.56, 5.0, 0.60, 5.0, 0.050, 0.20, 1),
    "S7_Ingenia_3T": _scanner(0.70, 2.5, 3.00, 20.0, 0.025, 0.35, 1),
}
EXTERNAL_SCANNERS = {
    "E1_Vida_3T": _scanner(1.25, 3.0, 4.00, 100.0, 0.040, 0.45, 1),
    "E2_Optima_1.5T": _scanner(1.60, 6.0, 0.50, 0.0, 0.060, 0.25, 1),
    "E3_Achieva_1.5T": _scanner(0.82, 2.0, 1.50, 0.0, 0.050, 0.30, 1),
}
#: Mean signal of each tissue in (AP, PVP, DP) before the scanner's gain/offset (arbitrary T1w units).
TISSUE = {
    "body": (260.0, 300.0, 300.0), "spine": (130.0, 130.0, 130.0), "aorta": (1300.0, 700.0, 500.0),
    "ivc": (250.0, 750.0, 550.0), "hepatic_vessel": (500.0, 900.0, 600.0), "liver": (380.0, 600.0, 540.0),
}


def _reference_scanner() -> dict[str, float]:
    """The neutral acquisition the scanner-effect strength scales departures from: the geometric mean of the
    internal scanners' gain, noise and bias strength (offset: 0)."""
    logs = {k: np.mean([np.log(s[k]) for s in INTERNAL_SCANNERS.values()]) for k in ("gain", "noise", "bias")}
    return {k: float(np.exp(v)) for k, v in logs.items()}


def scanner_profiles(profile: str, effect: float = 1.0) -> dict[str, dict]:
    """The scanner profiles of the internal (7) or external (3) cohort, at scanner-effect strength ``effect``.

    ``effect`` scales how far each scanner's acquisition departs from the neutral reference scanner
    (:func:`_reference_scanner`): gain, noise level and bias-field strength on the log scale, offset linearly; 1 is
    the profiles as tabulated (``docs/synthetic_cohort.md``), 0 makes every scanner acquire like the reference (only
    the grid spacing still differs), 2 doubles the departures. Grid spacing is never scaled.
    """
    base = INTERNAL_SCANNERS if profile == "internal" else EXTERNAL_SCANNERS
    if effect == 1:
        return base
    if effect < 0:
        raise ValueError(f"scanner effect strength must be >= 0, got {effect}")
    ref = _reference_scanner()
    scaled = {}
    for name, s in base.items():
        s = dict(s)
        for key in ("gain", "noise", "bias"):
            s[key] = float(ref[key] * (s[key] / ref[key]) ** effect)
        s["offset"] = float(s["offset"] * effect)
        scaled[name] = s
    return scaled


def _interp_matrix(n: int, step: float, corr_mm: float) -> np.ndarray:
    """Gaussian interpolation weights (n voxels x m nodes) from nodes every ``corr_mm`` mm to voxels ``step`` apart."""
    pos = np.arange(n) * step
    nodes = np.arange(-1, int(np.ceil(pos[-1] / corr_mm)) + 2) * corr_mm if n > 1 else np.array([0.0])
    w = np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / (0.7 * corr_mm)) ** 2)
    return (w / np.sqrt((w ** 2).sum(axis=1, keepdims=True))).astype(np.float32)


def smooth_noise(rng: np.random.Generator, shape: tuple, spacing: np.ndarray, corr_mm: float,
                 channels: int = 1) -> np.ndarray:
    """Smooth random fields (``channels`` of them, ~unit variance) with correlation length ~``corr_mm``.

    White noise on a coarse lattice (one node per ``corr_mm``) interpolated onto the grid with separable
    Gaussian weights: three small matrix products, far cheaper than filtering or zooming the full grid.
    """
    wx, wy, wz = (_interp_matrix(n, d, corr_mm) for n, d in zip(shape, spacing))
    noise = rng.standard_normal((channels, wx.shape[1], wy.shape[1], wz.shape[1]), dtype=np.float32)
    field = noise @ wz.T  # (c, lx, ly, nz)
    field = np.swapaxes(np.swapaxes(field, 2, 3) @ wy.T, 2, 3)  # (c, lx, ny, nz)
    return np.ascontiguousarray(np.swapaxes(np.swapaxes(field, 1, 3) @ wx.T, 1, 3))  # (c, nx, ny, nz)


def _fibonacci_sphere(n: int = 600) -> np.ndarray:
    """``n`` nearly uniform unit vectors (rows)."""
    k = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * k / n)
    theta = np.pi * (1 + 5 ** 0.5) * k
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


class Tumour:
    """A lobulated ellipsoid: radius ``axes * (1 + eps(u))`` along unit direction ``u`` (in the tumour frame).

    ``eps`` is a sum of three low-frequency cosines of the direction. The axes are scaled so that the largest
    3-D diameter (convex hull of the surface) equals the requested LTD exactly.
    """

    def __init__(self, ltd_mm: float, rng: np.random.Generator, max_z_mm: float):
        ratios = np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.6, 0.9)])
        self.angle = rng.uniform(0, np.pi)
        self.freq = rng.normal(size=(3, 3))
        self.freq *= (rng.uniform(2.0, 4.0, 3) / np.linalg.norm(self.freq, axis=1))[:, None]
        self.amp = rng.uniform(0.02, 0.06, 3)
        self.phase = rng.uniform(0, 2 * np.pi, 3)
        pts = self.surface(ratios)
        self.axes = ratios * ltd_mm / pdist(pts[ConvexHull(pts).vertices]).max()
        z_ext = np.abs(self.surface(self.axes)[:, 2]).max()
        if z_ext > max_z_mm:  # keep the tumour inside the demo crop (z is the shortest axis)
            self.axes[2] *= max_z_mm / z_ext
            pts = self.surface(self.axes)
            self.axes *= ltd_mm / pdist(pts[ConvexHull(pts).vertices]).max()
        self.extent = np.abs(self.surface(self.axes)).max(axis=0)  # half-extent along x, y, z (mm)

    def eps(self, u: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Radial perturbation along unit directions ``u`` (tumour frame)."""
        out = 0.0
        for f, a, p in zip(self.freq.tolist(), self.amp.tolist(), self.phase.tolist()):
            out = out + a * np.cos(f[0] * u[0] + f[1] * u[1] + f[2] * u[2] + p)
        return out

    def _rotate(self, v: np.ndarray) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], axis=1)

    def surface(self, axes: np.ndarray) -> np.ndarray:
        """Surface points (mm, relative to the centre, image frame) along a fibonacci sphere of directions."""
        u = _fibonacci_sphere()
        r = 1 + self.eps((u[:, 0], u[:, 1], u[:, 2]))
        return self._rotate(u * axes * r[:, None])

    def fields(self, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius ``t`` (0 centre, 1 surface) and signed distance to the surface in mm (<0 inside)."""
        c, s = float(np.cos(self.angle)), float(np.sin(self.angle))
        ax = self.axes.tolist()
        q = [(c * dx + s * dy) / ax[0], (-s * dx + c * dy) / ax[1], dz / ax[2]]
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-6
        u = [qi / rho for qi in q]
        r = 1 + self.eps(u)
        t = rho / r
        r_mm = np.sqrt((ax[0] * u[0]) ** 2 + (ax[1] * u[1]) ** 2 + (ax[2] * u[2]) ** 2) * r
        return t, (t - 1) * r_mm


def _segment_distance(px, py, pz, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (mm) of broadcast points to the segment a-b."""
    a, d = a.tolist(), (b - a).tolist()
    w = ((px - a[0]) * d[0] + (py - a[1]) * d[1] + (pz - a[2]) * d[2]) * (1 / (d[0] ** 2 + d[1] ** 2 + d[2] ** 2))
    w = np.clip(w, 0, 1)
    return np.sqrt((px - a[0] - w * d[0]) ** 2 + (py - a[1] - w * d[1]) ** 2 + (pz - a[2] - w * d[2]) ** 2)


def _paint(img: np.ndarray, frac: np.ndarray, value) -> None:
    """Partial-volume overlay in place: ``img = img + frac * (value - img)``."""
    img += frac * (value - img)


def _tumour_intensities(rec: dict, h: float, liver: np.ndarray, t: np.ndarray, s: np.ndarray, tex: np.ndarray,
                        rng: np.random.Generator) -> tuple[list[np.ndarray], float]:
    """Signal of the tumour per phase inside its bounding box (findings + latent heterogeneity)."""
    tau = 0.6
    rim = expit((np.clip(-0.2 * s.min(), 2.5, 6.0) + s) / tau)  # ~1 within 2.5-6 mm of the surface
    centre = expit((0.45 - t) / 0.05)
    core = expit((0.7 - t) / 0.05)
    jit = rng.normal(1.0, 0.06, 3)
    ap = liver[0] * (1.8 * rim + 0.75 * (1 - rim) if rec["rim_aphe"] else 1.7) * jit[0]
    wash = {"none": (1.05, 1.05, 1.0, 1.0), "nonperipheral": (0.7, 0.7, 0.65, 0.65),
            "peripheral": (0.65, 1.0, 0.6, 1.05)}[rec["washout"]]
    pvp = liver[1] * (wash[0] * rim + wash[1] * (1 - rim)) * jit[1]
    dp = liver[2] * (wash[2] * rim + wash[3] * (1 - rim)) * jit[2]
    if rec["delayed_central"]:
        pvp = pvp + centre * (1.15 * liver[1] - pvp)
        dp = dp + centre * (1.35 * liver[2] - dp)
    amp = float(np.clip(0.10 * np.exp(0.5 * h), 0.02, 0.4))  # texture amplitude grows with the latent
    necrosis = core * expit((tex[1] - (1.3 - 0.6 * h)) / 0.15)  # necrotic fraction of the core grows too
    out = []
    for img in (ap, pvp, dp):
        img = img * (1 + amp * tex[0])
        out.append(img + necrosis * (0.35 * liver[1] - img))
    return out, amp


def render_patient(rec: dict, h: float, scanner: dict, size: str, rng: np.random.Generator,
                   second_reader: bool, keep_bias: bool = False) -> tuple[dict, dict, np.ndarray, dict]:
    """Render one patient's three phases and masks.

    Args:
        keep_bias: also return the true multiplicative bias field (float32, the images' shape, shared by the three
            phases) as ``info["bias_field"]``: the ground truth that N4's presets are judged against
            (``benchmarks/n4_presets.py``). It does not change the random stream, so the images are the same.

    Returns:
        ``(images, masks, affine, info)``: int16 arrays per phase, uint8 masks keyed ``ap``/``ap_r2``..., the
        RAS affine shared by all of them, and ground-truth details for ``truth.csv``.
    """
    spec = SIZES[size]
    fov = np.array(spec["fov"])
    spacing = np.array([scanner["inplane"], scanner["inplane"], scanner["slice"]])
    shape = tuple(int(v) for v in np.round(fov / spacing))
    liver_c = np.array([-60.0, -10.0, 0.0]) + rng.normal(0, 5, 3)
    liver_a = np.array([95.0, 80.0, 80.0]) * rng.uniform(0.9, 1.1, 3)
    tumour = Tumour(float(rec["ltd_mm"]), rng, max_z_mm=fov[2] / 2 - 8)
    room = np.maximum(0, 0.5 * (liver_a - tumour.extent))
    centre = liver_c + rng.uniform(-1, 1, 3) * room
    if spec["crop"]:
        grid_c = centre + rng.uniform(-1, 1, 3) * np.clip(fov / 2 - tumour.extent - 8, 0, 15)
    else:
        grid_c = np.array([0.0, 0.0, centre[2] + rng.uniform(-20, 20)])
    origin = grid_c - (np.asarray(shape) - 1) / 2 * spacing
    X, Y, Z = ((origin[i] + spacing[i] * np.arange(shape[i])).astype(np.float32) for i in range(3))
    X, Y, Z = X[:, None, None], Y[None, :, None], Z[None, None, :]
    # numpy float64 scalars would promote the float32 grids to float64: use Python floats (lists) from here on
    tau = float(0.3 * spacing.mean())
    level = {k: (np.array(v) * rng.normal(1, 0.05)).tolist() for k, v in TISSUE.items()}
    lc, la = liver_c.tolist(), liver_a.tolist()

    body_a = (np.array([165.0, 120.0]) * rng.uniform(0.95, 1.05, 2)).tolist()
    body = expit(-(np.sqrt((X / body_a[0]) ** 2 + (Y / body_a[1]) ** 2) - 1) * (min(body_a) / tau))
    spine = expit(-(np.sqrt(X ** 2 + (Y - 95) ** 2) - 18) / tau)
    aorta = expit(-(np.sqrt((X - 15) ** 2 + (Y - 65) ** 2) - 11) / tau)
    ivc = expit(-(np.sqrt((X + 20) ** 2 + (Y - 60) ** 2) - 12) / tau)
    lob = 0.0
    for _ in range(2):
        k, p = rng.uniform(0.01, 0.03, 3).tolist(), rng.uniform(0, 2 * np.pi, 3).tolist()
        lob = lob + 0.05 * np.cos(k[0] * X + p[0]) * np.cos(k[1] * Y + p[1]) * np.cos(k[2] * Z + p[2])
    q = np.sqrt(((X - lc[0]) / la[0]) ** 2 + ((Y - lc[1]) / la[1]) ** 2 + ((Z - lc[2]) / la[2]) ** 2)
    liver = expit(-(q - 1 - lob) * (min(la) / tau)) * body
    vessel = np.zeros(shape, np.float32)
    hilum = liver_c + np.array([45.0, 15.0, -10.0])
    for _ in range(3):
        d = rng.normal(size=3) * np.array([1.0, 0.6, 0.6]) - np.array([1.0, 0.0, 0.0])
        end = hilum + d / np.linalg.norm(d) * rng.uniform(50, 90)
        radius = float(rng.uniform(3, 6))
        vlo = np.maximum(0, np.floor((np.minimum(hilum, end) - radius - 3 - origin) / spacing).astype(int))
        vhi = np.minimum(shape, np.ceil((np.maximum(hilum, end) + radius + 3 - origin) / spacing).astype(int) + 1)
        if (vhi <= vlo).any():
            continue
        vb = tuple(slice(a, b) for a, b in zip(vlo, vhi))
        dist = _segment_distance(X[vb[0]], Y[:, vb[1]], Z[:, :, vb[2]], hilum, end)
        vessel[vb] = np.maximum(vessel[vb], expit(-(dist - radius) / tau))
    vessel *= liver
    parenchyma = 1 + 0.03 * smooth_noise(rng, shape, spacing, 8.0)[0]

    # tumour fields on its bounding box (with room for the capsule and mask jitter)
    lo = np.maximum(0, np.floor((centre - tumour.extent - 8 - origin) / spacing).astype(int) - 2)
    hi = np.minimum(shape, np.ceil((centre + tumour.extent + 8 - origin) / spacing).astype(int) + 3)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    cx, cy, cz = centre.tolist()
    t, s = tumour.fields(X[box[0]] - cx, Y[:, box[1]] - cy, Z[:, :, box[2]] - cz)
    tex = smooth_noise(rng, t.shape, spacing, 4.0, channels=4)
    tum_frac = expit(-s / tau)
    cap_frac = np.clip(expit((float(rng.uniform(2.0, 3.0)) - s) / tau) - tum_frac, 0, 1) * float(rec["capsule"])
    tum_img, amp = _tumour_intensities(rec, h, level["liver"], t, s, tex, rng)

    bias = _bias_field(rng, X, Y, Z, fov, scanner["bias"])
    # the liver is painted over a 2-D (z-invariant) background of body wall, spine, aorta and IVC; the vessels
    # (already restricted to the liver) over both. Precomputed weights keep the per-phase work to a few passes.
    liver = (liver * ((1 - spine) * (1 - aorta) * (1 - ivc))).astype(np.float32)
    keep = (1 - liver) * (1 - vessel)
    liver_w = liver * parenchyma * (1 - vessel)
    images = {}
    for k, phase in enumerate(PHASES):
        back = body * level["body"][k]
        for frac, tissue in ((spine, "spine"), (aorta, "aorta"), (ivc, "ivc")):
            back = back + frac * body * (level[tissue][k] - back)
        img = keep * back.astype(np.float32)
        img += level["liver"][k] * liver_w
        img += vessel * level["hepatic_vessel"][k]
        sub = img[box]
        if k > 0:
            _paint(sub, cap_frac, level["liver"][k] * (1.35 if k == 1 else 1.5))
        _paint(sub, tum_frac, tum_img[k])
        images[phase] = _acquire(img, bias, scanner, rng)
    masks = {}
    for phase in PHASES:
        masks[phase] = _reader_mask(s, shape, box, spacing, rng, jitter=0.35, shift_p=(0.15, 0.15, 0.0))
    if second_reader:
        for phase in PHASES:
            masks[f"{phase}_r2"] = _reader_mask(s, shape, box, spacing, rng, jitter=0.8, shift_p=(0.3, 0.3, 0.0))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [-origin[0], -origin[1], origin[2]]
    info = {"tumour_x_mm": round(cx, 3), "tumour_y_mm": round(cy, 3), "tumour_z_mm": round(cz, 3),
            "tumour_volume_ml": round(float((s < 0).sum() * spacing.prod() / 1000), 4),
            "texture_amplitude": round(amp, 5),
            "necrotic_fraction": round(float(((tex[1] > 1.3 - 0.6 * h) & (t < 0.7)).sum() / max(1, (s < 0).sum())), 5),
            "nx": shape[0], "ny": shape[1], "nz": shape[2]}
    if keep_bias:
        info["bias_field"] = bias.astype(np.float32)
    return images, masks, affine, info


def _bias_field(rng, X, Y, Z, fov, strength: float) -> np.ndarray:
    """Smooth multiplicative bias: exp of a random quadratic polynomial of position (SD ~ ``strength``)."""
    x, y, z = 2 * X / float(fov[0]), 2 * Y / float(fov[1]), 2 * Z / float(fov[2])
    c = (strength * rng.normal(size=7) / np.sqrt(7)).tolist()
    log_b = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * x * y + c[6] * z * z
    return np.exp(log_b)


def _acquire(img: np.ndarray, bias: np.ndarray, scanner: dict, rng: np.random.Generator) -> np.ndarray:
    """Scanner gain, offset, bias field and Gaussian noise folded at zero (a magnitude image); int16."""
    sig = scanner["gain"] * img * bias + scanner["offset"]
    sd = scanner["noise"] * scanner["gain"] * TISSUE["liver"][1]
    sig += rng.standard_normal(img.shape, dtype=np.float32) * sd
    return np.clip(np.rint(np.abs(sig)), 0, 32767).astype(np.int16)


def _reader_mask(s: np.ndarray, shape: tuple, box: tuple, spacing: np.ndarray, rng: np.random.Generator,
                 jitter: float, shift_p: tuple[float, float, float]) -> np.ndarray:
    """One reader's mask of one phase: the true boundary moved by a smooth random offset (~``jitter`` in-plane
    voxels, at most 15 % of the tumour's inner radius so small lesions survive) and shifted by one voxel along
    each axis with probability ``shift_p`` (per axis; used in-plane only, since a whole thick slice in z would be
    a gross error for small lesions)."""
    scale = min(jitter * float(spacing[0]), 0.15 * float(-s.min()))
    eta = smooth_noise(rng, s.shape, spacing, 10.0)[0] * scale + float(rng.normal(0, 0.5 * scale))
    sub = s <= eta
    if not sub.any():
        sub = s <= s.min()
    shift = [int(rng.choice([-1, 0, 1], p=[p / 2, 1 - p, p / 2])) for p in shift_p]
    sub = np.roll(sub, tuple(shift), axis=(0, 1, 2))
    mask = np.zeros(shape, np.uint8)
    mask[box] = sub
    return mask


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, huffman_only: bool = False) -> None:
    """Write a .nii.gz deterministically and atomically.

    zlib's own gzip wrapper (wbits=31) writes no time stamp and no file name, so equal inputs give equal bytes.
    Noisy images barely profit from LZ77 matching, so they use Huffman-only coding (2-3x faster, ~4 % larger);
    masks use the default strategy (they shrink ~100x).
    """
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    strategy = zlib.Z_HUFFMAN_ONLY if huffman_only else zlib.Z_DEFAULT_STRATEGY
    comp = zlib.compressobj(1 if huffman_only else 6, zlib.DEFLATED, 31, 9, strategy)
    with atomic_path(path) as tmp:
        tmp.write_bytes(comp.compress(img.to_bytes()) + comp.flush())


def rendered(rec: dict, h: float, scanner: dict, size: str, seed: tuple, second_reader: bool):
    """:func:`render_patient` with the patient's own random stream: the same voxels whatever the file format."""
    return render_patient(rec, float(h), scanner, size, np.random.default_rng([*seed, 7]), second_reader)


def write_patient(rec: dict, h: float, scanner: dict, out: Path, size: str, seed: tuple,
                  second_reader: bool) -> tuple[dict, dict]:
    """Render and write one patient; returns (cohort path columns relative to ``out``, truth details)."""
    images, masks, affine, info = rendered(rec, h, scanner, size, seed, second_reader)
    pid, paths = rec["patient_id"], {}
    for phase in PHASES:
        rel = f"images/{pid}_{phase}.nii.gz"
        write_nifti(out / rel, images[phase], affine, huffman_only=True)
        paths[phase] = rel
    for key, mask in masks.items():
        phase, r2 = key.split("_")[0], key.endswith("_r2")
        rel = f"masks/{pid}_{phase}_mask{'_r2' if r2 else ''}.nii.gz"
        write_nifti(out / rel, mask, affine)
        paths[f"{phase}_mask{'_r2' if r2 else ''}"] = rel
    return paths, info
