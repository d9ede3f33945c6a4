"""One patient's DICOM study as the input of an exported bundle: series chosen per phase, masks, one volume.

Selection rules (documented in ``deploy/README.md``), applied to every DICOM object under the input folder:

* a phase's image series is the one whose SeriesDescription matches :data:`PHASE_RULES` (case-insensitive
  words: ``AP``/``arterial``, ``PVP``/``portal``, ``DP``/``delayed``/``equilibrium``); none, or two candidates,
  for a phase is an error naming the series seen; a candidate whose Modality is not ``MR`` is an error;
* a phase's mask is the DICOM SEG whose ReferencedSeriesSequence names that phase's series (exactly one); a SEG
  that references none of the chosen series is an error naming it and the series it references.

:func:`load_volume` reads the chosen series and SEGs with the study's one reader
(:class:`p53hcc.tools.preprocessing.chain.SeriesSpacingReader`, as the bundles' ``inference.json`` does) into the
six-channel volume (AP, PVP, DP, their masks) that the bundles' ``deploy.json`` takes; nothing is written.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p53hcc.tools.cohort.dicomseg import SEG_SOP_CLASS, is_dicom_file
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.schema import PHASES

#: SeriesDescription words that name each phase (regular expressions, case-insensitive).
PHASE_RULES = {"ap": r"\b(ap|arterial)\b", "pvp": r"\b(pvp|portal)\b", "dp": r"\b(dp|delayed|equilibrium)\b"}


class DicomInputError(P53hccError):
    """A DICOM study the app cannot score: missing or ambiguous phase, wrong modality, mask not referencing."""


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
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
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


def select_series(series: list[Series]) -> tuple[dict[str, Series], dict[str, Series]]:
    """``(images, masks)``: the image series and the SEG of each phase by the module's selection rules."""
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
    masks = {}
    for phase, image in images.items():
        hits = [s for s in segs if image.uid in s.referenced]
        if len(hits) != 1:
            raise DicomInputError(f"phase {phase.upper()}: {len(hits)} DICOM SEG masks reference {image} "
                                  f"({_listing(hits)}); exactly one is needed")
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


def load_volume(images: dict[str, Series], masks: dict[str, Series]):
    """The six-channel MetaTensor (AP, PVP, DP, AP mask, PVP mask, DP mask) on the phases' common grid."""
    import torch
    from monai.transforms import LoadImaged

    from p53hcc.tools.preprocessing.chain import SeriesSpacingReader

    keys = [*PHASES, *(f"{p}_mask" for p in PHASES)]
    with tempfile.TemporaryDirectory(prefix="p53hcc-dicom-") as scratch:
        paths = {p: _series_folder(s, Path(scratch)) for p, s in images.items()}
        paths.update({f"{p}_mask": s.files[0] for p, s in masks.items()})
        data = LoadImaged(keys, reader=SeriesSpacingReader(), image_only=True, ensure_channel_first=True)(paths)
    ref = data[PHASES[0]]
    for key in keys[1:]:
        source = images.get(key) or masks[key.split("_")[0]]
        if tuple(data[key].shape[1:]) != tuple(ref.shape[1:]) or not torch.allclose(
                data[key].affine.double(), ref.affine.double(), atol=1e-3):
            raise DicomInputError(f"{source} is not on the {PHASES[0].upper()} series' grid (shape "
                                  f"{tuple(data[key].shape[1:])} vs {tuple(ref.shape[1:])}): the deploy input needs "
                                  "the three phases and their masks on one grid")
    volume = torch.cat([data[k] for k in keys])
    volume.meta.update(ref.meta)
    return volume
