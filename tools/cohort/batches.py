"""The batch (scanner / centre) of each patient: the one reader of ``cohort.csv``'s batch column.

Harmonisation (:mod:`p53hcc.fusion.models.harmonise`) and leave-one-scanner-out validation
(:func:`p53hcc.tools.cohort.splits.make_splits`) both group patients by it; it is ``scanner`` unless the study
names another column (``batch_column``).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.errors import InputError

#: The cohort column that holds the batch unless the study names another one.
DEFAULT_BATCH_COLUMN = "scanner"


def batch_of(cohort: pd.DataFrame | str | Path, column: str | None = None) -> pd.Series:
    """Batch per patient (text, index ``patient_id`` as text) from a cohort table or ``cohort.csv``.

    Raises:
        InputError: the column is absent, or a patient has no value in it.
    """
    column = column or DEFAULT_BATCH_COLUMN
    where = str(cohort) if isinstance(cohort, (str, Path)) else None
    df = read_cohort(cohort) if where else cohort
    if column not in df.columns:
        raise InputError(None, f"no batch column '{column}' (scanner or centre of each patient): harmonisation and "
                               "leave-one-scanner-out need it; set batch_column to the cohort column that has it",
                         column=column, path=where)
    values = df[column]
    blank = values.isna() | (values.astype(str).str.strip() == "")
    if blank.any():
        pid = str(df.loc[blank, "patient_id"].iloc[0])
        raise InputError(pid, "no batch (scanner) value", column=column, path=where)
    return pd.Series(values.astype(str).str.strip().to_numpy(), index=pd.Index(df["patient_id"].astype(str),
                                                                                name="patient_id"), name=column)
