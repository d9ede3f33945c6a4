"""The frozen study model ``model/``: everything a new patient needs, with nothing refitted.

It holds the study parameters (preprocessing, radiomics parameter file), the fitted radiomics / clinical /
combined models (joblib), the chosen network's full-training-cohort weights, the operating threshold (Youden on
training out-of-fold scores), the nomogram spec and a ``manifest.json`` with file hashes. It is built beside the
study's outputs and renamed into place, so a killed run never leaves half a model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_json, atomic_write_text, file_sha256, read_table
from p53hcc.tools.radiomics.features import load_params

MODEL_FILES = ("clinical.joblib", "radiomics.joblib", "combined.joblib")


def _threshold(study_dir: Path, model: str = "combined") -> float | None:
    """The model's training Youden threshold from metrics.csv (None for a degenerate model, which has none)."""
    m = read_table(study_dir / "metrics.csv")
    row = m[(m["model"] == model) & (m["metric"] == "threshold")]
    if row.empty:
        raise P53hccError(f"{study_dir / 'metrics.csv'}: no threshold for the {model} model (run statistics)")
    value = float(row["estimate"].iloc[0])
    return value if np.isfinite(value) else None


def _train_ids(study_dir: Path) -> list[str]:
    """The analysed training patients: those the combined model was fitted on (``scores.parquet``)."""
    s = read_table(study_dir / "scores.parquet")
    return sorted(set(s[(s["model"] == "combined") & (s["split"] == "train")]["patient_id"].astype(str)))


def _nomogram_spec(study_dir: Path, combined, train: list[str]) -> dict | None:
    """The nomogram a new patient's points come from; None when every input has weight 0 (no axis to draw)."""
    if not any(abs(c) > 0 for c in combined.coefficients_.values()):
        return None
    X = read_table(study_dir / "fusion" / "combined_inputs.parquet").set_index("patient_id")
    nomo = combined.nomogram(X.loc[X.index.intersection(train)])
    return {"coefs": nomo.coefs, "intercept": nomo.intercept, "ranges": {k: list(v) for k, v in nomo.ranges.items()},
            "scale": nomo.scale, "refs": nomo.refs, "predictor_scale": "logit of the component probability"}


def _harmonisation(study_dir: Path) -> dict:
    """The fusion stage's record of the scanner harmonisation (``{"method": "none"}`` for studies without one)."""
    path = study_dir / "fusion" / "harmonisation.json"
    return json.loads(path.read_text()) if path.is_file() else {"method": "none", "batch_column": None}


def _training_cohort(study_dir: Path, cfg: dict):
    """The analysed training patients' cohort rows; None when the study's cohort table is no longer where
    ``study.yaml`` says."""
    from p53hcc.tools.cohort.dropped import dropped_patients
    from p53hcc.tools.cohort.manifest import read_cohort

    csv = cfg.get("cohort")
    if not csv or not Path(csv).is_file():
        return None
    df = read_cohort(csv, check_ids=False)
    return df[(df["split"] == "train") & ~df["patient_id"].astype(str).isin(dropped_patients(study_dir))]


def _training_ranges(cohort) -> dict | None:
    """Min and max of the numeric clinical columns over the analysed training patients' rows (predict flags new
    values outside them); None when the study's cohort table is gone."""
    from p53hcc.tools.pipeline.checks import training_ranges

    return None if cohort is None else training_ranges(cohort)


def _image_ranges(study_dir: Path, train: list[str], cohort, selected: list[str]) -> dict:
    """Min and max of the image-derived values (:mod:`p53hcc.tools.pipeline.image_ranges`: tumour size, ROI
    intensity per phase, the selected radiomics features from ``radiomics.parquet``; native spacing from the
    training images' headers, left out when the cohort table or its images are gone) over the analysed training
    patients."""
    from p53hcc.tools.pipeline.checks import training_ranges
    from p53hcc.tools.pipeline.image_ranges import image_value_columns, image_values
    from p53hcc.tools.radiomics.extract import load_radiomics

    rad = load_radiomics(study_dir)
    columns = image_value_columns(selected)
    values = image_values(rad[rad["patient_id"].isin(train)], cohort, columns)
    return training_ranges(values[values["patient_id"].isin(train)], columns)


def freeze_model(study_dir: str | Path) -> Path:
    """Write ``study_dir/model/`` (atomically: built beside it, then renamed into place); returns its path."""
    import joblib

    study_dir = Path(study_dir)
    cfg = yaml.safe_load((study_dir / "study.yaml").read_text())
    selection = json.loads((study_dir / "selection.json").read_text())
    dest = study_dir / "model"
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=study_dir))
    try:
        for name in MODEL_FILES:
            shutil.copy2(study_dir / "fusion" / name, tmp / name)
        shutil.copy2(study_dir / "fusion" / "radiomics_features.json", tmp / "radiomics_features.json")
        shutil.copy2(study_dir / "study.yaml", tmp / "study.yaml")
        shutil.copy2(study_dir / "metrics.csv", tmp / "study_metrics.csv")
        atomic_write_text(tmp / "radiomics_params.yaml",
                          yaml.safe_dump(load_params(cfg["radiomics"]["params"]), sort_keys=False))
        chosen = selection.get("chosen")
        if chosen:
            net_src = study_dir / "dl" / chosen["arm"] / chosen["net"]
            net_dst = tmp / "dl" / chosen["arm"] / chosen["net"]
            if (net_src / "full").is_dir():
                shutil.copytree(net_src / "full", net_dst / "full")
            for extra in ("lasso.json", "head.joblib"):
                if (net_src / extra).exists():
                    shutil.copy2(net_src / extra, net_dst / extra)
        combined = joblib.load(study_dir / "fusion" / "combined.joblib")
        train, cohort = _train_ids(study_dir), _training_cohort(study_dir, cfg)  # read once, used below
        nomogram = _nomogram_spec(study_dir, combined, train)
        manifest = {
            "format": "p53hcc-model/1",
            "study": str(study_dir.resolve()),
            "preprocessing": {"steps": ["N4 bias-field correction", "resample 1x1x1 mm", "z-score"],
                              "config": cfg.get("preprocess", {})},
            "radiomics": {"params_file": "radiomics_params.yaml", "params": cfg["radiomics"]["params"],
                          "icc_threshold": cfg["radiomics"].get("icc_threshold"), "features": "radiomics_features.json"},
            "dl": {"arm": chosen["arm"], "net": chosen["net"], "model": chosen["model"],
                   "weights": f"dl/{chosen['arm']}/{chosen['net']}/full", "train_params": cfg.get("dl", {}),
                   "selection_rule": selection.get("rule")} if chosen else None,
            "fusion": {"clinical": "clinical.joblib", "radiomics": "radiomics.joblib", "combined": "combined.joblib",
                       "combined_inputs": list(combined.feature_names_)},
            "harmonisation": _harmonisation(study_dir),
            "training_ranges": _training_ranges(cohort),
            "image_ranges": _image_ranges(study_dir, train, cohort, json.loads((tmp / "radiomics_features.json").read_text())),
            "threshold": _threshold(study_dir, "combined"),
            "component_thresholds": {m: _threshold(study_dir, m) for m in ("clinical", "radiomics", "dl")
                                     if m == "dl" and chosen or m != "dl"},
            "nomogram": nomogram,
            "nomogram_note": None if nomogram else (
                "every input of the combined model has weight 0 (no component carried signal on the training "
                "cohort): its prediction is the same for every patient and it has no nomogram"),
        }
        manifest["files"] = {p.relative_to(tmp).as_posix(): file_sha256(p)
                             for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_json(tmp / "manifest.json", manifest)
        if dest.exists():
            old = study_dir / f".model.old.{os.getpid()}"
            os.replace(dest, old)
            shutil.rmtree(old)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def read_manifest(model_dir: str | Path) -> dict:
    """The frozen model's ``manifest.json`` (threshold, nomogram, DL component, file hashes)."""
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        raise P53hccError(f"{model_dir}: not a frozen p53hcc model (no manifest.json); run `p53hcc study` first")
    return json.loads(path.read_text())


def load_model(model_dir: str | Path) -> dict:
    """The manifest plus the fitted fusion models (keys ``clinical``, ``radiomics``, ``combined``)."""
    import joblib

    model_dir = Path(model_dir)
    bundle = {"manifest": read_manifest(model_dir), "dir": model_dir}
    for key, fname in (("clinical", "clinical.joblib"), ("radiomics", "radiomics.joblib"),
                       ("combined", "combined.joblib")):
        bundle[key] = joblib.load(model_dir / fname)
    bundle["radiomics_features"] = json.loads((model_dir / "radiomics_features.json").read_text())
    return bundle
