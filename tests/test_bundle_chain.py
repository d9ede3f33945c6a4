"""The bundles' own raw-image chain preprocesses exactly like the study's preprocessing chain, so a bundle run on
raw images and the study (preprocessed volumes, N4 off in the bundle) cut the same crops."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from p53hcc.tools.cohort.splits import cohort_items
from p53hcc.tools.dl.bundle import bundle_parser
from p53hcc.tools.preprocessing.chain import preprocessing_chain
from p53hcc.tools.preprocessing.run import preprocess_cohort, preprocessed_items
from p53hcc.tools.schema import PHASES
from tests.conftest import make_tiny_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two tiny patients whose images have an exact-zero background around the body (air, or a cropped field of
    view), where normalising over all voxels and over the body differ."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("chain")
    csv = make_tiny_cohort(root / "cohort", n=2)
    for path in (root / "cohort" / "images").glob("*.nii.gz"):
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        x, y = np.meshgrid(*[np.linspace(-1, 1, n) for n in data.shape[:2]], indexing="ij")
        data[(x ** 2 + y ** 2) > 0.8] = 0.0
        nib.save(nib.Nifti1Image(data, img.affine), str(path))
    return csv, root


def _chain(arm: str, n4: bool, upto: str = "deterministic_transforms") -> Compose:
    parser = bundle_parser(arm, overrides={"n4": n4, "spatial_size": 32})
    if upto == "deterministic_transforms":
        return Compose(parser.get_parsed_content(upto))
    steps = [t for key in ("load_transforms", "n4_transforms", "spatial_transforms")
             for t in parser.get_parsed_content(key)]
    return Compose(steps)


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_bundle_volumes_equal_the_preprocessing_chain(cohort, arm):
    """load -> RAS -> N4 -> 1 mm -> z-score over the body (non-zero voxels), in the bundle and in preprocessing."""
    csv, _ = cohort
    item = cohort_items(csv)[0]
    chain = preprocessing_chain(None, ["image"], ["mask"])  # the paper preset: the N4 defaults the bundles wire
    for phase in PHASES:
        ref = chain({"image": item[phase], "mask": item[f"{phase}_mask"]})
        if arm == "mc":
            out = _chain("mc", n4=True, upto="spatial")(dict(item))
            image, mask = out[phase], out[f"mask_{phase}"]
        else:
            out = _chain("ff", n4=True, upto="spatial")({"image": item[phase], "mask": item[f"{phase}_mask"]})
            image, mask = out["image"], out["mask"]
        assert image.shape == ref["image"].shape and image.dtype == ref["image"].dtype
        np.testing.assert_allclose(image.numpy(), ref["image"].numpy(), atol=1e-5)
        np.testing.assert_array_equal(mask.numpy(), ref["mask"].numpy())
        body = ref["image"].numpy() != 0
        assert abs(image.numpy()[body].mean()) < 1e-4 and abs(image.numpy()[body].std() - 1) < 1e-3


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_raw_bundle_crops_equal_the_study_crops(cohort, arm):
    """A bundle on raw images (N4 on) and the study's path (preprocessed volumes, N4 off) give the same crops."""
    csv, root = cohort
    preprocess_cohort(csv, root / "study", params="paper", workers=1, progress=False)
    raw = cohort_items(csv)
    pre = preprocessed_items(raw, root / "study")
    for r, p in zip(raw, pre):
        if arm == "mc":
            a, b = _chain("mc", True)(dict(r))["image"], _chain("mc", False)(dict(p))["image"]
        else:
            one = lambda d, ph: {"patient_id": d["patient_id"], "image": d[ph], "mask": d[f"{ph}_mask"]}
            a = torch.cat([_chain("ff", True)(one(r, ph))["image"] for ph in PHASES])
            b = torch.cat([_chain("ff", False)(one(p, ph))["image"] for ph in PHASES])
        assert a.shape == (3, 32, 32)
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-4)
