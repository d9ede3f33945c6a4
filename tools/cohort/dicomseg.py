"""DICOM SEG tumour masks as label volumes: what the one image reader does with a ``.dcm`` segmentation file.

A cohort may name a DICOM Segmentation object (SEG, SOP class 1.2.840.10008.5.1.4.1.1.66.4) as a phase's mask. It
is decoded with pydicom into a 0/1 volume whose grid comes from its frames (plane positions, orientation, pixel
spacing, slice spacing as :func:`p53hcc.tools.cohort.imageio.series_spacing` states it for a series), so a SEG
with one frame per slice of its source series lies exactly on that series' grid, as a NIfTI mask would. Every
segment of the object counts as tumour. A SEG that omits empty slices covers only the segmented slab; given the
series it segments (``reference``) its frames are placed on that series' grid instead (the Deploy app does so).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from p53hcc.tools.errors import P53hccError

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: Tolerance (in voxels) for a frame to lie on a slice of the reference grid, and for evenly spaced frames.
ON_GRID = 0.01


def _pydicom():
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - pydicom is a dependency of p53hcc
        raise P53hccError("reading DICOM SEG masks needs pydicom (pip install pydicom)") from err
    return pydicom


def is_dicom_file(path: str | Path) -> bool:
    """True for a file with the DICOM preamble (``DICM`` at byte 128)."""
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_seg(path: str | Path) -> bool:
    """True for a DICOM Segmentation object file."""
    if not is_dicom_file(path):
        return False
    ds = _pydicom().dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS


@dataclass(frozen=True)
class SegInfo:
    """Header facts of a SEG: its own UIDs and the series it segments."""

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    referenced_series: tuple[str, ...]
    n_frames: int


def seg_info(path: str | Path) -> SegInfo:
    """The identity of a SEG file and the series it references (ReferencedSeriesSequence)."""
    ds = _pydicom().dcmread(str(path), stop_before_pixels=True)
    if str(getattr(ds, "SOPClassUID", "")) != SEG_SOP_CLASS:
        raise P53hccError(f"{path}: not a DICOM SEG (modality {getattr(ds, 'Modality', '?')}, SOP class "
                          f"{getattr(ds, 'SOPClassUID', '?')})")
    refs = tuple(str(r.SeriesInstanceUID) for r in getattr(ds, "ReferencedSeriesSequence", []))
    return SegInfo(str(path), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID), refs,
                   int(getattr(ds, "NumberOfFrames", 1)))


def _frame_geometry(ds) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray]:
    """(row direction, column direction, [row spacing, column spacing], frame positions [n, 3]) in LPS mm."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.PerFrameFunctionalGroupsSequence

    def item(name: str, i: int):
        own = getattr(per_frame[i], name, None)
        return own[0] if own else getattr(shared, name)[0]

    orientation = np.array([float(v) for v in item("PlaneOrientationSequence", 0).ImageOrientationPatient])
    spacing = [float(v) for v in item("PixelMeasuresSequence", 0).PixelSpacing]
    positions = np.array([[float(v) for v in item("PlanePositionSequence", i).ImagePositionPatient]
                          for i in range(len(per_frame))])
    return orientation[:3], orientation[3:], spacing, positions


def _stated_slice_spacing(ds, derived: float) -> float:
    """The slice spacing of the frames as stated (SpacingBetweenSlices / SliceThickness), if it agrees."""
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    measures = getattr(shared, "PixelMeasuresSequence", [None])[0] if shared is not None else None
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = getattr(measures, tag, None) if measures is not None else None
        if value not in (None, "") and abs(derived - float(value)) <= 1e-3 * float(value):
            return float(value)
    return round(derived, 4)


def read_seg(path: str | Path, reference: sitk.Image | None = None) -> sitk.Image:
    """A DICOM SEG as a uint8 0/1 SimpleITK volume (all segments merged).

    Args:
        path: the SEG file.
        reference: the segmented series as read (optional): the frames are placed on its grid, which lets a SEG
            that omits empty slices cover the whole series. Without it the grid is the frames' own.

    Raises:
        P53hccError: not a SEG, frames off the reference grid, or unevenly spaced frames without a reference.
    """
    pydicom = _pydicom()
    ds = pydicom.dcmread(str(path))
    if str(getattr(ds, "SOPClassUID", "")) != SEG_SOP_CLASS:
        raise P53hccError(f"{path}: not a DICOM SEG (SOP class {getattr(ds, 'SOPClassUID', '?')})")
    frames = np.asarray(ds.pixel_array)
    frames = (frames[None] if frames.ndim == 2 else frames) > 0
    row, col, (row_spacing, col_spacing), positions = _frame_geometry(ds)
    normal = np.cross(row, col)
    if reference is not None:
        return _on_reference(path, frames, positions, reference)
    depth = positions @ normal
    slices = np.unique(np.round(depth, 4))
    steps = np.diff(slices)
    if len(steps) and np.ptp(steps) > ON_GRID * steps.mean():
        raise P53hccError(f"{path}: the SEG frames are not evenly spaced; read it against its series (reference)")
    dz = _stated_slice_spacing(ds, float(steps.mean())) if len(steps) else 1.0
    volume = np.zeros((len(slices), int(ds.Rows), int(ds.Columns)), np.uint8)
    index = np.rint((depth - slices[0]) / dz).astype(int)
    for k, frame in zip(index, frames):
        volume[k] |= frame
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((col_spacing, row_spacing, dz))
    image.SetOrigin(tuple(positions[int(np.argmin(depth))]))
    image.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    return image


def _on_reference(path, frames: np.ndarray, positions: np.ndarray, reference: sitk.Image) -> sitk.Image:
    size = reference.GetSize()
    volume = np.zeros((size[2], size[1], size[0]), np.uint8)
    if frames.shape[1:] != volume.shape[1:]:
        raise P53hccError(f"{path}: SEG frames of {frames.shape[2]}x{frames.shape[1]} pixels do not match the "
                          f"series' {size[0]}x{size[1]}")
    for pos, frame in zip(positions, frames):
        idx = np.asarray(reference.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in pos)))
        k = int(np.rint(idx[2]))
        if np.abs(idx - np.rint(idx)).max() > ON_GRID or not 0 <= k < size[2] or np.abs(idx[:2]).max() > ON_GRID:
            raise P53hccError(f"{path}: a SEG frame at {np.round(pos, 2).tolist()} mm does not lie on a slice of "
                              "the series it references")
        volume[k] |= frame
    image = sitk.GetImageFromArray(volume)
    image.CopyInformation(reference)
    return image
