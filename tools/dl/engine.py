"""The fast in-process training engine shared by both DL arms: cached crops, on-device training, scoring.

The bundles' *deterministic* transforms (load -> [N4] -> 1 mm -> z-score -> largest slice -> bbox + 10 px ->
resize) run once per patient through a ``PersistentDataset`` and the stacked crops are kept on disk
(:func:`cached_crops`). Training (:func:`fit`) keeps all crops on the device, augments whole batches there
(``BatchRandCropFlip``), uses bf16 autocast + channels_last + cudnn.benchmark on CUDA, optional
``torch.compile``, and syncs with the host once per epoch. The same code runs on the CPU.

The model kept is the last epoch's (no early stopping on a held-out fold, which would bias out-of-fold scores);
the held-out AUC per epoch is only recorded in the history.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p53hcc.tools.dl.bundle import CROP_KEYS, bundle_parser
from p53hcc.tools.dl.components import BatchRandCropFlip, class_weights
from p53hcc.tools.dl.nets import build_net, feature_extractor
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, file_sha256, params_hash
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


def _autocast(dev: torch.device, amp: bool):
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda")


def predict_scores(net: torch.nn.Module, x: torch.Tensor, device: str | torch.device | None = None,
                   batch_size: int = 64, amp: bool = True) -> np.ndarray:
    """P(class 1) of every image of ``x`` ``[N, C, H, W]`` (eval mode, no augmentation)."""
    dev = resolve_device(device)
    net = net.to(dev).eval()
    out = []
    with torch.inference_mode(), _autocast(dev, amp):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(net(xb).float(), dim=1)[:, 1])
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


def penultimate_features(net: torch.nn.Module, x: torch.Tensor, device=None, batch_size: int = 64,
                         amp: bool = True) -> np.ndarray:
    """Penultimate-layer features ``[N, D]`` of ``x`` via a forward hook (:func:`feature_extractor`)."""
    dev = resolve_device(device)
    # channels_last like training (fit), so a reloaded checkpoint runs the same conv kernels and gives
    # bit-identical features (a contiguous-format copy differs by ~1e-6, enough to move small FF scores)
    extractor = feature_extractor(net.to(dev, memory_format=torch.channels_last).eval())
    out = []
    try:
        with torch.inference_mode(), _autocast(dev, amp):
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)
                out.append(extractor(xb).float().cpu())
    finally:
        extractor.remove()
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def fit(x_tr: torch.Tensor, y_tr: torch.Tensor, net_name: str, params: dict, device=None,
        x_va: torch.Tensor | None = None, y_va: torch.Tensor | None = None, desc: str = "train"):
    """Train one network on device-resident crops with on-device augmentation; returns ``(net, history)``.

    ``history`` has one row per epoch: mean training loss and (when ``x_va`` has both classes) held-out AUC.
    """
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import trange

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp = bool(params["amp"]) and dev.type == "cuda"
    with _INIT_LOCK:  # the global RNG seeds the weights; folds trained in threads must not interleave here
        torch.manual_seed(int(params["seed"]))
        net = build_net(net_name, in_channels=x_tr.shape[1], pretrained_path=params.get("pretrained_path"))
    net = net.to(dev, memory_format=torch.channels_last)
    model = torch.compile(net) if params.get("compile") else net
    opt = torch.optim.AdamW(net.parameters(), lr=float(params["learning_rate"]),
                            weight_decay=float(params["weight_decay"]))
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights([{"label": int(v)} for v in y_tr.tolist()]).to(dev))
    gen = torch.Generator(device=dev).manual_seed(int(params["seed"]))
    aug = BatchRandCropFlip(min_scale=float(params["min_scale"]), generator=gen)
    x = x_tr.to(dev).contiguous(memory_format=torch.channels_last)
    y = y_tr.to(dev).long()
    history = []
    can_auc = y_va is not None and len(set(y_va.tolist())) == 2
    for epoch in (bar := trange(int(params["epochs"]), desc=desc, leave=False)):
        model.train()
        total = torch.zeros((), device=dev)
        batches = _batches(len(x), int(params["batch_size"]), torch.randperm(len(x), device=dev, generator=gen))
        for idx in batches:
            xb = aug(x[idx])
            with _autocast(dev, amp):
                loss = loss_fn(model(xb).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        row = {"epoch": epoch + 1, "train_loss": float(total) / len(batches)}  # one host sync per epoch
        if can_auc:
            row["val_auc"] = float(roc_auc_score(y_va.numpy(), predict_scores(net, x_va, dev, amp=amp)))
        history.append(row)
        bar.set_postfix({k: round(v, 3) for k, v in row.items() if k != "epoch"})
    return net.eval(), pd.DataFrame(history)
