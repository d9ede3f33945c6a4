"""Cross-fitting of the deep-learning arms: one model per fold of ``splits.json`` plus one on the whole training cohort.

``train_arm`` writes ``out/dl/<arm>/<net>/fold<k>/model.pt``, ``full/model.pt`` and ``scores.parquet``
(``patient_id, model, fold, split, score``): out-of-fold scores for training patients (each from the one fold
model that never saw that patient) and full-model scores for validation / external / predict patients.

Two engines share the bundle's config (``bundles/p53_mc/configs/train.json``):

* ``engine="fast"`` (default; issue 8): the bundle's *deterministic* transforms (load -> N4 -> 1 mm -> z-score
  -> largest slice -> bbox+10 -> resize -> concat) run once per patient through a ``PersistentDataset`` and the
  stacked crops are kept in ``out/dl/slices/``. Training then keeps all crops on the device, augments whole
  batches there (:class:`tools.roi.BatchRandCropFlip`), uses bf16 autocast + channels_last + cudnn.benchmark on
  CUDA, optional ``torch.compile``, and syncs with the host once per epoch (validation AUC). Same code on CPU.
* ``engine="bundle"``: each fold runs the bundle itself through ``monai.bundle.ConfigWorkflow`` (SupervisedTrainer,
  handlers, TensorBoard), then ``inference.json`` scores the held-out patients.

The model saved is the last epoch's (no early stopping on the held-out fold, which would bias the OOF scores);
the held-out AUC per epoch is only logged. Finished folds (``done.json`` written last, atomically) are skipped.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tools.errors import P53hccError
from tools.io_utils import atomic_path, atomic_write_json, atomic_write_table, params_hash, read_table

BUNDLE_MC = Path(__file__).resolve().parents[1] / "bundles" / "p53_mc"
_INIT_LOCK = threading.Lock()
DEFAULTS = {"epochs": 100, "batch_size": 16, "learning_rate": 1e-4, "weight_decay": 1e-4, "spatial_size": 256,
            "margin": 10, "pixdim": 1.0, "n4": True, "amp": True, "seed": 0, "compile": False, "min_scale": 0.8,
            "source": "raw"}
# ``source``: "raw" runs the bundle's full chain (N4 -> 1 mm -> z-score) on the manifest's images;
# "preprocessed" reads the study's preprocessed volumes (tools.preprocess), so N4 runs once per patient-phase.


# ----------------------------------------------------------------------------------------------- datalist helpers
def datalist_part(datalist: str | os.PathLike | dict, part: str, fold: int = -1) -> list[dict]:
    """Items of a MONAI datalist for one role.

    Args:
        datalist: path of ``datalist.json`` (relative image paths are resolved against its folder) or the dict.
        part: ``"train"`` (training patients outside ``fold``; all of them when ``fold < 0``), ``"val"``
            (training patients of ``fold``; the ``validation`` list when ``fold < 0``), a list name
            (``training``, ``validation``, ``external``, ``predict``) or ``"all"``.
        fold: held-out fold index, -1 for the full-cohort model.
    """
    base = None
    if not isinstance(datalist, dict):
        base = Path(datalist).parent
        datalist = json.loads(Path(datalist).read_text())
    training = datalist.get("training", [])
    if part == "train":
        items = [d for d in training if fold < 0 or int(d.get("fold", -1)) != int(fold)]
    elif part == "val":
        items = [d for d in training if int(d.get("fold", -1)) == int(fold)] if fold >= 0 else datalist.get(
            "validation", [])
    elif part == "all":
        items = [d for key in ("training", "validation", "external", "predict") for d in datalist.get(key, [])]
    elif part in datalist:
        items = datalist[part]
    else:
        raise P53hccError(f"unknown datalist part {part!r}")
    out = []
    for d in items:
        d = {k: v for k, v in d.items() if v is not None}
        if base is not None:
            d.update({k: str(base / v) for k, v in d.items() if k.startswith(("ap", "pvp", "dp")) and isinstance(
                v, str) and not os.path.isabs(v)})
        d["patient_id"] = str(d["patient_id"])
        d.setdefault("label", -1)
        out.append(d)
    return out


def class_weights(items: list[dict], num_classes: int = 2) -> torch.Tensor:
    """Inverse-frequency class weights (mean 1) for a weighted cross-entropy (the class-imbalance handling)."""
    y = np.array([int(d["label"]) for d in items if int(d.get("label", -1)) >= 0])
    counts = np.bincount(y, minlength=num_classes).astype(float) if len(y) else np.ones(num_classes)
    w = counts.sum() / (num_classes * np.maximum(counts, 1.0))
    return torch.as_tensor(w, dtype=torch.float32)


def n4_transforms(image_keys: list[str], mask_keys: list[str], enabled: bool = True) -> list:
    """``[N4BiasFieldCorrectiond]`` from ``tools.transforms`` when ``enabled`` (config flag ``n4``), else ``[]``.

    Imported lazily so a bundle run on already preprocessed volumes (``n4: false``) does not need ITK's N4.
    """
    if not enabled:
        return []
    from tools import transforms

    return [transforms.N4BiasFieldCorrectiond(keys=list(image_keys))]


def warm_cache(dataset) -> None:
    """Compute every item of a ``PersistentDataset`` once (its deterministic part lands in the cache).

    Used by ``multi_gpu_train.json`` on rank 0 before a barrier, so that DDP ranks never write the same cache
    file at the same time (DistributedSampler pads by repeating items, so two ranks can ask for one patient).
    """
    for i in range(len(dataset)):
        dataset._cachecheck(dataset.data[i]) if hasattr(dataset, "_cachecheck") else dataset[i]


class AugmentingPrepareBatch:
    """``prepare_batch`` for MONAI engines: moves ``image``/``label`` to the device, then applies a batch augmenter.

    With ``augment=None`` it is MONAI's default preparation; with :class:`tools.roi.BatchRandCropFlip` the random
    crop + flips run on the device for the whole batch (config flag ``gpu_aug``).
    """

    def __init__(self, augment: torch.nn.Module | None = None) -> None:
        self.augment = augment

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata["image"].to(device=device, non_blocking=non_blocking)
        label = batchdata["label"].to(device=device, non_blocking=non_blocking) if "label" in batchdata else None
        if self.augment is not None:
            image = self.augment.train()(torch.as_tensor(image))
        return image, label


class ScoreWriter:
    """Ignite handler writing ``patient_id, label, score`` (P(class 1)) of every evaluated item to a CSV.

    ``SaveClassificationd`` names rows after the first image file; this keeps the patient id instead. Written
    atomically when the engine completes.
    """

    def __init__(self, output_file: str | os.PathLike, pred_key: str = "pred") -> None:
        self.output_file, self.pred_key, self.rows = Path(output_file), pred_key, []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict):  # not decollated
            from monai.data import decollate_batch
            batch, output = decollate_batch(batch), decollate_batch(output)
        for b, o in zip(batch, output):
            pred = torch.as_tensor(o[self.pred_key]).float().flatten()
            self.rows.append({"patient_id": str(b["patient_id"]), "label": int(b.get("label", -1)),
                              "score": float(pred[-1])})

    def _write(self, engine) -> None:
        atomic_write_table(self.output_file, pd.DataFrame(self.rows, columns=["patient_id", "label", "score"]))


# ------------------------------------------------------------------------------------------- cached 2D crops
def _parser(bundle: Path, overrides: dict):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update(overrides)
    return parser


# Config values that change the cached deterministic crops (the cache folders are keyed by them).
CROP_KEYS = ("spatial_size", "margin", "pixdim", "n4")


def cached_crops(items: list[dict], out: str | Path, params: dict, bundle: Path, area: str, prefix: str,
                 desc: str) -> torch.Tensor:
    """Stacked deterministic 2D crops ``[N, C, S, S]`` of ``items``, each patient computed once and cached.

    Runs the bundle's ``deterministic_transforms`` (same config as the bundle engine) through a
    ``PersistentDataset`` in ``out/<area>/cache/<hash>`` and keeps the stacked tensor in
    ``out/<area>/slices/<prefix>_<hash>_<patients hash>.pt``; the hash covers the crop parameters, the bundle
    and the image source (raw or preprocessed).
    """
    from monai.data import PersistentDataset
    from monai.transforms import Compose
    from tqdm.auto import tqdm

    keys = {k: params[k] for k in CROP_KEYS}
    tag = params_hash({**keys, "bundle": bundle.name, "source": params.get("source", "raw")})
    ids = [d["patient_id"] for d in items]
    root = Path(out) / area
    stacked = root / "slices" / f"{prefix}_{tag}_{params_hash(ids)}.pt"
    if stacked.is_file():
        return torch.load(stacked, weights_only=True)["x"]
    parser = _parser(bundle, {**keys, "dataset_dir": str(out)})
    ds = PersistentDataset(items, Compose(parser.get_parsed_content("deterministic_transforms")),
                           cache_dir=root / "cache" / tag)
    x = torch.stack([torch.as_tensor(ds[i]["image"], dtype=torch.float32).clone()
                     for i in tqdm(range(len(ds)), desc=desc, leave=False)])
    with atomic_path(stacked) as tmp:
        torch.save({"x": x, "ids": ids}, tmp)
    return x


def roi_tensors(items: list[dict], out: str | Path, params: dict, bundle: Path = BUNDLE_MC) -> torch.Tensor:
    """MC crops ``[N, 3, S, S]`` (AP|PVP|DP as channels), cached under ``out/dl/`` (see :func:`cached_crops`)."""
    return cached_crops(items, out, params, bundle, area="dl", prefix=bundle.name, desc="2D ROI crops")


# ------------------------------------------------------------------------------------------------ fast engine
def resolve_device(device: str | None) -> torch.device:
    """The requested device, or CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _batches(n: int, batch_size: int, perm: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Split a permutation into near-equal batches (no batch of 1, which BatchNorm cannot train on)."""
    n_batches = max(1, min(-(-n // max(1, batch_size)), n // 2))
    return torch.tensor_split(perm, n_batches)


def predict_scores(net: torch.nn.Module, x: torch.Tensor, device: str | torch.device | None = None,
                   batch_size: int = 64, amp: bool = True) -> np.ndarray:
    """P(class 1) of every image of ``x`` ``[N, C, H, W]`` (eval mode, no augmentation)."""
    dev = resolve_device(str(device) if device is not None else None)
    net = net.to(dev).eval()
    out = []
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(net(xb).float(), dim=1)[:, 1])
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


def fit_fast(x_tr: torch.Tensor, y_tr: torch.Tensor, net_name: str, params: dict, device=None,
             x_va: torch.Tensor | None = None, y_va: torch.Tensor | None = None, desc: str = "train"):
    """Train one network on GPU/CPU-resident crops with on-device augmentation; returns ``(net, history)``.

    ``history`` has one row per epoch: mean training loss and (when ``x_va`` has both classes) held-out AUC.
    """
    from sklearn.metrics import roc_auc_score
    from tqdm.auto import trange

    from tools.nets import build_net
    from tools.roi import BatchRandCropFlip

    dev = resolve_device(str(device) if device is not None else None)
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
    items = [{"label": int(v)} for v in y_tr.tolist()]
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(items).to(dev))
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
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
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


# ------------------------------------------------------------------------------------------------ cross-fitting
def check_oof(scores: pd.DataFrame, splits: dict) -> None:
    """Assert the fold bookkeeping: no out-of-fold score comes from a model that saw that patient.

    Every training patient has exactly one score, from fold ``k`` whose held-out part contains it (so the model
    of fold ``k`` never trained on it); full-model scores (``fold == -1``) are only for non-training patients.

    Raises:
        P53hccError: the bookkeeping is violated.
    """
    train_ids = {pid for f in splits["folds"] for pid in f["val"]}
    for f in splits["folds"]:
        scored = set(scores.loc[scores["fold"] == f["fold"], "patient_id"])
        if scored & set(f["train"]):
            raise P53hccError(f"fold {f['fold']} scored patients it trained on: {sorted(scored & set(f['train']))[:5]}")
    for f in splits["folds"]:
        if set(scores.loc[scores["fold"] == f["fold"], "patient_id"]) != set(f["val"]):
            raise P53hccError(f"fold {f['fold']} scores do not match its held-out patients")
    full = scores[scores["fold"] == -1]
    if set(full["patient_id"]) & train_ids:
        raise P53hccError("the full-cohort model scored training patients (they need out-of-fold scores)")
    oof = scores[scores["patient_id"].isin(train_ids)]
    if oof["patient_id"].duplicated().any() or set(oof["patient_id"]) != train_ids:
        raise P53hccError("each training patient needs exactly one out-of-fold score")


def _params(epochs, overrides: dict) -> dict:
    params = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    if epochs is not None:
        params["epochs"] = int(epochs)
    if params["source"] not in ("raw", "preprocessed"):
        raise P53hccError(f"unknown source {params['source']!r}; choose raw or preprocessed")
    if params["source"] == "preprocessed":
        params["n4"] = False  # already bias-corrected, resampled and normalised by tools.preprocess
    return params


def source_items(items: list[dict], study_dir: str | os.PathLike, params: dict) -> list[dict]:
    """``items`` as the network sees them: raw manifest paths, or the study's preprocessed volumes."""
    if params.get("source", "raw") == "preprocessed":
        from tools.preprocess import preprocessed_items

        return preprocessed_items(items, study_dir)
    return items


def _fold_done(fold_dir: Path, tag: str) -> pd.DataFrame | None:
    marker = fold_dir / "done.json"
    if marker.is_file() and json.loads(marker.read_text()).get("params") == tag:
        return read_table(fold_dir / "scores.parquet")
    return None


def _finish_fold(fold_dir: Path, net, scores: pd.DataFrame, history: pd.DataFrame, params: dict, tag: str) -> None:
    if net is not None:
        with atomic_path(fold_dir / "model.pt") as tmp:
            torch.save(net.state_dict(), tmp)
    atomic_write_json(fold_dir / "config.json", params)
    atomic_write_table(fold_dir / "history.csv", history)
    atomic_write_table(fold_dir / "scores.parquet", scores)
    atomic_write_json(fold_dir / "done.json", {"params": tag, "n_scored": len(scores)})  # marker, last


def _run_fold_fast(x_all, ids, items, fold, train_ids, score_ids, net, params, device, desc):
    pos = {pid: i for i, pid in enumerate(ids)}
    label = {d["patient_id"]: int(d.get("label", -1)) for d in items}
    tr = torch.as_tensor([pos[p] for p in train_ids])
    sc = torch.as_tensor([pos[p] for p in score_ids], dtype=torch.long)
    y_tr = torch.as_tensor([label[p] for p in train_ids])
    y_sc = torch.as_tensor([label[p] for p in score_ids])
    val = (x_all[sc], y_sc) if fold >= 0 else (None, None)
    model, history = fit_fast(x_all[tr], y_tr, net, params, device, *val, desc=desc)
    return model, predict_scores(model, x_all[sc], device, amp=bool(params["amp"])), history


def run_bundle(configs: list[Path], workflow_type: str, overrides: dict) -> None:
    """Run a bundle config (list = base + overrides) through MONAI's ConfigWorkflow with property checks."""
    from monai.bundle import ConfigWorkflow

    configs = [Path(c) for c in configs]
    wf = ConfigWorkflow(config_file=[str(c) for c in configs], workflow_type=workflow_type,
                        meta_file=str(configs[0].parent / "metadata.json"),
                        logging_file=str(configs[0].parent / "logging.conf"), **overrides)
    wf.initialize()
    missing = wf.check_properties()
    if missing:
        raise P53hccError(f"bundle {configs[-1]} lacks required properties {missing}")
    wf.run()
    wf.finalize()


def _run_fold_bundle(out, fold, score_part, net, params, device, fold_dir, bundle=BUNDLE_MC):
    """Train one fold with the bundle's ConfigWorkflow, then score ``score_part`` with inference.json."""
    from monai.bundle import ConfigWorkflow

    common = {"bundle_root": str(bundle), "dataset_dir": str(out), "datalist": str(Path(out) / "datalist.json"),
              "fold": int(fold), "net": net, "device": str(resolve_device(device)), "ckpt_dir": str(fold_dir),
              "output_dir": str(fold_dir), "cache_dir": str(Path(out) / "dl" / "cache" / "bundle"),
              **{k: params[k] for k in ("epochs", "batch_size", "learning_rate", "weight_decay", "spatial_size",
                                        "margin", "pixdim", "n4", "amp", "seed")}}
    if fold < 0:
        common["val_interval"] = max(1, int(params["epochs"]))
    run_bundle([bundle / "configs" / "train.json"], "train", common)
    scores = pd.DataFrame()
    for part in score_part:
        csv = fold_dir / f"scores_{part}.csv"
        inf = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"), workflow_type="infer",
                             logging_file=str(bundle / "configs" / "logging.conf"),
                             **{**common, "infer_part": part, "scores_file": str(csv),
                                "ckpt_path": str(fold_dir / "model.pt")})
        inf.initialize()
        inf.run()
        inf.finalize()
        scores = pd.concat([scores, read_table(csv)], ignore_index=True)
    return scores.set_index("patient_id")["score"]


def train_arm(cohort_csv: str | os.PathLike, out: str | os.PathLike, arm: str = "mc", net: str = "resnet34",
              epochs: int | None = None, device: str | None = None, folds: list[int] | None = None,
              engine: str = "fast", workers: int = 1, **overrides) -> Path:
    """Cross-fit one DL arm: a model per fold of ``splits.json`` + one on all training patients; write scores.

    Args:
        cohort_csv: cohort manifest (used to write ``datalist.json``/``splits.json`` if they are missing).
        out: study folder.
        arm: ``"mc"`` (this module) or ``"ff"`` (delegated to ``tools.train_ff.train_ff_arm``).
        net: one of ``tools.nets.NETS``.
        epochs: training epochs (default 100).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        folds: restrict to these fold indices (``-1`` = full model); scores are only written when all ran.
        engine: ``"fast"`` (on-device training loop) or ``"bundle"`` (MONAI ConfigWorkflow per fold).
        workers: folds trained concurrently (fast engine; threads, one CUDA stream each) - for small networks
            that do not fill the GPU on their own.
        overrides: ``batch_size``, ``learning_rate``, ``spatial_size``, ``n4``, ``amp``, ``compile``, ``seed``...

    Returns:
        Path of ``out/dl/mc/<net>/scores.parquet`` (or of the fold folder when only some folds ran).
    """
    if arm == "ff":
        from tools.train_ff import train_ff_arm

        return train_ff_arm(cohort_csv, out, net=net, epochs=epochs, device=device, folds=folds, engine=engine,
                            workers=workers, **overrides)
    if arm != "mc":
        raise P53hccError(f"unknown arm {arm!r}; choose mc or ff")
    from tqdm.auto import tqdm

    from tools.nets import check_net_name

    net, out = check_net_name(net), Path(out)
    if not (out / "datalist.json").is_file() or not (out / "splits.json").is_file():
        from tools.cohort import write_datalist

        write_datalist(cohort_csv, out)
    splits = json.loads((out / "splits.json").read_text())
    datalist = out / "datalist.json"
    params = _params(epochs, overrides)
    if params["source"] == "preprocessed" and engine == "bundle":
        raise P53hccError("engine 'bundle' runs the bundle's own chain on raw images; use source='raw' with it")
    tag = params_hash({**params, "net": net, "engine": engine, "splits": splits})
    items = source_items(datalist_part(datalist, "all"), out, params)
    others = [d["patient_id"] for d in items if d.get("split", "train") != "train"]
    plan = [(f["fold"], f["train"], f["val"]) for f in splits["folds"]]
    plan.append((-1, [pid for f in splits["folds"] for pid in f["val"]], others))
    todo = [p for p in plan if folds is None or p[0] in {int(k) for k in folds}]
    root = out / "dl" / "mc" / net
    split_of = {d["patient_id"]: d.get("split", "train") for d in items}
    results = {fold: _fold_done(root / (f"fold{fold}" if fold >= 0 else "full"), tag) for fold, _, _ in todo}
    pending = [p for p in todo if results[p[0]] is None]
    x_all = roi_tensors(items, out, params) if pending and engine != "bundle" else None

    def run_one(job) -> pd.DataFrame:
        fold, train_ids, score_ids = job
        fold_dir = root / (f"fold{fold}" if fold >= 0 else "full")
        if engine == "bundle":
            score_part = ["val"] if fold >= 0 else [k for k in ("validation", "external", "predict")
                                                    if datalist_part(datalist, k)]
            by_id = _run_fold_bundle(out, fold, score_part, net, params, device, fold_dir)
            model, scores, history = None, by_id.reindex(score_ids).to_numpy(), pd.DataFrame()
        else:
            dev = resolve_device(device)
            stream = torch.cuda.stream(torch.cuda.Stream(dev)) if dev.type == "cuda" and workers > 1 else nullcontext()
            with stream:
                model, scores, history = _run_fold_fast(x_all, [d["patient_id"] for d in items], items, fold,
                                                        train_ids, score_ids, net, params, device,
                                                        desc=f"{net} fold {fold}")
        done = pd.DataFrame({"patient_id": score_ids, "model": f"mc_{net}", "fold": fold,
                             "split": [split_of[p] for p in score_ids], "score": scores})
        _finish_fold(fold_dir, model, done, history, {**params, "net": net, "fold": fold, "engine": engine}, tag)
        return done

    bar = tqdm(total=len(todo), initial=len(todo) - len(pending), desc=f"mc_{net} folds")
    if workers > 1 and engine != "bundle" and len(pending) > 1:  # small models: several folds share the device
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:
            for job, done in zip(pending, pool.map(run_one, pending)):
                results[job[0]] = done
                bar.update()
    else:
        for job in pending:
            results[job[0]] = run_one(job)
            bar.update()
    bar.close()
    parts = [results[fold] for fold, _, _ in todo]
    if folds is not None and len(todo) < len(plan):
        return root
    scores = pd.concat(parts, ignore_index=True)
    scores["fold"] = scores["fold"].astype(int)
    check_oof(scores, splits)
    return atomic_write_table(root / "scores.parquet", scores)


# ------------------------------------------------------------------------------------------- frozen model scoring
def cohort_items(cohort_csv: str | os.PathLike) -> list[dict]:
    """Datalist-style items (absolute paths, ``label`` -1 when unknown) for every patient of a cohort manifest."""
    from tools.cohort import MASK_COLUMNS, PHASES, read_cohort

    df = read_cohort(cohort_csv)
    items = []
    for r in df.to_dict("records"):
        p53 = pd.to_numeric(pd.Series([r.get("p53")]), errors="coerce").iloc[0]
        items.append({"patient_id": str(r["patient_id"]), **{c: str(r[c]) for c in (*PHASES, *MASK_COLUMNS)},
                      "label": int(p53) if pd.notna(p53) else -1, "split": str(r.get("split", "predict"))})
    return items


def predict_frozen(weights: str | os.PathLike, cohort_csv: str | os.PathLike, work: str | os.PathLike,
                   arm: str = "mc", net: str = "resnet34", device: str | None = None) -> pd.Series:
    """P(P53 mutated) of every patient of ``cohort_csv`` from a frozen full-cohort model folder (``.../full``).

    The folder holds ``model.pt`` and ``config.json`` (the training parameters: ROI size, N4...), so new
    patients get exactly the preprocessing the model was trained with. Crops are cached under ``work``.
    """
    from tools.nets import load_net

    weights = Path(weights)
    if arm != "mc":
        from tools import train_ff

        return train_ff.predict_frozen(weights, cohort_csv, work, net=net, device=device)
    cfg = weights / "config.json"
    params = {**DEFAULTS, **(json.loads(cfg.read_text()) if cfg.is_file() else {})}
    items = source_items(cohort_items(cohort_csv), work, params)  # predict_cohort preprocesses into ``work``
    x = roi_tensors(items, work, params)
    scores = predict_scores(load_net(weights / "model.pt", net), x, device, amp=bool(params["amp"]))
    return pd.Series(scores, index=pd.Index([d["patient_id"] for d in items], name="patient_id"), name="score")
