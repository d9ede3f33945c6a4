"""The fast in-process training engine shared by both DL arms: cached crops, on-device training, scoring.

The bundles' *deterministic* transforms (load -> [N4] -> 1 mm -> z-score -> largest slice -> bbox + margin ->
resize) run once per patient through a ``PersistentDataset`` and the stacked crops are kept on disk
(:func:`cached_crops`). Training (:func:`fit`) follows the arm's ``train.json`` as its recipe: the optimizer,
the loss (with its class weighting), the learning-rate schedule and the batch augmentation are instantiated from
the parsed config with the study's values applied (:func:`training_recipe`), so editing ``train.json`` changes
this engine and ``--engine bundle`` alike. What it adds is speed: all crops stay on the device, whole batches are
augmented there, bf16 autocast (``precision: bf16``) + channels_last + cudnn.benchmark on CUDA, optional
``torch.compile``, and one host sync per epoch. The same code runs on the CPU.

The model kept is the last epoch's (no early stopping on a held-out fold, which would bias out-of-fold scores);
the held-out AUC per epoch is only recorded in the history.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from p53hcc.tools.dl.bundle import CROP_KEYS, TRAINING_KEYS, bundle_parser
from p53hcc.tools.dl.nets import build_net, feature_extractor
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, atomic_write_text, file_sha256, params_hash
from p53hcc.tools.parallel import single_threaded

log = logging.getLogger(__name__)
_INIT_LOCK = threading.Lock()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    return torch.device(str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def source_items(items: list[dict], study_dir: str | os.PathLike, params: dict) -> list[dict]:
    """``items`` as the network sees them: raw manifest paths, or the study's preprocessed volumes."""
    if params.get("source", "raw") == "preprocessed":
        from p53hcc.tools.preprocessing.run import preprocessed_items

        return preprocessed_items(items, study_dir)
    return items


#: Item keys that name an image or mask file (multi-phase MC items and single-phase FF items).
PATH_KEYS = ("ap", "pvp", "dp", "ap_mask", "pvp_mask", "dp_mask", "image", "mask")


def item_content(item: dict) -> str:
    """Content id of one datalist item's images and masks: what its crops (and the networks) are made from.

    Items pointing at the study's preprocessed volumes carry it already (``content``: their preprocessing keys,
    which hash the raw files and the preprocessing parameters); raw items are hashed here (sha256 of each file,
    remembered within and across runs by :func:`p53hcc.tools.io.file_sha256`).
    """
    if item.get("content"):
        return str(item["content"])
    return params_hash({k: file_sha256(item[k]) if item.get(k) else None for k in PATH_KEYS if k in item})


def items_digest(items: list[dict]) -> str:
    """One hash of the patients, labels, splits, folds and image contents of ``items`` (order included)."""
    return params_hash([[d["patient_id"], d.get("label"), d.get("split"), d.get("fold"), item_content(d)]
                        for d in items])


def cached_crops(items: list[dict], out: str | Path, params: dict, arm: str, area: str, prefix: str,
                 desc: str, masks: bool = False) -> torch.Tensor:
    """Stacked deterministic 2D crops ``[N, C, S, S]`` of ``items``, each patient computed once and cached.

    Runs the ``deterministic_transforms`` of ``arm``'s bundle (the same config the bundle's own trainer uses)
    through a ``PersistentDataset`` in ``out/<area>/cache/<hash>`` and keeps the stacked tensor in
    ``out/<area>/slices/<prefix>_<hash>_<content hash>.pt``; the hash covers the crop parameters, the arm and
    the image source (raw or preprocessed), and the content hash each patient's id and image content
    (:func:`item_content`, also part of each patient's ``PersistentDataset`` key), so a replaced image or a
    changed preprocessing never returns an old crop.

    ``masks=True`` returns instead each crop's tumour mask (``[N, C, S, S]`` in [0, 1], one channel per phase
    like the images), cut and resized exactly like its image: the bundle's chain with its ``roi_transforms``
    keeping the masks (for displays; cached apart, so the networks' crops never change).
    """
    from monai.data import PersistentDataset
    from monai.transforms import Compose
    from monai.utils import convert_to_tensor
    from tqdm.auto import tqdm

    keys = {k: params[k] for k in CROP_KEYS}
    tag = params_hash({**keys, "bundle": f"p53_{arm}", "source": params.get("source", "raw"),
                       **({"masks": True} if masks else {})})
    items = [{**d, "content": item_content(d)} for d in items]
    ids = [d["patient_id"] for d in items]
    root = Path(out) / area
    content = params_hash([[d["patient_id"], d["content"]] for d in items])
    stacked = root / "slices" / f"{prefix}{'_mask' if masks else ''}_{tag}_{content}.pt"
    if stacked.is_file():
        return torch.load(stacked, weights_only=True)["x"]
    parser = bundle_parser(arm, overrides={**keys, "dataset_dir": str(out)})
    if masks:
        parser["roi_transforms"] = _keeping_masks(parser["roi_transforms"])
    ds = PersistentDataset(items, Compose(parser.get_parsed_content("deterministic_transforms")),
                           cache_dir=root / "cache" / tag)
    key = "mask" if masks else "image"  # plain tensors (a MetaTensor's meta would not load with weights_only)
    with single_threaded():  # the same bits whatever the machine's core count (see single_threaded)
        x = torch.stack([convert_to_tensor(ds[i][key], dtype=torch.float32, track_meta=False).clone()
                         for i in tqdm(range(len(ds)), desc=desc, leave=False)])
    with atomic_path(stacked) as tmp:
        torch.save({"x": x, "ids": ids}, tmp)
    return x


def _keeping_masks(expression: str) -> str:
    """The bundle's ``roi_transforms`` expression (a call of ``roi_transforms``) with ``keep_masks=True`` added."""
    if not (isinstance(expression, str) and expression.startswith("$") and expression.rstrip().endswith(")")):
        raise P53hccError(f"cannot add keep_masks to the bundle's roi_transforms {expression!r}")
    return expression.rstrip()[:-1] + ", keep_masks=True)"


def _batches(n: int, batch_size: int, perm: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Split a permutation into near-equal batches (no batch of 1, which BatchNorm cannot train on)."""
    n_batches = max(1, min(-(-n // max(1, batch_size)), n // 2))
    return torch.tensor_split(perm, n_batches)


def autocast(dev: torch.device, precision: str):
    """bf16 autocast on CUDA for ``precision="bf16"``; fp32 otherwise (a CPU always computes in fp32 here)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16" and dev.type == "cuda")


def precision_of(params: dict) -> str:
    """The precision of training values (``precision``; a frozen model of p53hcc <= 0.2 recorded ``amp``)."""
    if "precision" in params:
        return str(params["precision"])
    return "bf16" if params.get("amp", True) else "fp32"


def predict_scores(net: torch.nn.Module, x: torch.Tensor, device: str | torch.device | None = None,
                   batch_size: int = 64, precision: str = "bf16") -> np.ndarray:
    """P(class 1) of every image of ``x`` ``[N, C, H, W]`` (eval mode, no augmentation)."""
    dev = resolve_device(device)
    net = net.to(dev).eval()
    out = []
    with torch.inference_mode(), autocast(dev, precision):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(net(xb).float(), dim=1)[:, 1])
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


def penultimate_features(net: torch.nn.Module, x: torch.Tensor, device=None, batch_size: int = 64,
                         precision: str = "bf16") -> np.ndarray:
    """Penultimate-layer features ``[N, D]`` of ``x`` via a forward hook (:func:`feature_extractor`)."""
    dev = resolve_device(device)
    # channels_last like training (fit), so a reloaded checkpoint runs the same conv kernels and gives
    # bit-identical features (a contiguous-format copy differs by ~1e-6, enough to move small FF scores)
    extractor = feature_extractor(net.to(dev, memory_format=torch.channels_last).eval())
    out = []
    try:
        with torch.inference_mode(), autocast(dev, precision):
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)
                out.append(extractor(xb).float().cpu())
    finally:
        extractor.remove()
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


@dataclass
class TrainingRecipe:
    """What one network trains with, instantiated from the arm's ``train.json``: optimizer, loss, learning-rate
    schedule (``lr_scheduler`` after ``warmup_epochs`` of warm-up; None: constant) and batch augmentation (None:
    none)."""

    optimizer: torch.optim.Optimizer
    loss: torch.nn.Module
    lr_scheduler: Any
    augmentation: torch.nn.Module | None

    def describe(self, dev: torch.device, precision: str) -> dict[str, Any]:
        """The recipe as it ran (classes and their scalar settings), for ``recipe.json`` and the report."""
        weight = getattr(self.loss, "weight", None)
        return {"optimizer": _class_name(self.optimizer),
                "optimizer_settings": {k: v for k, v in self.optimizer.defaults.items()
                                       if isinstance(v, (int, float, str, bool, tuple, list)) or v is None},
                "loss": _class_name(self.loss), "loss_class_weights": None if weight is None else weight.tolist(),
                "loss_settings": _scalars(self.loss),
                "lr_scheduler": _class_name(self.lr_scheduler),
                "lr_scheduler_settings": _scalars(self.lr_scheduler, skip=("last_epoch", "verbose")),
                "batch_augmentation": _class_name(self.augmentation),
                "batch_augmentation_settings": _scalars(self.augmentation),
                "precision": precision if dev.type == "cuda" else "fp32", "declared_precision": precision,
                "device": dev.type}


def _class_name(obj: Any) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


def _scalars(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """An object's public scalar attributes (its settings, as far as they can be read back), or None."""
    if obj is None:
        return None
    return {k: v for k, v in vars(obj).items() if not k.startswith("_") and k not in ("training", *skip)
            and isinstance(v, (int, float, str, bool))}


def training_recipe(arm: str, params: dict, net: torch.nn.Module, y_train: torch.Tensor,
                    dev: torch.device) -> TrainingRecipe:
    """Instantiate ``train.json``'s ``optimizer``, ``loss``, learning-rate schedule (``scheduler_with_warmup``:
    ``lr_scheduler`` after ``warmup_epochs``, what the bundle's trainer steps too) and ``batch_augmentation`` with
    the run's values (``params``: the study's overrides applied), for ``net`` and the unit's training labels.

    The config's ``@network`` is the network this engine built, ``@train#datalist`` the unit's training patients
    (the loss's class weights come from them), ``@device`` the training device.
    """
    parser = bundle_parser(arm, overrides={**{k: params[k] for k in TRAINING_KEYS if k in params},
                                           "device": str(dev)})
    parser["network"] = net
    parser["train#datalist"] = [{"label": int(v)} for v in y_train.tolist()]
    parts = ("optimizer", "loss", "scheduler_with_warmup", "batch_augmentation")
    optimizer, loss, scheduler, aug = (parser.get_parsed_content(k) for k in parts)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise P53hccError(f"train.json of {arm}: optimizer is a {type(optimizer).__name__}, not a torch optimizer")
    return TrainingRecipe(optimizer, loss.to(dev) if isinstance(loss, torch.nn.Module) else loss, scheduler, aug)


def fit(x_tr: torch.Tensor, y_tr: torch.Tensor, net_name: str, params: dict, device=None,
        x_va: torch.Tensor | None = None, y_va: torch.Tensor | None = None, desc: str = "train",
        arm: str = "mc", recipe_path: str | Path | None = None):
    """Train one network on device-resident crops with on-device augmentation; returns ``(net, history)``.

    The optimizer, loss, schedule and augmentation are ``arm``'s ``train.json`` recipe (:func:`training_recipe`);
    ``recipe_path`` receives what they were (``recipe.json``). ``history`` has one row per epoch: mean training
    loss and (when ``x_va`` has both classes) held-out AUC.
    """
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import trange

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precision = str(params["precision"])
    with _INIT_LOCK:  # the global RNG seeds the weights; folds trained in threads must not interleave here
        torch.manual_seed(int(params["seed"]))
        net = build_net(net_name, in_channels=x_tr.shape[1], pretrained_path=params.get("pretrained_path"),
                        spatial_size=x_tr.shape[-1], patch_size=params.get("patch_size"))
    net = net.to(dev, memory_format=torch.channels_last)
    model = torch.compile(net) if params.get("compile") else net
    recipe = training_recipe(arm, params, net, y_tr, dev)
    if recipe_path is not None:
        atomic_write_text(recipe_path, json.dumps(recipe.describe(dev, precision), indent=1, default=str))
    gen = torch.Generator(device=dev).manual_seed(int(params["seed"]))
    aug = recipe.augmentation
    if aug is not None and hasattr(aug, "generator"):
        aug.generator = gen  # reproducible augmentation, drawn from the same stream as the batch order
    x = x_tr.to(dev).contiguous(memory_format=torch.channels_last)
    y = y_tr.to(dev).long()
    history = []
    can_auc = y_va is not None and len(set(y_va.tolist())) == 2
    for epoch in (bar := trange(int(params["epochs"]), desc=desc, leave=False)):
        model.train()
        total = torch.zeros((), device=dev)
        batches = _batches(len(x), int(params["batch_size"]), torch.randperm(len(x), device=dev, generator=gen))
        for idx in batches:
            xb = x[idx] if aug is None else aug.train()(x[idx])
            with autocast(dev, precision):
                loss = recipe.loss(model(xb).float(), y[idx])
            recipe.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            recipe.optimizer.step()
            total += loss.detach()
        if recipe.lr_scheduler is not None:
            recipe.lr_scheduler.step()
        row = {"epoch": epoch + 1, "train_loss": float(total) / len(batches)}  # one host sync per epoch
        if can_auc:
            row["val_auc"] = float(roc_auc_score(y_va.numpy(), predict_scores(net, x_va, dev, precision=precision)))
        history.append(row)
        bar.set_postfix({k: round(v, 3) for k, v in row.items() if k != "epoch"})
    return net.eval(), pd.DataFrame(history)
