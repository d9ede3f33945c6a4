"""Scoring new patients with a frozen full-cohort DL model (``dl/<arm>/<net>/full``), for both arms.

The folder holds the full-cohort network(s), ``config.json`` (their training parameters: ROI size, N4, source...)
and, for FF, ``head.joblib`` (the FF head fit on all training patients). New patients get exactly the crops the
networks were trained on, so the study's validation patients get back their study scores.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from p53hcc.tools.cohort.splits import cohort_items
from p53hcc.tools.dl.arms import features_frame, get_arm, load_unit_network, read_config
from p53hcc.tools.dl.engine import penultimate_features, precision_of, predict_scores, source_items
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.parallel import fixed_threads


def frozen_crops(weights: Path, cohort_csv: str | os.PathLike, work: str | os.PathLike, arm: str,
                 unit: str | None) -> tuple[list[str], torch.Tensor, dict]:
    """Crops of the patients of ``cohort_csv`` for one unit of a frozen arm, made as training made them.

    With ``source="preprocessed"`` the crops are cut from ``work/preprocessed`` (the new patients preprocessed
    with the frozen preset, as :func:`p53hcc.tools.pipeline.predict.predict_cohort` does). Returns
    ``(patient_ids, crops, params)``.
    """
    params = read_config(weights)
    items = source_items(cohort_items(cohort_csv), work, params)
    return [d["patient_id"] for d in items], get_arm(arm).crops(Path(work), items, params, unit), params


def predict_frozen(weights: str | os.PathLike, cohort_csv: str | os.PathLike, work: str | os.PathLike,
                   arm: str = "mc", net: str | None = None, device: str | None = None,
                   batch_column: str | None = None) -> pd.Series:
    """P(P53 mutated) of every patient of ``cohort_csv`` from a frozen full-cohort model folder.

    MC: the three-channel network's probability. FF: each phase's crops through its network to the penultimate
    features, then the saved head (per-phase PCA -> LASSO -> LR), the computation that gave validation patients
    their FF score in the study. A harmonising FF head reads each patient's scanner from ``batch_column`` of
    ``cohort_csv`` (default ``scanner``); scanners it was not fitted on follow its documented new-batch rule
    (:mod:`p53hcc.fusion.models.harmonise`).

    Returns:
        Series ``score`` indexed by ``patient_id``.
    """
    weights = Path(weights)
    # the thread count the networks were trained and scored with in the study: the same bits for its patients
    with fixed_threads(int(read_config(weights).get("cpu_threads", 1))):
        return _predict_frozen(weights, cohort_csv, work, arm, net, device, batch_column)


def _predict_frozen(weights: Path, cohort_csv, work, arm: str, net: str | None, device, batch_column=None
                    ) -> pd.Series:
    spec = get_arm(arm)
    net = net or read_config(weights)["net"]
    if spec.name == "mc":
        ids, x, params = frozen_crops(weights, cohort_csv, work, "mc", None)
        scores = predict_scores(load_unit_network(weights, None, net), x, device,
                                precision=precision_of(params))
        return pd.Series(scores, index=pd.Index(ids, name="patient_id"), name="score")
    import joblib

    from p53hcc.fusion.models.ffhead import wide_features

    head_path = weights / "head.joblib"
    if not head_path.is_file():
        raise P53hccError(f"{head_path} not found: retrain the FF arm (`p53hcc train --arm ff`) or rerun the study")
    head = joblib.load(head_path)
    parts, ids = [], []
    for phase in head.phases:
        ids, x, params = frozen_crops(weights, cohort_csv, work, "ff", phase)
        feats = penultimate_features(load_unit_network(weights, phase, net), x, device,
                                     precision=precision_of(params))
        parts.append(features_frame(ids, phase, -1, feats))
    wide = wide_features(pd.concat(parts, ignore_index=True), head.phases).loc[ids]
    if getattr(head, "harmoniser_", None) is not None:
        from p53hcc.fusion.models.harmonise import with_batch
        from p53hcc.tools.cohort.batches import batch_of

        wide = with_batch(wide, batch_of(cohort_csv, batch_column))
    return pd.Series(head.predict_proba(wide)[:, 1], index=pd.Index(ids, name="patient_id"), name="score")
