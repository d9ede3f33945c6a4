"""The synthetic cohort as DICOM: one MR series per phase and a DICOM SEG per phase mask (``p53hcc synth --format
dicom``).

The voxels are the NIfTI cohort's (:func:`p53hcc.tools.cohort.synth.images.rendered`: same seed, same patient,
same values), written as a study per patient: three single-frame MR series on one frame of reference (the
arterial, portal-venous and delayed acquisitions of one dynamic exam, told apart by their series description:
``AP arterial phase``, ``PVP portal venous phase``, ``DP delayed phase``) and one binary SEG per phase mask (a
frame for every slice, so the mask lies on its series' grid) written by highdicom. UIDs derive from the seed and
the patient, so a rerun writes the same identifiers. Layout under ``out/dicom/<patient>/``: ``<phase>/`` (the
series, one file per slice), ``seg/<phase>.dcm`` and ``seg/<phase>_r2.dcm`` (second reader).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path
from p53hcc.tools.schema import PHASES

#: Series description and number of each phase (the Deploy app's default selection rules match these words).
PHASE_SERIES = {"ap": ("AP arterial phase", 3), "pvp": ("PVP portal venous phase", 4), "dp": ("DP delayed phase", 5)}
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY_DATE, STUDY_TIME = "20240101", "090000"


def _modules():
    try:
        import highdicom
        import pydicom
    except ImportError as err:
        raise P53hccError("synth --format dicom needs pydicom and highdicom: pip install 'p53hcc[dicom]'") from err
    return pydicom, highdicom


def uid(*parts) -> str:
    """A DICOM UID derived from ``parts`` (the same parts give the same UID)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, unit axis directions as columns, spacing) in DICOM's LPS space of a RAS (NIfTI) affine."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return lps[:3, 3], lps[:3, :3] / spacing, spacing


def series_datasets(volume: np.ndarray, affine: np.ndarray, rec: dict, phase: str, study_uid: str, frame_uid: str,
                    seed: tuple, scanner: str) -> list:
    """One MR image dataset per axial slice of an (x, y, z) int16 volume, in slice order."""
    _modules()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    origin, axes, spacing = lps_geometry(affine)
    description, number = PHASE_SERIES[phase]
    pid = str(rec["patient_id"])
    series_uid = uid("series", *seed, pid, phase)
    out = []
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = uid("image", *seed, pid, phase, k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.PatientName, ds.PatientID = f"Synthetic^{pid}", pid
        ds.PatientBirthDate, ds.PatientSex = "", {"M": "M", "F": "F"}.get(str(rec.get("sex")), "O")
        ds.PatientAge = f"{int(rec['age']):03d}Y" if rec.get("age") is not None else ""
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, STUDY_DATE, STUDY_TIME
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.StudyDescription = "Synthetic liver DCE-MRI (p53hcc)"
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, number
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer, ds.ManufacturerModelName = "p53hcc synthetic cohort", scanner
        ds.ContrastBolusAgent = "Gd"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "1.3", "3.5", 1
        ds.InstanceNumber = k + 1
        ds.ContentDate, ds.ContentTime = STUDY_DATE, STUDY_TIME
        ds.ImagePositionPatient = [_ds(v) for v in origin + k * spacing[2] * axes[:, 2]]
        ds.ImageOrientationPatient = [_ds(v) for v in np.r_[axes[:, 0], axes[:, 1]]]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype("<i2")).tobytes()
        out.append(ds)
    return out


def seg_dataset(sources: list, mask: np.ndarray, rec: dict, phase: str, reader: str, seed: tuple):
    """A binary DICOM SEG of one phase mask (x, y, z) with a frame for every source slice (highdicom)."""
    _, hd = _modules()
    from pydicom.sr.codedict import codes

    pid = str(rec["patient_id"])
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="tumour", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=np.transpose(mask > 0, (2, 1, 0)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=uid("seg-series", *seed, pid, phase, reader), series_number=10 + PHASES.index(phase),
        sop_instance_uid=uid("seg", *seed, pid, phase, reader), instance_number=1,
        manufacturer="p53hcc synthetic cohort", manufacturer_model_name="synthetic tumour ROI",
        software_versions="p53hcc", device_serial_number="0", series_description=f"{phase.upper()} tumour ROI "
        f"({reader})", omit_empty_frames=False)
    seg.SeriesDate = seg.ContentDate = seg.StudyDate = STUDY_DATE
    seg.SeriesTime = seg.ContentTime = seg.StudyTime = STUDY_TIME
    return seg


def _save(ds, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(str(tmp), enforce_file_format=True)


def write_patient(rec: dict, h: float, scanner: dict, scanner_name: str, out: Path, size: str, seed: tuple,
                  second_reader: bool) -> tuple[dict, dict]:
    """Render one patient (the NIfTI cohort's voxels) and write it as DICOM; returns (cohort path columns relative
    to ``out``, truth details)."""
    from p53hcc.tools.cohort.synth.images import rendered

    images, masks, affine, info = rendered(rec, h, scanner, size, seed, second_reader)
    pid = str(rec["patient_id"])
    root, paths = Path("dicom") / pid, {}
    study_uid, frame_uid = uid("study", *seed, pid), uid("frame", *seed, pid)
    sources = {}
    for phase in PHASES:
        sources[phase] = series_datasets(images[phase], affine, rec, phase, study_uid, frame_uid, seed, scanner_name)
        for k, ds in enumerate(sources[phase]):
            _save(ds, out / root / phase / f"{k + 1:04d}.dcm")
        paths[phase] = (root / phase).as_posix()
    for key, mask in masks.items():
        phase, r2 = key.split("_")[0], key.endswith("_r2")
        rel = root / "seg" / f"{phase}{'_r2' if r2 else ''}.dcm"
        _save(seg_dataset(sources[phase], mask, rec, phase, "r2" if r2 else "r1", seed), out / rel)
        paths[f"{phase}_mask{'_r2' if r2 else ''}"] = rel.as_posix()
    return paths, info
