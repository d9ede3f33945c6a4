"""The names every stage codes against (``docs/contracts.md`` as code): phases, cohort columns, splits, tables.

A leaf module: it imports nothing from the project, so any stage and :mod:`p53hcc.fusion` can use it without
creating an import cycle.
"""
from __future__ import annotations

#: The three DCE-MRI phases, in the order used for channels (MC arm), phase networks (FF arm) and feature names.
PHASES: tuple[str, ...] = ("ap", "pvp", "dp")
PHASE_LABELS = {"ap": "AP", "pvp": "PVP", "dp": "DP"}

# ----------------------------------------------------------------------------------------------- cohort.csv
MASK_COLUMNS: tuple[str, ...] = tuple(f"{p}_mask" for p in PHASES)
R2_MASK_COLUMNS: tuple[str, ...] = tuple(f"{p}_mask_r2" for p in PHASES)
IMAGE_COLUMNS: tuple[str, ...] = (*PHASES, *MASK_COLUMNS)
SPLITS: tuple[str, ...] = ("train", "validation", "external", "predict")
REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "split", "p53", *PHASES)
#: Plausible ranges of the numeric clinical columns (None: open); values outside are reported by validation.
NUMERIC_RANGES = {"age": (0, 120), "afp": (0, None), "cea": (0, None), "ca199": (0, None), "ltd_mm": (1, 300),
                  "grade": (1, 4)}
BINARY_COLUMNS: tuple[str, ...] = ("mvi", "rim_aphe", "delayed_central", "capsule")
CATEGORICAL_LEVELS = {"sex": ("M", "F"), "washout": ("none", "nonperipheral", "peripheral")}
CLINICAL_COLUMNS: tuple[str, ...] = ("age", "sex", "afp", "cea", "ca199", "grade", "mvi", "ltd_mm", "rim_aphe",
                                     "washout", "delayed_central", "capsule")

# ------------------------------------------------------------------------------------------------ datalist
#: MONAI datalist sections, one per split (``datalist.json``).
DATALIST_SECTIONS = {"train": "training", "validation": "validation", "external": "external", "predict": "predict"}

# ------------------------------------------------------------------------------------------- study tables
SCORE_COLUMNS: list[str] = ["patient_id", "model", "fold", "split", "score"]
METRIC_COLUMNS: list[str] = ["model", "split", "metric", "estimate", "ci_low", "ci_high", "note"]
#: Short cohort labels of the paper's tables (TC / VC) and of an external cohort.
SPLIT_LABELS = {"train": "TC", "validation": "VC", "external": "EC", "all": "All"}
SPLIT_TITLES = {"train": "Training cohort", "validation": "Validation cohort", "external": "External cohort"}
#: The six networks of the paper (the default sweep), every network a study may sweep (the paper's, an efficient
#: CNN and two transformers: docs/dl_variants.md), and the two DL arms.
PAPER_NETS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121")
NETS: tuple[str, ...] = (*PAPER_NETS, "efficientnet_b0", "vit", "swin")
NET_LABELS = {"resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50", "resnet101": "ResNet101",
              "resnet152": "ResNet152", "densenet121": "DenseNet121", "efficientnet_b0": "EfficientNet-B0",
              "vit": "ViT-Tiny", "swin": "Swin"}
ARMS: tuple[str, ...] = ("mc", "ff")
ARM_LABELS = {"mc": "multi-channel (MC)", "ff": "feature fusion (FF)"}
