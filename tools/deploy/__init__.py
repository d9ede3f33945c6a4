"""The MONAI Deploy runtime: one DICOM study read, scored with an exported bundle (and the frozen study model) and
written as ``result.json`` + DICOM SR; the steps ``deploy/app.py`` runs, testable without the SDK."""
