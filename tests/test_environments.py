"""The study's environment stays lean: no Deploy SDK, so `import monai` loads no holoscan, and reading images logs
no warning about MONAI's absent GPU DICOM decoder (they were 254 of a 627-line study log)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import make_tiny_cohort


def test_import_monai_loads_no_holoscan():
    if importlib.util.find_spec("holoscan") is not None:
        pytest.skip("this is the Deploy environment (.venv-deploy), where the SDK is meant to be")
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import monai"], capture_output=True,
                          text=True, timeout=600, check=True)
    assert "monai" in done.stderr and "holoscan" not in done.stderr


def test_reading_images_logs_no_gpu_decoder_warnings(tmp_path):
    cohort = make_tiny_cohort(tmp_path / "cohort", n=2)
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO); "
            "from p53hcc.tools.preprocessing.chain import preprocessing_chain; "
            "preprocessing_chain(None, ['image'], ['mask'], n4=False, resample=False)("
            "{'image': sys.argv[1], 'mask': sys.argv[2]})")
    done = subprocess.run([sys.executable, "-W", "always", "-c", code, str(cohort.parent / "images" / "P000_ap.nii.gz"),
                           str(cohort.parent / "masks" / "P000_ap_mask.nii.gz")], capture_output=True, text=True,
                          timeout=600, check=True)
    assert "nvImageCodec" not in done.stderr and "NvImgCodec" not in done.stderr, done.stderr[-2000:]
