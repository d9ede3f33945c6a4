"""Score one patient's DICOM study with an exported bundle and write the result as JSON and a DICOM SR.

The steps of the MONAI Deploy application (``deploy/app.py``), kept here without the SDK so that they are tested
and usable from Python: :func:`read_study` (series selection and the six-channel volume,
:mod:`p53hcc.tools.export.dicom_study`), :func:`bundle_inference` (the bundle's ``configs/deploy.json``
preprocessing and postprocessing around its TorchScript ``models/model.ts``, as ``MonaiBundleInferenceOperator``
runs them) and :func:`write_outputs` (``result.json`` and ``result_sr.dcm``, an Enhanced SR, both written only
once everything is computed, atomically).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import sys
from pathlib import Path

from p53hcc.tools.export.dicom_study import load_volume, scan, select_series
from p53hcc.tools.io import atomic_path, atomic_write_text
from p53hcc.tools.schema import PHASES

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
SCHEME = "99P53HCC"  # private coding scheme of the SR's concept names
RESULT_JSON, RESULT_SR = "result.json", "result_sr.dcm"


def read_study(folder: str | Path) -> tuple[object, dict]:
    """``(volume, inputs)``: the six-channel volume and the chosen series' identities."""
    images, masks = select_series(scan(folder))
    inputs = {"patient_id": images[PHASES[0]].patient_id, "study_instance_uid": images[PHASES[0]].study_uid,
              "series": {p: s.uid for p, s in images.items()}, "masks": {p: s.uid for p, s in masks.items()},
              "reference_file": min(images[PHASES[0]].files)}
    return load_volume(images, masks), inputs


@contextlib.contextmanager
def _bundle_code(bundle: Path):
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


def bundle_inference(bundle: str | Path, volume, device: str = "cpu") -> dict:
    """P(mutated) of one patient with the bundle's deploy config and TorchScript network, its class at the
    bundle's threshold, and the model's name and version."""
    import torch
    from monai.bundle import ConfigParser

    bundle = Path(bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    with _bundle_code(bundle):
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "deploy.json"))
        parser.update({"bundle_root": str(bundle), "device": device})
        x = parser.get_parsed_content("preprocessing")({"image": volume})["image"]
        net = torch.jit.load(str(bundle / "models" / "model.ts"), map_location=device).eval()
        with torch.no_grad():
            pred = parser.get_parsed_content("postprocessing")({"pred": net(x[None].float().to(device))[0]})["pred"]
        threshold = parser.get("threshold")
    p = float(pred[1])
    return {"probability": p, "threshold": threshold,
            "predicted_class": None if threshold is None else int(p >= float(threshold)),
            "model": bundle.name, "model_version": meta["version"], "model_description": meta["name"]}


def _code(value: str, meaning: str):
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, SCHEME, meaning
    return code


def _item(value_type: str, concept: tuple[str, str], **values):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", value_type
    item.ConceptNameCodeSequence = [_code(*concept)]
    for k, v in values.items():
        setattr(item, k, v)
    return item


def structured_report(result: dict, reference_file: str):
    """An Enhanced SR of the result in the patient's study (patient and study modules copied from the input)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ref = pydicom.dcmread(reference_file, stop_before_pixels=True)
    ds = Dataset()
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, tag, getattr(ref, tag, ""))
    now = datetime.datetime.now(datetime.timezone.utc)
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_SR, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "SR", generate_uid(), 900, 1
    ds.SeriesDescription = f"P53 prediction v{result['model_version']}"[:64]
    ds.Manufacturer = "p53hcc"
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("P53-REPORT", "P53 mutation prediction (research use only)")]
    unit = _code("1", "no units")
    unit.CodingSchemeDesignator = "UCUM"
    measured = Dataset()
    measured.NumericValue = f"{result['probability']:.10g}"[:16]
    measured.MeasurementUnitsCodeSequence = [unit]
    content = [_item("NUM", ("P53-PROB", "P53 mutation probability"), MeasuredValueSequence=[measured])]
    if result["predicted_class"] is not None:
        label = "P53 mutated" if result["predicted_class"] else "P53 wild type"
        content.append(_item("TEXT", ("P53-CLASS", "Predicted class"),
                             TextValue=f"{label} (probability >= threshold {result['threshold']:.6g})"
                             if result["predicted_class"] else f"{label} (probability < threshold "
                             f"{result['threshold']:.6g})"))
    content.append(_item("TEXT", ("P53-MODEL", "Model"), TextValue=f"{result['model']} version "
                         f"{result['model_version']}"))
    for phase in PHASES:
        content.append(_item("UIDREF", (f"P53-{phase.upper()}", f"{phase.upper()} series"),
                             UID=result["inputs"]["series"][phase]))
        content.append(_item("UIDREF", (f"P53-{phase.upper()}-SEG", f"{phase.upper()} mask"),
                             UID=result["inputs"]["masks"][phase]))
    ds.ContentSequence = content
    return ds


def write_outputs(out: str | Path, result: dict, reference_file: str) -> dict[str, Path]:
    """``result.json`` and ``result_sr.dcm`` in ``out`` (the SR is built before either file is written)."""
    out = Path(out)
    sr = structured_report(result, reference_file)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / RESULT_SR) as tmp:
        sr.save_as(str(tmp), enforce_file_format=True)
    atomic_write_text(out / RESULT_JSON, json.dumps(result, indent=2) + "\n")
    return {"json": out / RESULT_JSON, "sr": out / RESULT_SR}


def score_dicom_study(folder: str | Path, bundle: str | Path, out: str | Path, device: str = "cpu") -> dict:
    """The whole app: read and check the study, score it, write the outputs (nothing on any error)."""
    volume, inputs = read_study(folder)
    result = {**bundle_inference(bundle, volume, device),
              "inputs": {k: v for k, v in inputs.items() if k != "reference_file"}}
    write_outputs(out, result, inputs["reference_file"])
    return result
