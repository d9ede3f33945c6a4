"""The one image reader: NIfTI, NRRD, MetaImage and DICOM series folders, through SimpleITK (ITK's IO), and DICOM
SEG masks (:mod:`p53hcc.tools.cohort.dicomseg`).

Validation reads headers only (fast); analysis code reads voxels. MONAI's ``ITKReader`` used in the bundles reads
the same formats through the same ITK IO (and the same SEG decoder), so a file accepted here loads there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from p53hcc.tools.cohort.dicomseg import is_dicom_seg, read_seg


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an image: size (x, y, z), spacing in mm, origin in mm, direction cosines (row-major 3x3)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def mismatch(self, other: Geometry, spacing_tol: float = 1e-3, origin_tol: float = 1e-2,
                 direction_tol: float = 1e-3) -> list[str]:
        """Differences beyond tolerance (relative for spacing, mm for origin, absolute for direction)."""
        out = []
        if self.size != other.size:
            out.append(f"size {self.size} != {other.size}")
        if not np.allclose(self.spacing, other.spacing, rtol=spacing_tol, atol=0):
            out.append(f"spacing {_fmt(self.spacing)} != {_fmt(other.spacing)}")
        if not np.allclose(self.origin, other.origin, rtol=0, atol=origin_tol):
            out.append(f"origin {_fmt(self.origin)} != {_fmt(other.origin)}")
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_tol):
            out.append(f"direction {_fmt(self.direction)} != {_fmt(other.direction)}")
        return out


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def dicom_files(folder: str | Path) -> list[str]:
    """The file names of the one DICOM series in ``folder``, in slice order."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise RuntimeError(f"no DICOM series found in folder {folder}")
    if len(ids) > 1:
        raise RuntimeError(f"{len(ids)} DICOM series in folder {folder}; put one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def read_geometry(path: str | Path) -> Geometry:
    """Read only the header of an image file or DICOM series folder."""
    path = Path(path)
    if is_dicom_seg(path):
        return geometry_of(read_seg(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(dicom_files(path)[0] if path.is_dir() else str(path))
    reader.ReadImageInformation()
    if path.is_dir():  # a series: the z size is the number of slices; read fully for an exact grid
        return geometry_of(read_image(path))
    return Geometry(tuple(int(s) for s in reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()))


def _header_value(reader: sitk.ImageFileReader, tag: str) -> str | None:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else None


def _decimals(ds: str) -> int:
    """Decimal places written in a DICOM decimal string (``"-63.70"`` -> 2, ``"2.5E-1"`` -> 2)."""
    mantissa, _, exponent = ds.strip().lower().partition("e")
    places = len(mantissa.partition(".")[2])
    return max(0, places - int(exponent or 0))


def series_spacing(files: list[str], spacing: tuple[float, ...]) -> tuple[float, ...]:
    """The slice spacing of a DICOM series as its headers state it, not as floating-point arithmetic gives it.

    ITK derives the z spacing from the distance between slice positions (ImagePositionPatient), which scanners
    often write with float32 precision: 2.5 mm slices read as 2.4999999 mm and a 1 mm resampling then gets one
    slice fewer. The derived value is replaced by the header's SpacingBetweenSlices (0018,0088) or
    SliceThickness (0018,0050) when it agrees with one of them to 0.1 %; otherwise it is rounded to the decimals
    the positions are written with, at most 4 (0.1 um: below any scanner's precision).
    """
    first, second = (sitk.ImageFileReader() for _ in range(2))
    first.SetFileName(files[0])
    first.ReadImageInformation()
    derived = float(spacing[2])
    for tag in ("0018|0088", "0018|0050"):
        value = _header_value(first, tag)
        try:
            stated = float(value) if value else None
        except ValueError:
            stated = None
        if stated and abs(derived - stated) <= 1e-3 * stated:
            return (*spacing[:2], stated)
    places = 4
    if len(files) > 1:
        second.SetFileName(files[1])
        second.ReadImageInformation()
        written = [v for r in (first, second) if (v := _header_value(r, "0020|0032"))]
        if written:
            places = min(4, max(_decimals(x) for v in written for x in v.split("\\")))
    return (*spacing[:2], round(derived, places))


def read_image(path: str | Path) -> sitk.Image:
    """Read an image file, a DICOM series folder (slice spacing as the headers state it) or a DICOM SEG mask into a
    SimpleITK image."""
    path = Path(path)
    if is_dicom_seg(path):
        return read_seg(path)
    if path.is_dir():
        files = dicom_files(path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        image = reader.Execute()
        if image.GetDimension() == 3:
            image.SetSpacing(series_spacing(files, image.GetSpacing()))
        return image
    return sitk.ReadImage(str(path))


def geometry_of(image: sitk.Image) -> Geometry:
    """Geometry of an image already in memory."""
    return Geometry(tuple(int(s) for s in image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                    tuple(image.GetDirection()))


def read_voxels_strict(path: str | Path) -> np.ndarray:
    """Voxel array in ITK index order (x, y, z, like :class:`Geometry`) for integrity checks, failing loudly on
    corruption.

    ITK's NIfTI reader silently replaces NaN by 0 and zero-fills a truncated ``.nii.gz``; nibabel raises on the
    truncation and keeps NaN, so NIfTI voxels are checked through nibabel, everything else through SimpleITK.
    """
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).dataobj)
    return sitk.GetArrayFromImage(read_image(path)).transpose()


def read_array(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Voxel array in (z, y, x) order and the geometry of an image."""
    image = read_image(path)
    return sitk.GetArrayFromImage(image), geometry_of(image)
