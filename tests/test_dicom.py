"""The synthetic cohort as DICOM (MR series + DICOM SEG): the same voxels and grid as the NIfTI cohort, read by the
one image reader and by the bundles' reader, accepted by the validator; SEG frames placed on a series grid."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

pytest.importorskip("highdicom")

from p53hcc.tools.cohort.dicomseg import is_dicom_seg, read_seg, seg_info
from p53hcc.tools.cohort.imageio import read_geometry, read_image
from p53hcc.tools.cohort.manifest import validate_cohort
from p53hcc.tools.cohort.synth.cohort import make_cohort
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.schema import PHASES


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    nifti = make_cohort(2, root / "nifti", seed=3)
    dicom = make_cohort(2, root / "dicom", seed=3, image_format="dicom")
    return nifti, dicom


def test_dicom_cohort_has_the_nifti_voxels_and_grids(cohorts):
    nifti, dicom = (pd.read_csv(c, dtype={"patient_id": str}) for c in cohorts)
    assert nifti["patient_id"].tolist() == dicom["patient_id"].tolist()
    pd.testing.assert_frame_equal(nifti.drop(columns=[c for c in nifti if "ap" in c or "dp" in c or "pvp" in c]),
                                  dicom.drop(columns=[c for c in dicom if "ap" in c or "dp" in c or "pvp" in c]))
    for (_, a), (_, b) in zip(nifti.iterrows(), dicom.iterrows()):
        for col in (*PHASES, *(f"{p}_mask" for p in PHASES)):
            x, y = read_image(cohorts[0].parent / a[col]), read_image(cohorts[1].parent / b[col])
            assert np.array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y)), col
            assert read_geometry(cohorts[0].parent / a[col]).mismatch(read_geometry(cohorts[1].parent / b[col])) == []
        assert b["ap"].endswith("/ap") and b["ap_mask"].endswith("seg/ap.dcm")
        image, mask = (read_image(cohorts[1].parent / b[c]) for c in ("pvp", "pvp_mask"))
        assert image.GetOrigin() == mask.GetOrigin() and image.GetSpacing() == mask.GetSpacing()


def test_the_validator_and_the_bundle_reader_read_dicom_seg(cohorts):
    from monai.transforms import LoadImaged

    from p53hcc.tools.preprocessing.chain import SeriesSpacingReader

    assert validate_cohort(cohorts[1], progress=False) == []
    row = pd.read_csv(cohorts[1], dtype={"patient_id": str}).iloc[0]
    root = cohorts[1].parent
    d = LoadImaged(["i", "m"], reader=SeriesSpacingReader(), image_only=True, ensure_channel_first=True)(
        {"i": str(root / row["dp"]), "m": str(root / row["dp_mask"])})
    assert d["i"].shape == d["m"].shape and np.array_equal(d["i"].affine.numpy(), d["m"].affine.numpy())
    ref = sitk.GetArrayFromImage(read_image(root / row["dp_mask"]))
    assert int(d["m"].sum()) == int(ref.sum()) > 0
    info = seg_info(root / row["dp_mask"])
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(root / row["dp"]))
    assert info.referenced_series == tuple(series) and info.n_frames == ref.shape[0]
    assert is_dicom_seg(root / row["dp_mask"]) and not is_dicom_seg(next((root / row["dp"]).iterdir()))


def test_a_sparse_seg_is_placed_on_its_series_grid(cohorts, tmp_path):
    import pydicom

    root = cohorts[1].parent
    row = pd.read_csv(cohorts[1], dtype={"patient_id": str}).iloc[0]
    series = read_image(root / row["ap"])
    full = sitk.GetArrayFromImage(read_image(root / row["ap_mask"]))
    ds = pydicom.dcmread(root / row["ap_mask"])
    frames = ds.pixel_array  # highdicom's frame order (here: descending slice position)
    keep = [i for i in range(len(frames)) if frames[i].any()]  # what highdicom writes by default: no empty frame
    frames = frames[keep]
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([ds.PerFrameFunctionalGroupsSequence[i] for i in keep])
    ds.NumberOfFrames = len(keep)
    ds.PixelData = pydicom.pixels.pack_bits(frames)
    sparse = tmp_path / "sparse.dcm"
    ds.save_as(sparse)
    slab = read_seg(sparse)
    assert slab.GetSize()[2] == len(keep) < full.shape[0]  # on its own: only the segmented slab
    placed = read_seg(sparse, reference=series)
    assert np.array_equal(sitk.GetArrayFromImage(placed), full) and placed.GetOrigin() == series.GetOrigin()
    moved = sitk.Image(series)
    moved.SetOrigin(tuple(np.add(series.GetOrigin(), (0, 0, 0.4 * series.GetSpacing()[2]))))
    with pytest.raises(P53hccError, match="does not lie on a slice"):
        read_seg(sparse, reference=moved)
    with pytest.raises(P53hccError, match="not a DICOM SEG"):
        seg_info(next((root / row["ap"]).iterdir()))
