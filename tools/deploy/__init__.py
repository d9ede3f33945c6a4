"""The MONAI Deploy app's runtime: one patient's DICOM study checked, scored and reported (``deploy/app.py``)."""
