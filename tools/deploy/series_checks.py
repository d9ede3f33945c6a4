"""One patient, one study, whole series: the header and pixel checks the Deploy app runs before anything is scored.

A hospital folder can hold a series copied from another patient, a slice whose pixel data are damaged, a series
with a missing or duplicated slice, or phases in unrelated coordinate spaces. Read as they are, these give a
plausible probability for the wrong input, so :func:`check_series` refuses them, each with one line naming the
series and the file:

* **one patient**: every DICOM object in the folder (each series, each SEG) has the same PatientID, and the same
  PatientBirthDate and PatientSex wherever both state one;
* **one study**: the chosen phase series and their SEGs share one StudyInstanceUID. Phases acquired as separate
  studies are accepted only when every one of them lies in the same FrameOfReferenceUID (the scanner's one
  coordinate space of one session); the SR then goes into the AP series' study and references every study;
* **one coordinate space**: the phase series share a FrameOfReferenceUID (the app does not register phases and
  reads no registration object); a SEG lies in the frame of the series it segments. A series without a frame of
  reference must at least overlap the AP series in space;
* **whole series**: every file of a phase series (and every SEG) is read with its pixel data; a file that cannot
  be read or decoded, slices of other sizes, pixel spacings or orientations, two slices at one position, and a gap
  in the slice positions (or uneven spacing) are refused. A missing slice at either end of a series cannot be seen
  in the headers and is not detected.

The checks read headers and pixels with pydicom only (no MONAI, no ITK), so a refusal comes before the heavy
imports. :data:`IMAGE_CHECKS` is the one place where checks of the loaded volumes plug in (:func:`voxel_checks`:
the per-patient image checks of ``validate`` and ``predict``): :func:`check_images` runs them in order on the
checked input.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from p53hcc.tools.errors import P53hccError

log = logging.getLogger(__name__)

#: Tolerances: orientation cosines, positions (mm), relative slice spacing.
ORIENTATION_TOL, POSITION_TOL, SPACING_RTOL = 1e-3, 0.1, 0.05


class DicomInputError(P53hccError):
    """A DICOM study the app cannot score: missing or ambiguous phase, wrong modality, mask not referencing,
    another patient's or study's series, a damaged or incomplete series."""


@dataclass(frozen=True)
class SliceHeader:
    """What the checks need from one DICOM file (its pixel data decoded and found sound)."""

    path: str
    sop_uid: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    frame_uid: str
    rows: int
    columns: int
    spacing: tuple[float, ...]
    orientation: tuple[float, ...]
    position: tuple[float, ...]


def _text(ds, tag: str) -> str:
    return str(getattr(ds, tag, "") or "").strip()


def _floats(ds, tag: str) -> tuple[float, ...]:
    value = getattr(ds, tag, None)
    return tuple(float(v) for v in value) if value not in (None, "") else ()


def read_header(path: str, where: str) -> SliceHeader:
    """One file's header facts; the file is read whole and its pixel data decoded (an error naming ``where``
    and the file otherwise)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # any reader failure: the same refusal, naming the file
        raise DicomInputError(f"{where}: file {path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds:
        raise DicomInputError(f"{where}: file {path}: has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # any reader failure: the same refusal, naming the file
        raise DicomInputError(f"{where}: file {path}: pixel data unreadable ({type(err).__name__}: {err})") from err
    rows, columns = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    if tuple(pixels.shape[-2:]) != (rows, columns):
        raise DicomInputError(f"{where}: file {path}: pixel data of shape {tuple(pixels.shape)} for "
                              f"{rows}x{columns} pixels")
    return SliceHeader(path, _text(ds, "SOPInstanceUID"), _text(ds, "PatientID"), _text(ds, "PatientBirthDate"),
                       _text(ds, "PatientSex"), _text(ds, "StudyInstanceUID"), _text(ds, "FrameOfReferenceUID"),
                       rows, columns, _floats(ds, "PixelSpacing"), _floats(ds, "ImageOrientationPatient"),
                       _floats(ds, "ImagePositionPatient"))


def _differs(a: Sequence[float], b: Sequence[float], tol: float) -> bool:
    return len(a) != len(b) or (len(a) > 0 and not np.allclose(a, b, rtol=0, atol=tol))


def check_slices(slices: list[SliceHeader], where: str) -> None:
    """One image series as one stack: same size, pixel spacing and orientation, distinct, evenly spaced slices."""
    first = slices[0]
    for s in slices[1:]:
        for what, a, b, tol in (("size", (s.rows, s.columns), (first.rows, first.columns), 0),
                                ("pixel spacing", s.spacing, first.spacing, 1e-4),
                                ("orientation", s.orientation, first.orientation, ORIENTATION_TOL)):
            if _differs(a, b, tol):
                raise DicomInputError(f"{where}: file {s.path}: {what} {tuple(a)} differs from {tuple(b)} of file "
                                      f"{first.path} (mixed {what}s in one series)")
    missing = [s.path for s in slices if len(s.position) != 3 or len(s.orientation) != 6]
    if missing:
        raise DicomInputError(f"{where}: file {missing[0]}: no ImagePositionPatient/ImageOrientationPatient")
    uids: dict[str, str] = {}
    for s in slices:
        if s.sop_uid in uids:
            raise DicomInputError(f"{where}: files {uids[s.sop_uid]} and {s.path} are one instance twice "
                                  f"(SOPInstanceUID {s.sop_uid}); keep one")
        uids[s.sop_uid] = s.path
    if len(slices) < 2:
        return
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, col)
    order = sorted(slices, key=lambda s: float(np.dot(s.position, normal)))
    depth = np.array([np.dot(s.position, normal) for s in order])
    for s in order:  # every slice on the one line through the stack
        shift = np.array(s.position) - np.array(order[0].position)
        if _differs(shift - np.dot(shift, normal) * normal, np.zeros(3), POSITION_TOL):
            raise DicomInputError(f"{where}: file {s.path}: slice position {s.position} is off the stack of file "
                                  f"{order[0].path} (shifted in-plane)")
    steps = np.diff(depth)
    same = np.flatnonzero(steps < POSITION_TOL)
    if len(same):
        a, b = order[same[0]], order[same[0] + 1]
        raise DicomInputError(f"{where}: files {a.path} and {b.path} are two slices at one position "
                              f"({depth[same[0]]:.2f} mm): a duplicated slice; keep one")
    step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - step) > SPACING_RTOL * step)
    if len(bad):
        i = int(bad[0])
        kind = (f"a gap of {steps[i]:.2f} mm ({steps[i] / step - 1:.1f} slice(s) missing)" if steps[i] > step
                else f"a step of {steps[i]:.2f} mm")
        raise DicomInputError(f"{where}: between files {order[i].path} and {order[i + 1].path} there is {kind} "
                              f"where the series' slices are {step:.2f} mm apart")


def _first(values: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``{value: the first place it was seen}`` of ``(value, place)`` pairs, empty values left out."""
    out: dict[str, str] = {}
    for value, place in values:
        if value:
            out.setdefault(value, place)
    return out


def check_one_patient(headers: dict[str, list[SliceHeader]], others: dict[str, str]) -> None:
    """Every file's PatientID is one; birth date and sex agree wherever stated. ``headers``: ``{where: headers}``
    of the phase series and SEGs; ``others``: ``{where: PatientID}`` of the series the app does not use (another
    patient's series in the folder is a mix-up too)."""
    for tag, label in (("patient_id", "PatientID"), ("birth_date", "PatientBirthDate"), ("sex", "PatientSex")):
        seen = _first((getattr(s, tag), f"{where}, file {s.path}") for where, slices in headers.items()
                      for s in slices)
        if tag == "patient_id":
            for where, pid in others.items():
                if pid:
                    seen.setdefault(pid, where)
            if not seen:
                raise DicomInputError("the DICOM files state no PatientID: the app cannot tell whose study it is")
        if len(seen) > 1:
            (v1, p1), (v2, p2) = list(seen.items())[:2]
            raise DicomInputError(f"two patients in one input: {label} {v1!r} ({p1}) and {v2!r} ({p2}); the input "
                                  "folder must hold one patient's study")


def check_one_study(headers: dict[str, list[SliceHeader]]) -> None:
    """One StudyInstanceUID, or separate studies that share one frame of reference (the documented rule)."""
    studies = _first((s.study_uid, where) for where, slices in headers.items() for s in slices[:1])
    if len(studies) <= 1:
        return
    frames = {s.frame_uid for slices in headers.values() for s in slices}
    if len(frames) == 1 and "" not in frames:
        return
    (u1, w1), (u2, w2) = list(studies.items())[:2]
    raise DicomInputError(f"two studies in one input: StudyInstanceUID {u1} ({w1}) and {u2} ({w2}), in different "
                          "frames of reference; phases from separate studies are accepted only in one "
                          "FrameOfReferenceUID (deploy/README.md)")


def _extent(slices: list[SliceHeader]) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (LPS mm) of a stack of slices."""
    row, col = np.array(slices[0].orientation[:3]), np.array(slices[0].orientation[3:])
    corners = []
    for s in slices:
        p = np.array(s.position)
        w, h = (s.columns - 1) * s.spacing[1], (s.rows - 1) * s.spacing[0]
        corners += [p, p + w * row, p + h * col, p + w * row + h * col]
    corners = np.array(corners)
    return corners.min(0), corners.max(0)


def check_one_frame(images: dict[str, list[SliceHeader]], segs: dict[str, list[SliceHeader]],
                    where: dict[str, str]) -> None:
    """The phase series share one frame of reference (or, without one, overlap the AP series); each SEG lies in
    the frame of its series. ``images``/``segs``: headers by phase (phase order); ``where``: names by key."""
    frames = _first((slices[0].frame_uid, where[p]) for p, slices in images.items())
    if len(frames) > 1:
        (f1, w1), (f2, w2) = list(frames.items())[:2]
        raise DicomInputError(f"{w2} is in FrameOfReferenceUID {f2}, {w1} in {f1}: the phases are in different "
                              "coordinate spaces and the app does not register them; export them in one frame of "
                              "reference")
    ref_phase = next(iter(images))
    lo, hi = _extent(images[ref_phase])
    for phase, slices in images.items():
        if not slices[0].frame_uid:
            a, b = _extent(slices)
            if np.any(a > hi + POSITION_TOL) or np.any(b < lo - POSITION_TOL):
                raise DicomInputError(f"{where[phase]} states no FrameOfReferenceUID and does not overlap "
                                      f"{where[ref_phase]} in space: the phases cannot be put on one grid")
    for phase, slices in segs.items():
        frame, series_frame = slices[0].frame_uid, images[phase][0].frame_uid
        if frame and series_frame and frame != series_frame:
            raise DicomInputError(f"{where[f'{phase}_mask']}: file {slices[0].path} is in FrameOfReferenceUID "
                                  f"{frame}, its series in {series_frame}")


def check_series(images: dict, masks: dict, others: Sequence = ()) -> dict[str, list[SliceHeader]]:
    """Run every check of the module on the chosen phase series and SEG masks (``Series`` of
    :mod:`p53hcc.tools.deploy.dicom_study`; a NIfTI mask is a path and has no header) and on the series the app
    does not use (``others``, their first file's PatientID). Returns the phase series' headers by phase."""
    where = {p: f"phase {p.upper()}, {s}" for p, s in images.items()}
    where.update({f"{p}_mask": f"{p.upper()} mask {m}" for p, m in masks.items() if hasattr(m, "files")})
    headers = {p: [read_header(f, where[p]) for f in sorted(s.files)] for p, s in images.items()}
    for p in images:
        check_slices(headers[p], where[p])
    segs = {p: [read_header(f, where[f"{p}_mask"]) for f in m.files] for p, m in masks.items() if hasattr(m, "files")}
    named = {**{where[p]: h for p, h in headers.items()}, **{where[f"{p}_mask"]: h for p, h in segs.items()}}
    check_one_patient(named, {str(s): s.patient_id for s in others})
    check_one_study(named)
    check_one_frame(headers, segs, where)
    return headers


def voxel_checks(study) -> None:
    """The per-patient image checks of ``p53hcc validate`` and ``predict`` (:mod:`p53hcc.tools.cohort.imagechecks`)
    on the app's loaded volume (AP, PVP, DP, their masks, on the AP grid): a blank series refuses before N4; a
    mask far smaller in one phase than in the others and an implausible phase order are logged as warnings (the
    combined model's ``predict`` also writes them into ``result.json``)."""
    from p53hcc.tools.cohort.imagechecks import (
        blank_problem,
        mask_extent,
        mask_extent_problems,
        phase_order_problem,
        ring_median,
    )

    volume = np.asarray(study.volume)
    spacing = [float(v) for v in np.ravel(np.asarray(getattr(study.volume, "pixdim", [1.0, 1.0, 1.0])))[:3]]
    phases = list(study.images)
    for i, phase in enumerate(phases):
        why = blank_problem(volume[i])
        if why:
            raise DicomInputError(f"patient {study.patient_id}, phase {phase.upper()}, {study.images[phase]}: {why}")
    masks = {p: volume[len(phases) + i] for i, p in enumerate(phases)}
    for phase, why in mask_extent_problems({p: mask_extent(m, spacing) for p, m in masks.items()}).items():
        log.warning("patient %s, %s mask: %s", study.patient_id, phase.upper(), why)
    why = phase_order_problem({p: ring_median(volume[i], masks[p], spacing) for i, p in enumerate(phases)})
    if why:
        log.warning("patient %s: %s", study.patient_id, why)


#: Checks of one patient's loaded input (:class:`p53hcc.tools.deploy.run.StudyInput`: the chosen series,
#: the masks, the six-channel volume), run in order by :func:`check_images` after the header checks and before
#: anything is scored; each raises a :class:`p53hcc.tools.errors.P53hccError` naming the patient and the problem.
#: The place where per-patient image checks plug in: :func:`voxel_checks`, the checks ``validate`` and ``predict``
#: make (blank series, mask extent across phases, phase order).
IMAGE_CHECKS: list[Callable[[object], None]] = [voxel_checks]


def check_images(study: object) -> None:
    """Run :data:`IMAGE_CHECKS` on one patient's loaded input."""
    for check in IMAGE_CHECKS:
        check(study)
