"""What the package's fitted models share to keep scikit-learn's estimator contract (tests/test_sklearn_contract.py).

Binary by design: the outcome is P53 mutated or not, so the classifiers say so in their tags and every model with
a label refuses a third class, a continuous target or a single class with scikit-learn's own error messages.
Models whose inputs are found by column name take a DataFrame only, and say so.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from p53hcc.fusion.inputs import align, indexed_by_id


class BinaryClassifierMixin(ClassifierMixin):
    """A classifier of two classes only: scikit-learn's ``classifier_tags.multi_class`` is False."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class SupervisedMixin:
    """A model fitted with a label (e.g. a label-aware feature selector): scikit-learn's ``target_tags.required``."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


def require_frame(X, owner: str, columns: str) -> pd.DataFrame:
    """``X`` itself if it is a DataFrame; a TypeError naming the columns ``owner`` reads by name otherwise.

    For the models whose inputs are found by column name (a cohort's clinical columns, the FF head's phase
    features, the scanner column): a bare array would have to be read by position, and a mistaken order would give
    a silently wrong model.
    """
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"{owner} takes a pandas DataFrame with {columns}; a numpy array or sparse matrix has no "
                        f"column names (got {type(X).__name__})")
    return X


def binary_target(y, name: str = "y", zero_one: bool = False) -> np.ndarray:
    """A two-class target as 0/1 codes (the larger label is 1), with scikit-learn's errors for anything else.

    A 2-D column is flattened with scikit-learn's DataConversionWarning; NaN, inf and continuous values raise
    ("Unknown label type"); three or more classes say "Only binary classification is supported"; a single class
    says so. ``zero_one``: the labels must be 0/1 (bool accepted), so that the positive class (1 = P53 mutated) is
    never guessed from the order of other labels.
    """
    if y is None:
        raise ValueError(f"the model requires y to be passed, but the target y is None ({name}: 0/1, 1 = P53 mutated)")
    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    classes = np.unique(y)
    if len(classes) > 2:
        raise ValueError(f"Only binary classification is supported (P53 mutated or not); {name} has "
                         f"{len(classes)} classes {classes[:5].tolist()}")
    if len(classes) < 2:
        what = f"only one class ({classes.tolist()[0]!r})" if len(classes) else "no patients"
        raise ValueError(f"{name} has {what}; both classes are needed to fit (P53 mutated and wild type)")
    if zero_one and not all(c in (0, 1) for c in classes.tolist()):
        raise ValueError(f"{name} must be 0/1 labels (1 = P53 mutated), got {classes.tolist()}")
    return (y == classes[1]).astype(int)


def aligned_target(y, index: pd.Index, name: str = "y", zero_one: bool = False) -> np.ndarray:
    """:func:`binary_target` of ``y`` matched to the patients ``index`` by the package's alignment rule (a Series
    by patient id, anything else by position and of the same length)."""
    if indexed_by_id(y):
        y = align(y, index, name)
    codes = binary_target(y, name, zero_one)
    if codes.size != len(index):
        raise ValueError(f"{name} has {codes.size} values for {len(index)} patients")
    return codes
