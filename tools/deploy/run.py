"""Score one patient's DICOM study with an exported bundle and write the result as JSON and a DICOM SR.

The steps of the MONAI Deploy application (``deploy/app.py``), kept here without the SDK so that they are tested
and usable from Python: :func:`read_study` (series selection, masks as DICOM SEG or NIfTI, optional clinical
values, the six-channel volume: :mod:`p53hcc.tools.deploy.dicom_study`), :func:`bundle_inference` (the bundle's
``configs/deploy.json`` preprocessing and postprocessing around its TorchScript ``models/model.ts``, as
``MonaiBundleInferenceOperator`` runs them), :func:`combined_for` (with the frozen study model beside the bundle
and ``clinical.json``: the combined model and nomogram points, :mod:`p53hcc.tools.deploy.combined`) and
:func:`write_outputs` (``result.json`` and ``result_sr.dcm``, a TID 1500 SR, both written only once everything
is computed, atomically).
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p53hcc.tools.deploy.combined import (
    CLINICAL_JSON,
    DeployInputError,
    check_clinical_values,
    check_same_network,
    combined_result,
    find_models,
    read_clinical,
)
from p53hcc.tools.deploy.dicom_study import (
    Series,
    load_volume,
    mask_path,
    nifti_masks,
    scan,
    select_series,
    series_folders,
)
from p53hcc.tools.deploy.series_checks import DicomInputError, check_images, check_series
from p53hcc.tools.deploy.shared_preprocessing import BUNDLE_OVERRIDES
from p53hcc.tools.io import atomic_path, atomic_write_text
from p53hcc.tools.schema import PHASES

RESULT_JSON, RESULT_SR = "result.json", "result_sr.dcm"
log = logging.getLogger(__name__)


@dataclass
class StudyInput:
    """One patient's checked input: the chosen series and masks, the clinical values, and the bundle's volume."""

    folder: Path
    images: dict[str, Series]
    masks: dict[str, Series | Path]
    clinical: dict | None
    volume: object
    resampled: list[str]
    #: each phase's preprocessed image and mask for the combined model's predict (:func:`prepare`), else None
    preprocessed: dict | None = None

    @property
    def patient_id(self) -> str:
        return self.images[PHASES[0]].patient_id

    @property
    def evidence(self) -> list[str]:
        """Every DICOM file the result comes from: the phase series and the SEG masks."""
        return sorted({f for s in [*self.images.values(), *self.masks.values()] if isinstance(s, Series)
                       for f in s.files})

    def identities(self) -> dict:
        """What the result names as its inputs: patient, study, series and mask UIDs (a NIfTI mask by file)."""
        return {"patient_id": self.patient_id, "study_instance_uid": self.images[PHASES[0]].study_uid,
                "series": {p: s.uid for p, s in self.images.items()},
                "masks": {p: m.uid if isinstance(m, Series) else Path(m).relative_to(self.folder).as_posix()
                          for p, m in self.masks.items()},
                "clinical": CLINICAL_JSON if self.clinical is not None else None,
                "resampled_onto_ap_grid": list(self.resampled)}

    def dl_note(self) -> str | None:
        """Why the DL probability may differ slightly from ``p53hcc predict``'s, or None."""
        if not self.resampled:
            return None
        names = ", ".join(p.upper() for p in self.resampled)
        return (f"{names} resampled onto the AP series' grid (trilinear; masks nearest-neighbour) for the bundle's "
                "one-volume input; p53hcc predict processes each phase on its own grid, so its DL probability may "
                "differ slightly for this patient")


def read_study(folder: str | Path) -> StudyInput:
    """The checked input of one patient: series and masks chosen by the documented rules, ``clinical.json``
    read and checked, the six-channel volume loaded (every error names the series or file; nothing is written)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomInputError(f"input folder {folder} not found")
    clinical = read_clinical(folder)
    found = scan(folder)
    images, masks = select_series(found, nifti_masks(folder))
    chosen = {s.uid for s in [*images.values(), *masks.values()] if isinstance(s, Series)}
    check_series(images, masks, [s for s in found if s.uid not in chosen])
    study = StudyInput(folder, images, masks, clinical, *load_volume(images, masks))
    check_images(study)
    if study.resampled:
        log.warning("%s: %s", folder, study.dl_note())
    return study


def prepare(folder: str | Path, models: str | Path) -> tuple[Path, Path | None, StudyInput]:
    """``(bundle, study_model, study)``: every input read and checked before anything is scored, then each phase
    preprocessed once for both models with the bundle's settings (:mod:`p53hcc.tools.deploy.shared_preprocessing`):
    the study's volume is then the bundle's preprocessed input and ``study.preprocessed`` holds each phase's result
    for the combined model's ``predict`` when the frozen study preprocesses as the bundle does."""
    from p53hcc.tools.deploy.shared_preprocessing import bundle_chain_params, preprocess_once, same_chain
    from p53hcc.tools.preprocessing.params import resolve_params

    bundle, study_model = find_models(models)
    study = read_study(folder)
    check_inputs(study, bundle, study_model)
    chain = bundle_chain_params(json.loads((bundle / "configs" / "deploy.json").read_text(encoding="utf-8")))
    study.volume, phases = preprocess_once(study.volume, chain)
    if study_model is not None and study.clinical is not None and same_chain(chain, resolve_params(
            _frozen_manifest(study_model)["preprocessing"]["config"].get("params"))):
        study.preprocessed = {p: v for p, v in phases.items() if p not in study.resampled}  # on their own grid
    return bundle, study_model, study


def _frozen_manifest(study_model: Path) -> dict:
    """The frozen study model's manifest (the predict entry point loads the whole pipeline: only when one is used)."""
    from p53hcc.tools.pipeline.predict import read_manifest

    return read_manifest(study_model)


def check_inputs(study: StudyInput, bundle: Path, study_model: Path | None) -> None:
    """Inputs that do not fit together stop the app before any scoring: clinical values without a study model, a
    study model whose DL component is not the bundle's network, clinical values the study's checks refuse."""
    if study.clinical is not None and study_model is None:
        raise DeployInputError(f"{study.folder / CLINICAL_JSON}: clinical values are given but the models folder has "
                               "no frozen study model (copy STUDY/model to MODELS/study_model beside the bundle)")
    if study_model is not None and study.clinical is not None:
        check_same_network(_bundle_source(bundle), _frozen_manifest(study_model), bundle, study_model)
        check_clinical_values(study.clinical, study.patient_id, study.folder / CLINICAL_JSON)


def _bundle_source(bundle: Path) -> dict | None:
    return json.loads((bundle / "configs" / "deploy.json").read_text(encoding="utf-8")).get("p53hcc_source")


def combined_for(study: StudyInput, study_model: Path | None, dl_probability: float) -> dict:
    """``{"combined": ..., "combined_note": ...}``: the combined model's result, or None and why not."""
    if study_model is None:
        return {"combined": None, "combined_note": "no frozen study model beside the bundle: DL arm only"}
    if study.clinical is None:
        return {"combined": None, "combined_note": f"no {CLINICAL_JSON} in the input: DL arm only"}
    with tempfile.TemporaryDirectory(prefix="p53hcc-series-") as scratch:
        images = series_folders(study.images, Path(scratch))
        combined = combined_result(study_model, study.patient_id, images,
                                   {p: mask_path(m) for p, m in study.masks.items()}, study.clinical, dl_probability,
                                   preprocessed=study.preprocessed)
    return {"combined": combined, "combined_note": None}


@contextlib.contextmanager
def bundle_code(bundle: Path):
    """Inside: ``scripts.*`` is the bundle's own code. Afterwards ``sys.path`` and any other ``scripts`` package
    are as before (the parsed config keeps references to what it imported)."""
    def own(name: str) -> bool:
        return name == "scripts" or name.startswith("scripts.")

    saved_path, saved = list(sys.path), {k: v for k, v in sys.modules.items() if own(k)}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(bundle.resolve()))
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in [k for k in sys.modules if own(k)]:
            del sys.modules[name]
        sys.modules.update(saved)


def bundle_result(bundle: str | Path, probability: float) -> dict:
    """The DL part of the result: P(mutated), its class at the bundle's threshold, the model's name and version."""
    bundle = Path(bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    threshold = json.loads((bundle / "configs" / "deploy.json").read_text(encoding="utf-8")).get("threshold")
    p = float(probability)
    return {"probability": p, "threshold": threshold,
            "predicted_class": None if threshold is None else int(p >= float(threshold)),
            "model": bundle.name, "model_version": meta["version"], "model_description": meta["name"]}


def bundle_inference(bundle: str | Path, volume, device: str = "cpu", overrides: dict | None = None) -> dict:
    """:func:`bundle_result` of one patient scored with the bundle's deploy config and TorchScript network (the
    steps ``MonaiBundleInferenceOperator`` runs in the app, without the SDK), with config ``overrides``."""
    import torch
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    with bundle_code(bundle):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "deploy.json"))
        parser.update({"bundle_root": str(bundle), "device": device, **(overrides or {})})
        x = parser.get_parsed_content("preprocessing")({"image": volume})["image"]
        net = torch.jit.load(str(bundle / "models" / "model.ts"), map_location=device).eval()
        with torch.no_grad():
            pred = parser.get_parsed_content("postprocessing")({"pred": net(x[None].float().to(device))[0]})["pred"]
    return bundle_result(bundle, float(pred[1]))


def sdk_image(volume):
    """The six-channel volume as the MONAI Deploy SDK's ``Image`` that ``MonaiBundleInferenceOperator`` takes: the
    array channel-first and MONAI's metadata (affine, spacing), which the operator hands to the deploy config."""
    from monai.deploy.core import Image

    meta = dict(volume.meta)
    meta["original_channel_dim"] = 0
    return Image(volume.numpy(), metadata=meta)


def write_outputs(out: str | Path, result: dict, evidence: list[str]) -> dict[str, Path]:
    """``result.json`` and ``result_sr.dcm`` (a TID 1500 Measurement Report citing ``evidence``: every DICOM file
    the result comes from) in ``out``; the SR is built before either file is written."""
    from p53hcc.tools.deploy.sr import measurement_report
    from p53hcc.tools.export.metadata import release

    out = Path(out)
    sr = measurement_report(result, evidence, f"p53hcc {release('p53hcc')}")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / RESULT_SR) as tmp:
        sr.save_as(str(tmp), enforce_file_format=True)
    atomic_write_text(out / RESULT_JSON, json.dumps(result, indent=2) + "\n")
    return {"json": out / RESULT_JSON, "sr": out / RESULT_SR}


def score_dicom_study(folder: str | Path, models: str | Path, out: str | Path, device: str = "cpu") -> dict:
    """The whole app: read and check the inputs, score them, write the outputs (nothing on any error).

    ``models`` is the exported bundle, or a folder holding it and the frozen study model in ``study_model/``."""
    bundle, study_model, study = prepare(folder, models)
    result = bundle_inference(bundle, study.volume, device, BUNDLE_OVERRIDES)
    result = {**result, "dl_note": study.dl_note(), "inputs": study.identities(),
              **combined_for(study, study_model, result["probability"])}
    write_outputs(out, result, study.evidence)
    return result
