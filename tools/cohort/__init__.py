"""Stage 1, the cohort: the manifest and its validation, folds and datalists, the image reader, the synthetic cohort."""
