"""The study's combined model for one DICOM study in the MONAI Deploy app: clinical values, radiomics, DL score.

The app's models folder may hold, beside the exported bundle, the frozen study model (``STUDY/model``, written by
``p53hcc study``) in a folder ``study_model/``; the input folder may hold ``clinical.json`` (the patient's clinical
values, cohort column names). With both, :func:`combined_result` gives the combined model's probability, its class
at the study's threshold, the three component probabilities and the nomogram points, by the code ``p53hcc
predict`` runs (a one-patient cohort table in a scratch folder: the same validation, preprocessing, radiomics
extraction with the frozen parameters and frozen fusion models), with the DL component taken from the bundle
(which the check :func:`check_same_network` ties to the study model's network by the weights' hashes).
"""
from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

from p53hcc.tools.cohort.ids import path_safe_id
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.export.configs import weights_digest
from p53hcc.tools.io import atomic_write_table
from p53hcc.tools.schema import CLINICAL_COLUMNS, PHASES

CLINICAL_JSON = "clinical.json"
STUDY_MODEL = "study_model"


class DeployInputError(P53hccError):
    """Inputs of the app that do not fit together: clinical values, models folder, bundle and study model."""


def find_models(models: str | Path) -> tuple[Path, Path | None]:
    """``(bundle, study_model or None)`` of the app's models folder (``-m``).

    ``models`` is an exported bundle folder, or a folder holding one bundle folder and optionally the frozen
    study model in ``study_model/``."""
    models = Path(models)
    if (models / "configs" / "metadata.json").is_file():
        return models, None
    if not models.is_dir():
        raise DeployInputError(f"models folder {models} not found")
    bundles = sorted(p for p in models.iterdir() if (p / "configs" / "metadata.json").is_file())
    if len(bundles) != 1:
        names = ", ".join(b.name for b in bundles) or "none"
        raise DeployInputError(f"models folder {models}: {len(bundles)} bundle folders ({names}); it must be a "
                               "bundle written by `p53hcc export-bundle`, or hold exactly one beside an optional "
                               f"{STUDY_MODEL}/")
    study = models / STUDY_MODEL
    if study.exists() and not (study / "manifest.json").is_file():
        raise DeployInputError(f"{study}: not a frozen p53hcc study model (no manifest.json); copy STUDY/model there")
    return bundles[0], study if study.exists() else None


def read_clinical(folder: str | Path) -> dict | None:
    """The patient's clinical values from ``clinical.json`` at the top of the input folder (None without one)."""
    path = Path(folder) / CLINICAL_JSON
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeployInputError(f"file {path}: not valid UTF-8 JSON ({err})") from err
    if not isinstance(values, dict):
        raise DeployInputError(f"file {path}: expected an object of clinical values, e.g. "
                               '{"age": 61, "sex": "M", "afp": 420}')
    unknown = sorted(set(values) - set(CLINICAL_COLUMNS) - {"patient_id"})
    if unknown:
        raise DeployInputError(f"file {path}: unknown clinical column(s) {', '.join(unknown)} (known: "
                               f"{', '.join(CLINICAL_COLUMNS)})")
    return values


def check_clinical_values(values: Mapping, patient_id: str, path: Path) -> None:
    """The checks the cohort table's clinical columns get (every column the clinical model needs, each value
    plausible and coded as in ``docs/contracts.md``; a ``patient_id``, if given, the DICOM study's), before
    anything is scored: one error naming each problem."""
    import pandas as pd

    from p53hcc.tools.cohort.manifest import clinical_value_problems
    from p53hcc.tools.pipeline.predict import clinical_problems

    given = str(values.get("patient_id", patient_id))
    if given != str(patient_id):
        raise DeployInputError(f"file {path}: patient_id {given!r} is not the DICOM study's PatientID {patient_id!r}")
    row = {k: v for k, v in values.items() if k != "patient_id"}
    problems = clinical_value_problems(str(patient_id), row) + [
        p for p in clinical_problems(pd.DataFrame([{"patient_id": str(patient_id), **row}]))
        if p.severity == "error"]
    if problems:
        listed = "; ".join(f"column {p.column}: {p.problem}" for p in problems)
        raise DeployInputError(f"file {path}: {len(problems)} problem(s) with the clinical values: {listed}")


def check_same_network(bundle_source: Mapping | None, manifest: Mapping, bundle: Path, study_model: Path) -> None:
    """The bundle's network must be the study model's DL component, or the combined model would mix networks."""
    dl = manifest.get("dl")
    if not dl:
        return
    prefix = dl["weights"].rstrip("/") + "/"
    digest = weights_digest({k[len(prefix):]: v for k, v in manifest["files"].items() if k.startswith(prefix)})
    source = bundle_source or {}
    if (source.get("arm"), source.get("net"), source.get("weights_sha256")) != (dl["arm"], dl["net"], digest):
        raise DeployInputError(
            f"bundle {bundle.name} ({source.get('arm')}_{source.get('net')}, weights "
            f"{str(source.get('weights_sha256'))[:12]}) is not the DL component of the study model {study_model} "
            f"({dl['arm']}_{dl['net']}, weights {digest[:12]}): export the bundle from that study (`p53hcc "
            f"export-bundle STUDY --arm {dl['arm']} --net {dl['net']}`)")


def _cohort_csv(path: Path, patient_id: str, images: Mapping[str, str], masks: Mapping[str, str],
                clinical: Mapping) -> Path:
    """The one-patient cohort table ``p53hcc predict`` reads (blank cells where a value is None)."""
    import pandas as pd

    row = {"patient_id": patient_id, "split": "predict", "p53": "", **images,
           **{f"{p}_mask": masks[p] for p in PHASES},
           **{k: v for k, v in clinical.items() if k != "patient_id"}}
    return atomic_write_table(path, pd.DataFrame([row]))


def clinical_json_values(row) -> dict:
    """A cohort table row's clinical columns as ``clinical.json`` holds them (plain JSON values, blanks left out)."""
    import pandas as pd

    return {c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in CLINICAL_COLUMNS
            if c in row.index and not pd.isna(row[c])}


def _number(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def combined_result(study_model: Path, patient_id: str, images: Mapping[str, str], masks: Mapping[str, str],
                    clinical: Mapping, dl_probability: float, preprocessed: Mapping | None = None) -> dict:
    """The combined model's result for one patient (``images``: phase series folders, ``masks``: SEG or NIfTI files).

    Runs :func:`p53hcc.tools.pipeline.predict.predict_cohort` on a one-patient cohort in a scratch folder, the DL
    score being the bundle's; nothing is written outside the scratch folder. ``preprocessed``: phases the app has
    preprocessed already with the study's parameters (``{"image", "mask"}`` each), which predict then reuses."""
    import pandas as pd

    from p53hcc.tools.pipeline.predict import predict_cohort, read_manifest
    from p53hcc.tools.preprocessing.run import seed_preprocessed

    manifest = read_manifest(study_model)
    key = path_safe_id(patient_id)  # a DICOM PatientID may hold '/', spaces...: it never names a scratch folder
    with tempfile.TemporaryDirectory(prefix="p53hcc-combined-") as scratch:
        scratch = Path(scratch)
        cohort = _cohort_csv(scratch / "cohort.csv", key, images, masks, clinical)
        for phase, data in (preprocessed or {}).items():  # predict's work folder: scratch/predict/work
            seed_preprocessed(scratch / "predict" / "work", key, phase, images[phase], masks[phase],
                              data, manifest["preprocessing"]["config"].get("params"))

        def bundle_dl(*_args) -> pd.Series:
            return pd.Series({key: float(dl_probability)})

        pred = pd.read_csv(predict_cohort(study_model, cohort, scratch / "predict", dl_scorer=bundle_dl,
                                          gradcam=False, workers=1), dtype={"patient_id": str}).iloc[0]
    points = {c[len("points_"):]: _number(pred[c]) for c in pred.index if c.startswith("points_")}
    cls = pred.get("predicted_class")
    return {"probability": float(pred["probability"]), "threshold": manifest["threshold"],
            "predicted_class": None if cls is None or pd.isna(cls) else int(cls),
            "components": {c: float(pred[c]) for c in ("clinical", "radiomics", "dl") if c in pred.index},
            "nomogram_points": points or None,
            "total_points": _number(pred["total_points"]) if "total_points" in pred.index else None,
            "nomogram_note": manifest.get("nomogram_note"),
            "warnings": [w for w in str(pred.get("warnings") if pd.notna(pred.get("warnings")) else "").split(" | ")
                         if w],
            "study": Path(manifest.get("study", "")).name, "clinical": dict(clinical)}
