"""The Deploy app's result as a standard DICOM SR: a TID 1500 Measurement Report written by highdicom.

One Comprehensive SR in the patient's study (the AP series' study), series description ``P53 prediction``:

* a measurement group (TID 1501) per model: the DL arm (the bundle) and, when computed, the combined model. Each
  names its algorithm (TID 4019 Algorithm Identification: name, version, family Artificial Intelligence) and holds
  the probability (DCM 122157 "Probability", UCUM ``1``), the operating threshold and the predicted status as a
  qualitative evaluation (DCM 121053 Present / 121054 Absent); the combined model's group adds its three
  component probabilities and the nomogram points (UCUM ``{points}``). The group's finding type and the concepts
  with no standard code (P53 mutation, threshold, components, points, processing note) are in the private scheme
  :data:`SCHEME`, declared in the SR's Coding Scheme Identification Sequence;
* the observer is the device (p53hcc, the bundle as model name); the procedure is SNOMED CT "Imaging procedure";
* the evidence (Current Requested Procedure Evidence Sequence) references every instance of every phase series
  and every SEG mask read, so a PACS viewer can open the images the result came from; NIfTI masks have no DICOM
  identity and are named in the processing note instead.
"""
from __future__ import annotations

import datetime
from collections.abc import Iterable
from pathlib import Path

SCHEME, SCHEME_NAME = "99P53HCC", "p53hcc concepts"
SERIES_NUMBER = 900


def _codes():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    def private(value: str, meaning: str):
        return hd.sr.CodedConcept(value, SCHEME, meaning)

    return hd, codes, private


def _group(hd, codes, private, uid: str, label: str, algorithm: tuple[str, str], result: dict,
           extra: Iterable = ()) -> object:
    """One TID 1501 group: probability, threshold, predicted status (and ``extra`` measurements)."""
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    algo = hd.sr.AlgorithmIdentification(name=algorithm[0][:64], version=algorithm[1][:64],
                                         family=codes.DCM.ArtificialIntelligence)
    measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=float(result["probability"]), unit=unit,
                                      algorithm_id=algo)]
    qualitative = []
    if result.get("threshold") is not None:
        measurements.append(hd.sr.Measurement(name=private("P53-THR", "Operating threshold (training Youden)"),
                                              value=float(result["threshold"]), unit=unit, algorithm_id=algo))
    if result.get("predicted_class") is not None:
        qualitative.append(hd.sr.QualitativeEvaluation(
            name=private("P53-CLASS", "Predicted P53 mutation"),
            value=codes.DCM.Present if int(result["predicted_class"]) else codes.DCM.Absent))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=label),
        finding_type=private("P53-MUT", "TP53 mutation of hepatocellular carcinoma"), algorithm_id=algo,
        measurements=[*measurements, *extra], qualitative_evaluations=qualitative or None)


def _combined_extra(hd, private, combined: dict) -> list:
    unit, points = hd.sr.CodedConcept("1", "UCUM", "no units"), hd.sr.CodedConcept("{points}", "UCUM", "points")
    out = [hd.sr.Measurement(name=private(f"P53-COMP-{k.upper()}", f"{k} component probability"), value=float(v),
                             unit=unit) for k, v in (combined.get("components") or {}).items()]
    for name, value in (combined.get("nomogram_points") or {}).items():
        if value is not None:
            out.append(hd.sr.Measurement(name=private(f"P53-PTS-{name.upper()}"[:16], f"Nomogram points: {name}"),
                                         value=float(value), unit=points))
    if combined.get("total_points") is not None:
        out.append(hd.sr.Measurement(name=private("P53-PTS-TOTAL", "Nomogram total points"),
                                     value=float(combined["total_points"]), unit=points))
    return out


def _note(result: dict) -> str | None:
    notes = [result.get("dl_note") or ""]
    nifti = {p: m for p, m in (result["inputs"].get("masks") or {}).items() if str(m).endswith((".nii", ".nii.gz"))}
    if nifti:
        notes.append("masks read from NIfTI files (no DICOM reference): " +
                     ", ".join(f"{p.upper()} {Path(m).name}" for p, m in nifti.items()))
    if result.get("combined_note"):
        notes.append(result["combined_note"])
    text = "; ".join(n for n in notes if n)
    return text[:1024] or None


def measurement_report(result: dict, evidence: list[str], software: str):
    """The SR dataset of an app result (``result.json``'s content) citing the DICOM files ``evidence``.

    Args:
        result: the app's result (DL arm, ``combined``, ``inputs``, notes).
        evidence: the files of every phase series and SEG mask read (their headers are read again here).
        software: the software version written into the SR (p53hcc's).
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    hd, codes, private = _codes()
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(evidence)]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["p53hcc", result["model"], result["model_version"]]), name="p53hcc",
            manufacturer_name="p53hcc project", model_name=f"{result['model']} {result['model_version']}"[:64]))
    groups = [_group(hd, codes, private, generate_uid(), "DL arm", (result["model"], result["model_version"]),
                     result)]
    combined = result.get("combined")
    if combined:
        groups.append(_group(hd, codes, private, generate_uid(), "combined model",
                             (f"p53hcc combined model {combined.get('study') or ''}".strip(), software), combined,
                             _combined_extra(hd, private, combined)))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    note = _note(result)
    if note:  # a free-text note under the report's root container (TID 1500 row: Imaging Measurements' sibling)
        report[0].ContentSequence.append(hd.sr.TextContentItem(
            name=private("P53-NOTE", "Processing note"), value=note, relationship_type="CONTAINS"))
    ap = next(s for s in sources if str(s.SeriesInstanceUID) == result["inputs"]["series"]["ap"])
    sr = hd.sr.ComprehensiveSR(
        evidence=[ap, *[s for s in sources if s is not ap]], content=report[0], series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1, manufacturer="p53hcc project",
        is_complete=True, series_description=f"P53 prediction {result['model_version']}"[:64],
        software_versions=software)
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = SCHEME, SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "p53hcc project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    now = datetime.datetime.now()
    sr.ContentDate, sr.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    return sr
