"""Error types that reach the user as one clear line (the CLI prints them without a traceback)."""
from __future__ import annotations


class P53hccError(Exception):
    """Base class: anything the user can fix (bad input, missing stage output, bad option)."""


class InputError(P53hccError, ValueError):
    """A problem with one patient's input, naming the patient, the column/file and the reason.

    Also a ValueError (a bad value in the input), as scikit-learn and its users expect of a fitted model's input
    checks."""

    def __init__(self, patient_id: str | None, problem: str, column: str | None = None, path: str | None = None):
        self.patient_id, self.problem, self.column, self.path = patient_id, problem, column, path
        super().__init__(patient_id, problem, column, path)  # all of them: a pickled copy (process pools) rebuilds

    def __str__(self) -> str:
        parts = [f"patient {self.patient_id}" if self.patient_id is not None else "cohort"]
        if self.column:
            parts.append(f"column {self.column}")
        if self.path:
            parts.append(f"file {self.path}")
        return f"{', '.join(parts)}: {self.problem}"


def check_choice(value, choices, what: str) -> str:
    """``value`` lower-cased if it is one of ``choices``, else a one-line error naming the choices."""
    key = str(value).lower()
    if key not in choices:
        raise P53hccError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return key
