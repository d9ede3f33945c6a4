"""One patient's DICOM study as the input of an exported bundle: series chosen per phase, masks, one volume.

Selection rules (documented in ``deploy/README.md``), applied to every DICOM object under the input folder:

* a phase's image series is the one whose SeriesDescription matches :data:`PHASE_RULES` (case-insensitive
  words: ``AP``/``arterial``, ``PVP``/``portal``, ``DP``/``delayed``/``equilibrium``); none, or two candidates,
  for a phase is an error naming the series seen; a candidate whose Modality is not ``MR`` is an error;
* a phase's mask is the DICOM SEG whose ReferencedSeriesSequence names that phase's series (exactly one); a SEG
  that references none of the chosen series is an error naming it and the series it references;
* or a phase's mask is a NIfTI file at the top of the input folder, ``<phase>_mask.nii.gz`` (or ``.nii``), or
  ``mask.nii.gz`` for every phase (as the cohort table's ``mask`` column), on that phase's series grid; a phase with
  both a NIfTI mask and a SEG is an error naming both.

:func:`load_volume` reads the chosen series and masks with the study's one reader
(:class:`p53hcc.tools.preprocessing.chain.SeriesSpacingReader`, as the bundles' ``inference.json`` does) into the
six-channel volume (AP, PVP, DP, their masks) that the bundles' ``deploy.json`` takes, a phase on another grid
resampled onto the AP grid; nothing is written.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p53hcc.tools.cohort.dicomseg import SEG_SOP_CLASS, is_dicom_file
from p53hcc.tools.deploy.series_checks import DicomInputError
from p53hcc.tools.schema import PHASES

#: SeriesDescription words that name each phase (regular expressions, case-insensitive).
PHASE_RULES = {"ap": r"\b(ap|arterial)\b", "pvp": r"\b(pvp|portal)\b", "dp": r"\b(dp|delayed|equilibrium)\b"}


@dataclass
class Series:
    """One DICOM series (or SEG instance) found under the input folder."""

    uid: str
    modality: str
    description: str
    sop_class: str
    study_uid: str
    patient_id: str
    files: list[str]
    referenced: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"series {self.uid} ({self.modality}, '{self.description}')"


def scan(folder: str | Path) -> list[Series]:
    """Every DICOM series under ``folder`` (headers only), in series-UID order."""
    import pydicom

    found: dict[str, Series] = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_dicom_file(p)):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as err:  # a damaged header: a refusal naming the file
            raise DicomInputError(f"file {path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
        if "SeriesInstanceUID" not in ds:
            raise DicomInputError(f"file {path}: not a readable DICOM file (no SeriesInstanceUID: a damaged header)")
        uid = str(ds.SeriesInstanceUID)
        if uid not in found:
            refs = tuple(str(r.SeriesInstanceUID) for r in getattr(ds, "ReferencedSeriesSequence", []))
            found[uid] = Series(uid, str(getattr(ds, "Modality", "")), str(getattr(ds, "SeriesDescription", "")),
                                str(getattr(ds, "SOPClassUID", "")), str(getattr(ds, "StudyInstanceUID", "")),
                                str(getattr(ds, "PatientID", "")), [], refs)
        found[uid].files.append(str(path))
    if not found:
        raise DicomInputError(f"{folder}: no DICOM files found")
    return [found[k] for k in sorted(found)]


def _listing(series: list[Series]) -> str:
    return "; ".join(str(s) for s in series) or "none"


def nifti_masks(folder: str | Path) -> dict[str, Path]:
    """The NIfTI tumour masks at the top of the input folder, by phase (``mask.nii.gz`` stands for every phase)."""
    folder = Path(folder)

    def one(stem: str) -> Path | None:
        hits = [folder / f"{stem}{ext}" for ext in (".nii.gz", ".nii") if (folder / f"{stem}{ext}").is_file()]
        if len(hits) > 1:
            raise DicomInputError(f"two NIfTI masks {hits[0]} and {hits[1]}: keep one")
        return hits[0] if hits else None

    common = one("mask")
    own = {p: one(f"{p}_mask") for p in PHASES}
    if common is not None and any(own.values()):
        raise DicomInputError(f"NIfTI mask {common} (every phase) and {next(v for v in own.values() if v)}: keep the "
                              "per-phase masks or the common one")
    return {p: common or own[p] for p in PHASES if common or own[p]}


def select_series(series: list[Series], nifti: dict[str, Path] | None = None
                  ) -> tuple[dict[str, Series], dict[str, Series | Path]]:
    """``(images, masks)``: the image series and the mask of each phase (its SEG, or its NIfTI file from
    ``nifti``) by the module's selection rules."""
    nifti = nifti or {}
    segs = [s for s in series if s.sop_class == SEG_SOP_CLASS or s.modality == "SEG"]
    others = [s for s in series if s not in segs]
    images = {}
    for phase in PHASES:
        hits = [s for s in others if re.search(PHASE_RULES[phase], s.description, re.IGNORECASE)]
        if not hits:
            raise DicomInputError(f"phase {phase.upper()}: no series description matches {PHASE_RULES[phase]!r} "
                                  f"(series found: {_listing(others)})")
        if len(hits) > 1:
            raise DicomInputError(f"phase {phase.upper()}: {len(hits)} candidate series, {_listing(hits)}; keep one "
                                  "per phase in the input")
        if hits[0].modality != "MR":
            raise DicomInputError(f"phase {phase.upper()}: {hits[0]} has modality {hits[0].modality or '?'}, not MR")
        images[phase] = hits[0]
    chosen = {s.uid: p for p, s in images.items()}
    for seg in segs:
        if not any(r in chosen for r in seg.referenced):
            raise DicomInputError(f"mask {seg} references series {', '.join(seg.referenced) or 'none'}, none of the "
                                  f"selected phase series ({_listing(list(images.values()))})")
    masks: dict[str, Series | Path] = {}
    for phase, image in images.items():
        hits = [s for s in segs if image.uid in s.referenced]
        if phase in nifti:
            if hits:
                raise DicomInputError(f"phase {phase.upper()}: two masks for {image}, the NIfTI file {nifti[phase]} "
                                      f"and {_listing(hits)}; keep one")
            masks[phase] = nifti[phase]
            continue
        if len(hits) != 1:
            raise DicomInputError(f"phase {phase.upper()}: {len(hits)} DICOM SEG masks reference {image} "
                                  f"({_listing(hits)}); exactly one is needed (or a NIfTI {phase}_mask.nii.gz)")
        masks[phase] = hits[0]
    return images, masks


def _series_folder(series: Series, scratch: Path) -> str:
    """A folder holding exactly the series' files (its own, or links to them in ``scratch``)."""
    own = {str(Path(f).parent) for f in series.files}
    if len(own) == 1:
        folder = Path(own.pop())
        if sorted(str(p) for p in folder.iterdir() if p.is_file() and is_dicom_file(p)) == sorted(series.files):
            return str(folder)
    folder = scratch / series.uid
    folder.mkdir(parents=True)
    for i, f in enumerate(sorted(series.files)):
        (folder / f"{i:05d}.dcm").symlink_to(Path(f).resolve())
    return str(folder)


def mask_path(mask: Series | Path) -> str:
    """The file a phase's mask is read from (its SEG instance, or its NIfTI file)."""
    return mask.files[0] if isinstance(mask, Series) else str(mask)


def series_folders(images: dict[str, Series], scratch: Path) -> dict[str, str]:
    """A folder per phase holding exactly its series' files (links in ``scratch`` where needed)."""
    return {p: _series_folder(s, scratch) for p, s in images.items()}


def _same_grid(a, b) -> bool:
    import torch

    return tuple(a.shape[1:]) == tuple(b.shape[1:]) and bool(
        torch.allclose(a.affine.double(), b.affine.double(), atol=1e-3))


def load_volume(images: dict[str, Series], masks: dict[str, Series | Path]) -> tuple[object, list[str]]:
    """``(volume, resampled)``: the six-channel MetaTensor (AP, PVP, DP, AP mask, PVP mask, DP mask) on the AP
    series' grid, and the phases that had to be resampled onto it.

    Each mask must lie on its own series' grid (an error naming both otherwise). A phase on another grid than AP
    (other slices, field of view or orientation) is resampled onto the AP grid, trilinear for the image and
    nearest-neighbour for its mask, because the bundle's deploy input is one volume; ``p53hcc predict`` processes
    each phase on its own grid instead, so for such a patient the two DL probabilities may differ slightly.
    """
    import torch
    from monai.transforms import ResampleToMatch

    from p53hcc.tools.deploy.volumes import read_volume

    keys = [*PHASES, *(f"{p}_mask" for p in PHASES)]
    with tempfile.TemporaryDirectory(prefix="p53hcc-dicom-") as scratch:
        paths = series_folders(images, Path(scratch))
        paths.update({f"{p}_mask": mask_path(m) for p, m in masks.items()})
        data = {k: read_volume(paths[k]) for k in keys}  # as LoadImaged(SeriesSpacingReader) reads them
    for phase in PHASES:
        if not _same_grid(data[f"{phase}_mask"], data[phase]):
            raise DicomInputError(f"phase {phase.upper()}: the mask {mask_path(masks[phase])} is not on the grid of "
                                  f"{images[phase]} (shape {tuple(data[f'{phase}_mask'].shape[1:])} vs "
                                  f"{tuple(data[phase].shape[1:])}, or another position)")
    ref = data[PHASES[0]]
    resampled = [p for p in PHASES[1:] if not _same_grid(data[p], ref)]
    for phase in resampled:
        data[phase] = ResampleToMatch(mode="bilinear", padding_mode="zeros", dtype=torch.float32)(
            data[phase], img_dst=ref)
        data[f"{phase}_mask"] = ResampleToMatch(mode="nearest", padding_mode="zeros", dtype=torch.float32)(
            data[f"{phase}_mask"], img_dst=ref)
    volume = torch.cat([data[k] for k in keys])
    volume.meta.update(ref.meta)
    return volume, resampled
