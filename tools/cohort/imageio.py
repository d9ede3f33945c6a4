"""The one image reader: NIfTI, NRRD, MetaImage and DICOM series folders, through SimpleITK (ITK's IO).

Validation reads headers only (fast); analysis code reads voxels. MONAI's ``ITKReader`` used in the bundles reads
the same formats through the same ITK IO, so a file accepted here loads there.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


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


def _dicom_files(folder: Path) -> list[str]:
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise RuntimeError(f"no DICOM series found in folder {folder}")
    if len(ids) > 1:
        raise RuntimeError(f"{len(ids)} DICOM series in folder {folder}; put one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))


def read_geometry(path: str | Path) -> Geometry:
    """Read only the header of an image file or DICOM series folder."""
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(_dicom_files(path)[0] if path.is_dir() else str(path))
    reader.ReadImageInformation()
    if path.is_dir():  # a series: the z size is the number of slices; read fully for an exact grid
        return geometry_of(read_image(path))
    return Geometry(tuple(int(s) for s in reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()))


def read_image(path: str | Path) -> sitk.Image:
    """Read an image file or a DICOM series folder into a SimpleITK image."""
    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(_dicom_files(path))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def geometry_of(image: sitk.Image) -> Geometry:
    """Geometry of an image already in memory."""
    return Geometry(tuple(int(s) for s in image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                    tuple(image.GetDirection()))


def read_voxels_strict(path: str | Path) -> np.ndarray:
    """Voxel array for integrity checks, failing loudly on corruption.

    ITK's NIfTI reader silently replaces NaN by 0 and zero-fills a truncated ``.nii.gz``; nibabel raises on the
    truncation and keeps NaN, so NIfTI voxels are checked through nibabel, everything else through SimpleITK.
    """
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).dataobj)
    return sitk.GetArrayFromImage(read_image(path))


def read_array(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Voxel array in (z, y, x) order and the geometry of an image."""
    image = read_image(path)
    return sitk.GetArrayFromImage(image), geometry_of(image)
