"""An exported bundle's ``configs/metadata.json`` and ``large_files.yml``: versions that install, every package its
code imports, the shipped weights' metrics with the cohort they come from, intended use and data description.

Pins are the versions installed where the export runs (local labels such as ``+cpu`` dropped: the package index
has no such release), so the zoo's ``get_bundle_requirements.py`` builds a requirements file that installs the
environment the bundle was checked in. The packages are those the generated ``scripts/`` import (found in their
source) plus what the configs and MONAI's bundle tools need (:data:`TOOL_PACKAGES`).
"""
from __future__ import annotations

import ast
import hashlib
import sys
from collections.abc import Iterable
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import read_table
from p53hcc.tools.schema import ARM_LABELS, NET_LABELS, PHASE_LABELS, PHASES

SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
              "meta_schema_20240725.json")
#: Distributions the configs and MONAI's bundle tools need beyond the scripts' own imports: ignite (engines,
#: handlers), TensorBoard (training), fire (``python -m monai.bundle``), PyYAML (``large_files.yml``), jsonschema
#: (``verify_metadata``) and nibabel, which MONAI's ``Orientationd``/``Spacingd`` import for their affine maths
#: (without it every config fails in a fresh environment: found by the zoo-CI test).
TOOL_PACKAGES = ("pytorch-ignite", "tensorboard", "fire", "pyyaml", "jsonschema", "nibabel")
#: Modules whose files come from several distributions, named after the one that installs them all (the ``itk``
#: package is split over itk-core, itk-io, ...; ``pip install itk`` brings every part).
META_DISTRIBUTIONS = ("itk",)
#: Reported in monai_version / pytorch_version / numpy_version, not in required_packages_version.
CORE = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
VAL_METRICS = ("auc", "accuracy", "sensitivity", "specificity", "n", "n_events")


def release(dist: str) -> str:
    """The installed version of a distribution as released on the package index (no local label)."""
    try:
        return importlib_metadata.version(dist).split("+", 1)[0]
    except importlib_metadata.PackageNotFoundError as err:
        raise P53hccError(f"{dist} is not installed: it is needed to export a bundle") from err


def imported_modules(sources: Iterable[str]) -> set[str]:
    """Top-level third-party modules imported anywhere in Python sources (the standard library left out)."""
    found = set()
    for text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("scripts", "__future__")}


def distribution(module: str) -> str:
    """The distribution that provides a top-level module (``ignite`` -> ``pytorch-ignite``)."""
    dists = importlib_metadata.packages_distributions().get(module, [])
    if not dists:
        raise P53hccError(f"no installed distribution provides the module {module!r} the bundle code imports")
    if module in dists or module in META_DISTRIBUTIONS:  # ``itk``: the meta-distribution installs every ITK part
        return module
    return min(dists)


def required_packages(sources: Iterable[str], runtime: Iterable[str] = ()) -> dict[str, str]:
    """``required_packages_version``: every package the bundle code imports, its tools need and the network needs
    at run time (``runtime``: imported optionally by MONAI, e.g. einops for ViT and Swin), pinned."""
    dists = {distribution(m) for m in imported_modules(sources)} | set(TOOL_PACKAGES) | set(runtime)
    return {d: release(d) for d in sorted(dists, key=str.lower) if d not in CORE}


def eval_metrics(study_dir: Path, model: str) -> tuple[dict, float | None]:
    """The shipped (full-cohort) weights' validation-cohort metrics from ``metrics.csv``, and the model's threshold.

    Training-cohort AUC is out-of-fold: it comes from the fold networks, not from the shipped weights, and is
    labelled so. Values that are NaN in the study (one class, no patients) are null.
    """
    m = read_table(study_dir / "metrics.csv")
    m = m[m["model"] == model]
    if m.empty:
        raise P53hccError(f"{study_dir / 'metrics.csv'} has no rows for {model}: rerun the study's statistics")

    def value(split: str, metric: str, col: str = "estimate"):
        row = m[(m["split"] == split) & (m["metric"] == metric)]
        v = float(row[col].iloc[0]) if len(row) else np.nan
        return None if not np.isfinite(v) else (int(v) if metric in ("n", "n_events") else round(v, 4))

    out = {f"val_{k}": value("validation", k) for k in VAL_METRICS}
    out["val_auc_ci95"] = [value("validation", "auc", "ci_low"), value("validation", "auc", "ci_high")]
    out["train_oof_auc"] = value("train", "auc")
    out["train_oof_auc_note"] = ("training cohort, out-of-fold: scores of the fold networks, not of these weights; "
                                 "val_*: these weights on the study's validation cohort, never used for fitting")
    threshold = value("train", "threshold")
    out["threshold"] = threshold
    return out, threshold


def cohort_description(study_dir: Path, cfg: dict) -> str:
    """Where the weights' data come from: the study's cohort, its size per split and class, synthetic or not."""
    dl = read_table(study_dir / "scores.parquet") if (study_dir / "scores.parquet").is_file() else None
    cohort = Path(str(cfg.get("cohort", "")))
    synthetic = bool(cfg.get("cohort_generated")) or (cohort.parent / "truth.csv").is_file()
    counts = ""
    if dl is not None and len(dl):
        per = dl.drop_duplicates("patient_id").groupby("split").size().to_dict()
        counts = ", ".join(f"{n} {split}" for split, n in sorted(per.items()))
    kind = ("the SYNTHETIC cohort of p53hcc (p53hcc synth: simulated DCE-MRI with known ground truth, no patient "
            "data)" if synthetic else f"the cohort {cohort.name} of the exporting study")
    return f"p53hcc study {study_dir.name}: {kind}; patients {counts or 'n/a'}"


def metadata(arm: str, net: str, version: str, changelog: dict, spatial_size: int, eval_: dict, data_source: str,
             packages: dict[str, str], p53hcc_version: str) -> dict:
    """The exported bundle's ``metadata.json``."""
    channels = {str(i): f"{PHASE_LABELS[p]} ROI crop (z-scored)" for i, p in enumerate(PHASES)}
    deploy_channels = {**{str(i): f"{PHASE_LABELS[p]} volume" for i, p in enumerate(PHASES)},
                       **{str(3 + i): f"{PHASE_LABELS[p]} tumour mask (0/1)" for i, p in enumerate(PHASES)}}
    head = (" The three crops go through one network per phase; each phase's penultimate features are "
            "standardised and reduced by PCA, the LASSO-retained components feed a logistic regression (the study's "
            "FF head, included in the network), whose log-odds are the second logit.") if arm == "ff" else (
        " The three crops are the channels of one network.")
    out = {
        "schema": SCHEMA_URL, "version": version, "changelog": changelog,
        "monai_version": release("monai"), "pytorch_version": release("torch"), "numpy_version": release("numpy"),
        "required_packages_version": packages, "supported_apps": {},
        "name": f"P53-mutated HCC, DCE-MRI, {ARM_LABELS[arm]} {NET_LABELS[net]}",
        "task": "Classification of P53-mutated hepatocellular carcinoma from three-phase DCE-MRI and tumour masks",
        "description": ("For each DCE-MRI phase (arterial AP, portal-venous PVP, delayed DP) the axial slice with the "
                        "largest tumour area is cropped to the ROI bounding box + margin, resized to "
                        f"{spatial_size}x{spatial_size} and z-scored, after N4 bias correction, 1 mm resampling "
                        f"and z-scoring of the volume (the exporting study's preprocessing).{head} Trained and "
                        f"exported with p53hcc {p53hcc_version} ({ARM_LABELS[arm]} arm, {NET_LABELS[net]})."),
        "authors": "p53hcc project contributors", "copyright": "Copyright (c) p53hcc project contributors",
        "data_source": data_source,
        "data_type": "DICOM series or NIfTI / NRRD volumes (ITK), masks as DICOM SEG or label volumes",
        "image_classes": "three channels: AP, PVP and DP ROI crops of the largest-area tumour slice, each z-scored",
        "label_classes": "0 = P53 wild type, 1 = P53 mutated",
        "pred_classes": "softmax over [wild type, mutated]; P(mutated) is the score, class 1 at score >= threshold",
        "eval_metrics": eval_,
        "intended_use": ("Research only: reproduction and external validation of a published radiogenomics study. "
                         "Not a medical device; not for diagnosis or treatment decisions."),
        "references": [
            ("A novel deep learning and radiomics approach based on DCE-MRI for predicting the P53 mutation status "
             "in hepatocellular carcinoma (the study p53hcc reproduces)"),
            "He K. et al., Deep Residual Learning for Image Recognition, CVPR 2016",
            "Huang G. et al., Densely Connected Convolutional Networks, CVPR 2017",
            "Tustison N. J. et al., N4ITK: Improved N3 Bias Correction, IEEE TMI 2010"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 3,
                                 "spatial_shape": [spatial_size, spatial_size], "dtype": "float32",
                                 "value_range": [], "is_patch_data": False, "channel_def": channels}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 2,
                                 "spatial_shape": [1, 2], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False,
                                 "channel_def": {"0": "P53 wild type", "1": "P53 mutated"}}}},
        "deploy_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 6,
                                 "spatial_shape": ["*", "*", "*"], "dtype": "float32", "value_range": [],
                                 "is_patch_data": False, "channel_def": deploy_channels}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 2,
                                 "spatial_shape": [2], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False,
                                 "channel_def": {"0": "P53 wild type", "1": "P53 mutated"}}}},
    }
    return out


def md5(path: Path) -> str:
    """MD5 of a file (the hash type the model zoo's large_files.yml use)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Where the weights are said to be until they are published (``large_files.yml`` without ``--weights_url``).
UNPUBLISHED_URL = "https://UNPUBLISHED.invalid/{name}_v{version}"
HOW_TO_PUBLISH = """# The weights are not published yet: the URLs below point nowhere (.invalid). Before this bundle goes to the
# MONAI Model Zoo, upload models/model.pt and models/model.ts to a public HTTPS location that keeps them (a
# release asset of your fork, an institutional data repository), then rerun
#     p53hcc export-bundle STUDY --arm ARM --weights_url https://host/path/{name}_v{version}
# (each file is then expected at <weights_url>/models/<file>) or edit the url fields. The zoo keeps files over
# 25 MB out of its repository: commit this file, not the weights. The md5 hashes are those of the exported files.
"""


def check_weights_url(url: str) -> str:
    """A public location of the weights: an ``https://`` URL (the zoo downloads from it)."""
    from urllib.parse import urlparse

    parsed = urlparse(str(url))
    if parsed.scheme != "https" or not parsed.netloc or parsed.netloc.endswith(".invalid"):
        raise P53hccError(f"--weights_url {url!r} is not a public https:// URL of the weights (e.g. "
                          "https://github.com/ORG/REPO/releases/download/v0.1.0)")
    return str(url)


def large_files_yaml(bundle: Path, files: Iterable[str], base_url: str | None, name: str = "",
                     version: str = "") -> str:
    """``large_files.yml``: each weights file's URL (``base_url`` + its path) and MD5; without ``base_url`` the
    URLs are unpublished placeholders and the file says how to publish the weights."""
    head = "" if base_url else HOW_TO_PUBLISH.format(name=name, version=version)
    base = base_url or UNPUBLISHED_URL.format(name=name, version=version)
    lines = ["large_files:"]
    for rel in files:
        lines += [f'  - path: "{rel}"', f'    url: "{base.rstrip("/")}/{rel}"',
                  f'    hash_val: "{md5(bundle / rel)}"', '    hash_type: "md5"']
    return head + "\n".join(lines) + "\n"


def study_table(study_dir: Path, name: str) -> pd.DataFrame:
    """A study table, or a clear error naming the stage to run when it is missing."""
    path = study_dir / name
    if not path.is_file():
        raise P53hccError(f"{path} not found: {study_dir} is not a finished p53hcc study (run `p53hcc study`)")
    return read_table(path)
