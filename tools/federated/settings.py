"""The one home of the federated study's settings (typed; an unknown or mistyped key is an error before anything
runs). ``p53hcc federated --fl.rounds 3`` and a ``federated:`` section of the study YAML fill it; everything else
(preprocessing, radiomics, the DL training values) comes from the study configuration as for ``p53hcc study``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from p53hcc.tools.errors import P53hccError


class FederatedSettings(BaseModel):
    """Settings of ``p53hcc federated`` (defaults: the demo-size federation of docs/federated.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site_column: str = "scanner"
    """cohort.csv column whose values are the sites (FLARE clients); never a model input."""
    folds: int = Field(3, ge=3)
    """site-local stratified folds of every site's training patients (fold k of the federation = every site's
    fold k); >= 3 because the LASSO penalty is cross-validated over the other outer folds."""
    rounds: int = Field(2, ge=1)
    """FedAvg rounds of every DL network."""
    local_epochs: int = Field(1, ge=1)
    """local epochs of a site per FedAvg round (MonaiAlgo's ``local_epochs``)."""
    arms: list[Literal["mc", "ff"]] = ["mc", "ff"]
    """DL arms trained federated (empty: clinical, radiomics and combined only)."""
    net: str | None = None
    """network of both arms (null: the bundles' ``net``)."""
    bins: int = Field(100, ge=10)
    """score bins of the federated evaluation (ROC, DeLong, calibration); a multiple of calibration_groups."""
    calibration_groups: int = Field(10, ge=2)
    """equal-width risk groups of the calibration curve."""
    min_site_patients: int = Field(6, ge=1)
    """a site with fewer training patients is refused (its sums would be nearly per-patient)."""
    nonnegative: bool = True
    """non-negative weights of the combined model (as fusion.stack_weights: nonnegative)."""
    seed: int = 0
    """seed of the sites' folds and of the DL networks' initial weights."""

    @field_validator("bins")
    @classmethod
    def _bins(cls, v: int, info) -> int:
        groups = info.data.get("calibration_groups", 10)
        if v % groups:
            raise ValueError(f"bins ({v}) must be a multiple of calibration_groups ({groups})")
        return v


def federated_settings(values: dict | None = None, **overrides) -> FederatedSettings:
    """Settings from a mapping (the YAML section) and flags; a clear error on an unknown or wrong value."""
    from pydantic import ValidationError

    merged = {**(values or {}), **{k: v for k, v in overrides.items() if v is not None}}
    if isinstance(merged.get("arms"), str):
        merged["arms"] = [a for a in merged["arms"].split(",") if a]
    try:
        return FederatedSettings(**merged)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise P53hccError(f"federated settings: {problems}") from None
