"""Every model of the study in one place: the factories of the clinical, radiomics, FF-DL head and combined models.

Each returns an unfitted scikit-learn estimator, so cross-fitting clones and fits it inside the folds only.
"""
from __future__ import annotations

from collections.abc import Sequence

from p53hcc.fusion.models.clinical import ClinicalModel
from p53hcc.fusion.models.combined import COMBINED_INPUTS, CombinedModel, logit
from p53hcc.fusion.models.ffhead import make_ff_head
from p53hcc.fusion.models.radiomics import make_radiomics_model


def make_clinical_model(**kw) -> ClinicalModel:
    """Clinical model (encode -> univariable p<0.05 -> stepwise AIC -> LR); ``preoperative_only=True`` default."""
    return ClinicalModel(**kw)


def make_combined_model(inputs: Sequence[str] = COMBINED_INPUTS, nonnegative: bool = True) -> CombinedModel:
    """The combined model of the paper (clinical + radiomics + DL scores); see :class:`CombinedModel`."""
    return CombinedModel(inputs=inputs, nonnegative=nonnegative)


__all__ = ["COMBINED_INPUTS", "ClinicalModel", "CombinedModel", "logit", "make_clinical_model",
           "make_combined_model", "make_ff_head", "make_radiomics_model"]
