"""The public contract between p53hcc and its MONAI bundles: everything ``bundles/*/configs/*.json`` may name.

The bundle configs import this one module (``"$import p53hcc.tools.dl.components as p53"``) and reference only
the names in ``__all__``; nothing private. ``tests/test_components.py`` checks that every ``p53hcc`` reference
in the shipped configs resolves to a name listed here.

* Data: :func:`select_items` (which patients a fold trains, monitors or scores), :func:`require_items` (an empty
  part is an error), :func:`class_weights`.
* Config values: :func:`as_bool` (``monai.bundle run ... --n4 false`` passes the string ``'false'``).
* Reading: :class:`SeriesSpacingReader` (ITK, with DICOM series' slice spacing as their headers state it, and
  DICOM SEG masks).
* Transforms: :class:`N4BiasFieldCorrectiond` (wired by :func:`n4_transforms`), :class:`RenameKeysd`,
  :class:`SplitChannelsd` (the deploy configs' one in-memory input volume -> phases and masks),
  :func:`roi_transforms` (largest-ROI slice -> bbox + margin -> resize -> z-score),
  :class:`BatchRandCropFlip` (the training augmentation, on whole batches on their device).
* Networks: :func:`build_net`, :func:`feature_extractor` (penultimate features, FF arm), :class:`FFNet` (the whole
  FF arm, head included, as one network: the exported FF bundles' model).
* Engine helpers: :class:`AugmentingPrepareBatch`, :class:`PatientTableWriter`, :func:`warm_cache`,
  :func:`with_warmup` (the learning-rate schedule both engines step: ``lr_scheduler`` after ``warmup_epochs``).

``p53hcc export-bundle`` copies the definitions behind these names into an exported bundle's ``scripts/``
(:mod:`p53hcc.tools.export.scripts`), so the repository holds one copy of each.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p53hcc.tools.cohort.splits import select_items
from p53hcc.tools.dl.ffnet import FFNet
from p53hcc.tools.dl.nets import build_net, feature_extractor
from p53hcc.tools.dl.roi import (
    BatchRandCropFlip,
    RenameKeysd,
    SplitChannelsd,
    roi_transforms,
)
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_table
from p53hcc.tools.preprocessing.chain import SeriesSpacingReader
from p53hcc.tools.preprocessing.n4 import N4BiasFieldCorrectiond

__all__ = ["AugmentingPrepareBatch", "BatchRandCropFlip", "FFNet", "N4BiasFieldCorrectiond", "PatientTableWriter",
           "RenameKeysd", "SeriesSpacingReader", "SplitChannelsd", "as_bool", "build_net", "class_weights",
           "feature_extractor", "n4_transforms", "require_items", "roi_transforms", "select_items",
           "warm_cache", "with_warmup"]


def as_bool(value, name: str = "flag") -> bool:
    """A boolean config value: bools as they are, ``true/false``, ``yes/no``, ``on/off``, ``1/0`` in any case.

    MONAI's bundle command line passes ``--n4 false`` as the string ``'false'`` (truthy); this parses it with the
    same rule as the study's typed settings (pydantic's boolean parsing), so a word means the same everywhere.
    """
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError:
        raise P53hccError(f"--{name} expects true or false, got {value!r}") from None


def class_weights(items: list[dict], num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency class weights (mean 1) for a weighted cross-entropy (the class-imbalance handling)."""
    y = np.array([int(d["label"]) for d in items if int(d.get("label", -1)) >= 0])
    counts = np.bincount(y, minlength=num_classes).astype(float) if len(y) else np.ones(num_classes)
    w = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return torch.as_tensor(w, dtype=torch.float32)


def require_items(items: list[dict], part: str) -> list[dict]:
    """``items`` unchanged, or an error when there are none: an empty inference part is a mistake (a wrong
    ``infer_part`` or datalist), never a silent success."""
    if not items:
        raise P53hccError(f"the datalist part {part!r} holds no patients: nothing to score (check infer_part "
                          "and the datalist)")
    return items


def n4_transforms(image_keys: Sequence[str], enabled: bool = True, params: dict | None = None) -> list:
    """``[N4BiasFieldCorrectiond(image_keys, **params)]`` when ``enabled``, else ``[]``.

    The config flag ``n4`` is false when the bundle reads already preprocessed volumes (it may come from the
    command line as ``'false'``, see :func:`as_bool`); ``params`` are N4 parameters
    (:class:`p53hcc.tools.preprocessing.params.N4Params` fields; its defaults when None), e.g. the preprocessing
    preset a study used, which an exported bundle records.
    """
    return [N4BiasFieldCorrectiond(keys=list(image_keys), **(params or {}))] if as_bool(enabled, "n4") else []


def with_warmup(optimizer: torch.optim.Optimizer, scheduler=None, warmup_epochs: int = 0):
    """The epoch schedule both engines step: ``scheduler`` (None: a constant rate) after ``warmup_epochs`` of linear
    warm-up from ``lr / (warmup_epochs + 1)`` to ``lr`` (torch's ``LinearLR``, chained by ``SequentialLR``).

    With ``warmup_epochs`` 0 it is ``scheduler`` itself (so a recipe without warm-up runs exactly as before).
    Transformers trained from scratch are commonly given a few epochs of warm-up (docs/dl_variants.md).
    """
    warmup_epochs = int(warmup_epochs)
    if warmup_epochs <= 0:
        return scheduler
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    warm = LinearLR(optimizer, start_factor=1.0 / (warmup_epochs + 1), end_factor=1.0, total_iters=warmup_epochs)
    return warm if scheduler is None else SequentialLR(optimizer, [warm, scheduler], milestones=[warmup_epochs])


def warm_cache(dataset) -> None:
    """Compute every item of a ``PersistentDataset`` once (its deterministic part lands in the cache).

    Used by ``multi_gpu_train.json`` on rank 0 before a barrier, so that DDP ranks never write the same cache
    file at the same time (DistributedSampler pads by repeating items, so two ranks can ask for one patient).
    """
    for i in range(len(dataset)):
        dataset._cachecheck(dataset.data[i]) if hasattr(dataset, "_cachecheck") else dataset[i]


class AugmentingPrepareBatch:
    """``prepare_batch`` for MONAI engines: moves ``image``/``label`` to the device, then applies a batch augmenter.

    With ``augment=None`` it is MONAI's default preparation; with the config's ``batch_augmentation``
    (:class:`BatchRandCropFlip`) the random crop + flips run on the device for the whole batch, as in the fast
    engine.
    """

    def __init__(self, augment: torch.nn.Module | None = None) -> None:
        self.augment = augment

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata["image"].to(device=device, non_blocking=non_blocking)
        label = batchdata["label"].to(device=device, non_blocking=non_blocking) if "label" in batchdata else None
        if self.augment is not None:
            image = self.augment.train()(torch.as_tensor(image))
        return image, label


class PatientTableWriter:
    """Ignite handler writing one row per evaluated patient to a table (CSV or parquet), atomically at the end.

    ``mode="probability"``: ``pred`` holds softmax probabilities -> columns ``label`` (from the item, -1 when
    unknown) and ``score`` = P(class 1), and with a ``threshold`` ``predicted_class`` (``score >= threshold``).
    ``mode="features"``: ``pred`` is the penultimate feature vector (network wrapped by
    :func:`feature_extractor`) -> columns ``f0..f{D-1}``. Constant columns (``phase``, ``fold``, ``model``) come
    from ``extra``. Rows are keyed by ``patient_id`` (MONAI's ``SaveClassificationd`` would name them after the
    image file). Under ``torch.distributed`` (``multi_gpu_evaluate.json``) every rank's rows are gathered and rank
    0 writes the one table.
    """

    def __init__(self, output_path: str | os.PathLike, mode: str = "probability", extra: dict | None = None,
                 threshold: float | None = None):
        if mode not in ("features", "probability"):
            raise ValueError(f"mode must be 'features' or 'probability', got {mode!r}")
        self.output_path, self.mode, self.extra = Path(output_path), mode, dict(extra or {})
        self.threshold = None if threshold is None else float(threshold)
        self._ids: list[str] = []
        self._labels: list[int] = []
        self._rows: list[np.ndarray] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self.output_path.unlink(missing_ok=True)  # a failed run never leaves an earlier run's table behind
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self._ids, self._labels, self._rows = [], [], []

    def _collect(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict):  # not decollated
            from monai.data import decollate_batch

            batch, output = decollate_batch(batch), decollate_batch(output)
        for b, o in zip(batch, output):
            self._ids.append(str(b["patient_id"]))
            self._labels.append(int(b.get("label", -1)))
            self._rows.append(torch.as_tensor(o["pred"]).detach().float().cpu().numpy().ravel())

    def table(self) -> pd.DataFrame:
        """The collected rows as a tidy frame (``patient_id``, extra columns, values)."""
        mat = np.vstack(self._rows) if self._rows else np.zeros((0, 0))
        head = pd.DataFrame({"patient_id": self._ids, **{k: [v] * len(self._ids) for k, v in self.extra.items()}})
        if self.mode == "features":
            values = pd.DataFrame(mat, columns=[f"f{j}" for j in range(mat.shape[1])])
        else:
            values = pd.DataFrame({"label": self._labels, "score": mat[:, -1] if len(mat) else []})
            if self.threshold is not None:
                values["predicted_class"] = (values["score"] >= self.threshold).astype(int)
        return pd.concat([head, values], axis=1)

    def _write(self, engine) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (self._ids, self._labels, self._rows))
            if dist.get_rank() != 0:
                return
            self._ids, self._labels, self._rows = ([x for part in parts for x in part[i]] for i in range(3))
        atomic_write_table(self.output_path, self.table())
