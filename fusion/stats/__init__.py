"""The statistics of the study, one module per topic: AUC and DeLong, thresholds, odds ratios, calibration, decision
curves and the rows of ``metrics.csv``. Imports no model and no report module."""
