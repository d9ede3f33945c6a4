"""``STUDY_DIR/dropped.csv``: every patient a stage could not produce a result for, with the reason.

A stage that fails for some patients either stops (``on_failure: fail``, the default) or leaves them out of the
analysis (``on_failure: record``); either way each one is written here (``patient_id, stage, phase, reason``), the
study builds its folds and models from the other patients, and the report lists them. Each stage replaces only
its own rows, so a rerun that succeeds for a patient removes it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from p53hcc.tools.errors import P53hccError, check_choice
from p53hcc.tools.io import atomic_write_table, read_table

DROPPED = "dropped.csv"
DROPPED_COLUMNS = ["patient_id", "stage", "phase", "reason"]
#: What a stage does with a patient it cannot process.
ON_FAILURE = ("fail", "record")
log = logging.getLogger(__name__)


def check_on_failure(value: str | None) -> str:
    """``fail`` (None too) or ``record``, else a one-line error."""
    return check_choice(value or "fail", ON_FAILURE, "on_failure policy")


def read_dropped(study_dir: str | os.PathLike) -> pd.DataFrame:
    """The study's dropped patients (an empty table when there are none)."""
    path = Path(study_dir) / DROPPED
    if not path.is_file():
        return pd.DataFrame(columns=DROPPED_COLUMNS)
    return read_table(path).fillna({"phase": ""})[DROPPED_COLUMNS]


def dropped_patients(study_dir: str | os.PathLike) -> set[str]:
    """Ids of every patient some stage left out."""
    return set(read_dropped(study_dir)["patient_id"])


def record_dropped(study_dir: str | os.PathLike, stage: str, rows: Iterable[dict]) -> pd.DataFrame:
    """Replace ``stage``'s rows of ``dropped.csv`` by ``rows`` (``patient_id``, ``phase``, ``reason``); returns them.

    The file is sorted, so the same failures always give the same bytes (the study's caches key on it), and it
    is removed when no stage dropped anybody.
    """
    new = pd.DataFrame([{"patient_id": str(r["patient_id"]), "stage": stage, "phase": r.get("phase") or "",
                         "reason": str(r["reason"])} for r in rows], columns=DROPPED_COLUMNS)
    old = read_dropped(study_dir)
    table = pd.concat([old[old["stage"] != stage], new], ignore_index=True)
    table = table.drop_duplicates().sort_values(DROPPED_COLUMNS).reset_index(drop=True)
    path = Path(study_dir) / DROPPED
    if table.empty:
        path.unlink(missing_ok=True)
    else:
        atomic_write_table(path, table)
    return new


def apply_policy(study_dir: str | os.PathLike, stage: str, failures: list[dict], total: int, on_failure: str,
                 what: str) -> None:
    """Record ``failures`` of ``stage``; raise under ``fail``, warn under ``record``.

    Args:
        failures: ``patient_id``, ``phase``, ``reason`` per failed item.
        total: items the stage processed (for the message).
        what: the items' name in the message (e.g. ``patient-phase(s)``).

    Raises:
        P53hccError: ``on_failure`` is ``fail`` and something failed (the message names every failure).
    """
    policy = check_on_failure(on_failure)
    record_dropped(study_dir, stage, failures)
    if not failures:
        return
    lines = "\n  ".join(f"patient {f['patient_id']}{' phase ' + f['phase'] if f.get('phase') else ''}: "
                        f"{f['reason']}" for f in failures)
    where = Path(study_dir) / DROPPED
    if policy == "fail":
        raise P53hccError(f"{stage} failed for {len(failures)} of {total} {what} (the others are written and "
                          f"cached; listed in {where}; on_failure: record would leave them out):\n  {lines}")
    ids = sorted({str(f["patient_id"]) for f in failures})
    log.warning("%s: %d patient(s) left out of the analysis (on_failure: record; listed in %s): %s\n  %s", stage,
                len(ids), where, ", ".join(ids), lines)
