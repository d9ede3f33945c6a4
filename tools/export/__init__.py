"""Sharing a trained arm: model-zoo bundles exported from a study (``p53hcc export-bundle``)."""
