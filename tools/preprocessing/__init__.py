"""Stage 2, preprocessing: N4 bias-field correction -> 1 mm resampling -> z-score, per patient and phase, cached."""
