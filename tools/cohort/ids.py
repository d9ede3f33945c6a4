"""Patient ids as file and folder names: the one safe alphabet, checked where the cohort enters.

Every stage keeps a patient's files under a name made from the id (``preprocessed/<id>/``, the radiomics cache,
the resampled second-reader masks, Grad-CAM images and arrays), so an id must be one harmless path component on
every file system the study runs on. An id is accepted when it

* is 1-64 characters of ASCII letters, digits, ``.``, ``_`` and ``-`` (:data:`ID_ALPHABET`), beginning with a letter
  or digit and not ending with ``.`` (no ``..``, ``/``, ``\\``, spaces or hidden names; Windows drops a trailing dot);
* is not a name Windows reserves for a device (``CON``, ``NUL``, ``COM1``... with or without an extension);
* differs from every other id of the cohort by more than letter case (``SYN0004`` and ``syn0004`` would share one
  folder on macOS, Windows and SMB shares).

:func:`id_problems` reports the ids a cohort breaks the rule with (``validate`` lists them with every other
problem; :func:`p53hcc.tools.cohort.manifest.read_cohort` refuses such a cohort, so no stage ever sees one), and
:func:`patient_path` is how every stage turns an id into a path: it refuses an unsafe id again, so an id that
reaches it from anywhere else (an API call, a DICOM PatientID) can never name a file outside its folder.
The Deploy app's ids come from DICOM headers, which a hospital cannot rename: :func:`path_safe_id` gives such an id
a safe stand-in for scratch folders.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path

from p53hcc.tools.errors import InputError

#: The characters of a patient id (documented in docs/contracts.md).
ID_ALPHABET = "ASCII letters, digits, '.', '_', '-'"
ID_MAX_LENGTH = 64
_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?")
#: Device names Windows reserves in every folder (case-insensitive, with or without an extension).
RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))})


def id_problem(patient_id) -> str | None:
    """Why ``patient_id`` cannot name a file or folder, or None when it can."""
    pid = str(patient_id)
    if not pid:
        return "empty patient_id"
    if len(pid) > ID_MAX_LENGTH:
        return f"patient_id is {len(pid)} characters long; at most {ID_MAX_LENGTH} are allowed"
    if not _ID.fullmatch(pid):
        bad = sorted({c for c in pid if not (c.isascii() and (c.isalnum() or c in "._-"))})
        what = (f"character(s) {' '.join(repr(c) for c in bad)}" if bad
                else "a leading '.', '_' or '-' or a trailing '.'")
        return (f"patient_id {pid!r} has {what}: ids name each patient's files and folders, so they must be "
                f"{ID_ALPHABET}, beginning with a letter or digit and not ending with '.'")
    if pid.split(".")[0].upper() in RESERVED:
        return f"patient_id {pid!r} is a device name Windows reserves ({pid.split('.')[0].upper()}); rename the patient"
    return None


def id_problems(ids: Iterable) -> list[tuple[str, str]]:
    """``(patient_id, reason)`` for every unsafe id and every id that differs from another only by letter case
    (exact duplicates are reported as such by the manifest checks)."""
    ids = [str(i) for i in ids]
    out = [(pid, why) for pid in dict.fromkeys(ids) if (why := id_problem(pid))]
    by_fold: dict[str, list[str]] = {}
    for pid in dict.fromkeys(ids):
        by_fold.setdefault(pid.casefold(), []).append(pid)
    for same in (v for v in by_fold.values() if len(v) > 1):
        for pid in same:
            others = ", ".join(repr(o) for o in same if o != pid)
            out.append((pid, (f"patient_id {pid!r} differs from {others} only by letter case: they would share "
                              "one folder on case-insensitive file systems (macOS, Windows, SMB); rename one")))
    return out


def patient_path(root: str | Path, patient_id, suffix: str = "") -> Path:
    """``root / (patient_id + suffix)``: a patient's folder (or file, with ``suffix`` such as ``.png``) under
    ``root``, for an id of the safe alphabet only.

    Raises:
        InputError: the id could leave ``root`` or is not a portable name.
    """
    why = id_problem(patient_id)
    if why:
        raise InputError(str(patient_id), why, "patient_id")
    return Path(root) / f"{patient_id}{suffix}"


def path_safe_id(patient_id) -> str:
    """``patient_id`` itself when it is safe, else ``id-`` and 16 hex digits of its SHA-256: a stand-in that names
    one scratch folder per id (for ids the user cannot change, such as a DICOM PatientID)."""
    pid = str(patient_id)
    return pid if id_problem(pid) is None else "id-" + hashlib.sha256(pid.encode("utf-8")).hexdigest()[:16]
