"""Cross-fitting of the feature-fusion (FF) arm, and the small helpers the ``bundles/p53_ff`` configs call.

The FF arm (paper: "FF DL model") trains one 2D CNN per DCE-MRI phase (AP, PVP, DP) as a P53 classifier on that
phase's ROI crop, takes each network's penultimate-layer features, and fuses them with the FF head of
:mod:`fusion.ffhead` (per-phase PCA -> 24 features -> LASSO -> LR).

Cross-fitting (:func:`train_ff_arm`), so that no score of a training patient comes from anything that saw him:
for every fold ``k`` of ``splits.json`` the three phase CNNs train on the other folds and export features of
every patient; the FF head is fit on the other folds' features and scores fold ``k`` (out-of-fold). The
full-cohort CNNs (``fold = -1``) and a head fit on all training patients score validation/external/predict
patients. Layout under ``STUDY/dl/ff/<net>/``::

    fold<k>/<phase>/model.pt, features.parquet, done.json     (full/<phase>/... for the full-cohort models)
    features.parquet   patient_id, phase, fold, f0..f{D-1}
    scores.parquet     patient_id, model, fold, split, score
    lasso.json         LASSO-retained feature count per fold and for the full head

Finished work is marked by ``done.json`` written atomically after the checkpoint / feature table, so a killed run
resumes where it stopped.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tools.errors import P53hccError
from tools.io_utils import atomic_write_json, atomic_write_table, params_hash, read_table

PHASES = ("ap", "pvp", "dp")
BUNDLE_DIR = Path(__file__).resolve().parent.parent / "bundles" / "p53_ff"
SECTIONS = ("training", "validation", "external", "predict")
# Config values that change the cached deterministic crops (the cache folder is keyed by them).
CACHE_KEYS = ("spatial_size", "margin", "pixdim", "n4")


# ----------------------------------------------------------------------------------------------- bundle helpers
def _load_datalist(datalist: str | Path | dict) -> tuple[dict, Path]:
    if isinstance(datalist, dict):
        return datalist, Path(".")
    path = Path(datalist)
    if not path.is_file():
        raise P53hccError(f"datalist not found: {path} (run `p53hcc datalist COHORT --out STUDY` first)")
    return json.loads(path.read_text()), path.parent


def phase_datalist(datalist: str | Path | dict, part: str, fold: int, phase: str) -> list[dict]:
    """Items of one phase for one role, as ``{patient_id, image, mask, label, fold, phase}``.

    Args:
        datalist: ``datalist.json`` path (or its loaded dict); relative paths are resolved against its folder.
        part: ``train`` (training patients outside ``fold``; all of them for ``fold=-1``), ``val`` (training
            patients in ``fold``; for ``fold=-1`` the validation cohort, or the training cohort if there is none;
            used for monitoring only, never for checkpoint choice), ``all`` (every section), or a section name.
        fold: held-out fold of ``splits.json``; -1 for the full-cohort model.
        phase: ``ap`` | ``pvp`` | ``dp``.
    """
    if phase not in PHASES:
        raise P53hccError(f"unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
    dl, root = _load_datalist(datalist)
    training = dl.get("training", [])
    if part == "train":
        items = [d for d in training if fold < 0 or int(d.get("fold", -1)) != fold]
    elif part == "val":
        items = [d for d in training if int(d.get("fold", -1)) == fold] if fold >= 0 else (
            dl.get("validation") or training)
    elif part == "all":
        items = [d for s in SECTIONS for d in dl.get(s, [])]
    elif part in dl:
        items = dl[part]
    else:
        raise P53hccError(f"unknown datalist part {part!r}")

    def resolve(p: str) -> str:
        return str(p) if Path(p).is_absolute() else str(root / p)

    return [{"patient_id": str(d["patient_id"]), "image": resolve(d[phase]), "mask": resolve(d[f"{phase}_mask"]),
             "label": int(d.get("label", -1)), "fold": int(d.get("fold", -1)), "phase": phase} for d in items]


def n4_transforms(keys: Sequence[str], enabled: bool) -> list:
    """``[N4BiasFieldCorrectiond(keys)]`` from ``tools.transforms`` when ``enabled``, else ``[]``.

    A function rather than a config expression: MONAI parses any expression containing the word "import" as a
    Python statement before resolving ``@`` references, which fails for an inline ``importlib`` call.
    """
    if not enabled:
        return []
    import importlib

    return [importlib.import_module("tools.transforms").N4BiasFieldCorrectiond(keys=list(keys))]


def class_weights(items: Sequence[dict]) -> torch.Tensor:
    """Inverse-frequency cross-entropy weights ``n / (2 n_c)`` (class-imbalance handling; 1 for an absent class)."""
    y = np.array([int(d["label"]) for d in items if int(d["label"]) >= 0])
    counts = np.bincount(y, minlength=2).astype(float)
    w = np.where(counts > 0, len(y) / (2 * np.maximum(counts, 1)), 1.0)
    return torch.as_tensor(w, dtype=torch.float32)


class AugmentingPrepareBatch:
    """``prepare_batch`` for MONAI engines: moves image/label to the device and applies a batch augmentation.

    On CUDA the image goes channels-last (faster convolutions under bf16 autocast); ``aug`` (e.g.
    ``tools.roi.BatchRandCropFlip``) runs on the device, so cached crops are augmented at GPU speed.
    """

    def __init__(self, aug: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.aug = aug

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        x = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking)
        if x.is_cuda and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.aug is not None:
            x = self.aug(x)
        y = torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking)
        return x, y


def prepare_batch(aug: Callable | None = None) -> AugmentingPrepareBatch:
    """Config-friendly factory of :class:`AugmentingPrepareBatch`."""
    return AugmentingPrepareBatch(aug)


class PatientTableWriter:
    """MONAI/ignite handler that writes one row per patient from an evaluator's output, atomically at the end.

    ``mode="features"``: ``pred`` is the penultimate feature vector (network wrapped by
    ``tools.nets.feature_extractor``, a forward hook) -> columns ``f0..f{D-1}``. ``mode="probability"``: ``pred``
    holds softmax probabilities -> column ``score`` (class 1). Constant columns (``phase``, ``fold``, ``model``)
    come from ``extra``.
    """

    def __init__(self, output_path: str, mode: str = "features", extra: dict | None = None):
        if mode not in ("features", "probability"):
            raise ValueError(f"mode must be 'features' or 'probability', got {mode!r}")
        self.output_path, self.mode, self.extra = output_path, mode, dict(extra or {})
        self._ids: list[str] = []
        self._rows: list[np.ndarray] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self._ids, self._rows = [], []

    def _collect(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(output, dict):  # not decollated
            ids, preds = list(batch["patient_id"]), list(output["pred"])
        else:
            ids, preds = [b["patient_id"] for b in batch], [o["pred"] for o in output]
        for pid, pred in zip(ids, preds):
            self._ids.append(str(pid))
            self._rows.append(torch.as_tensor(pred).detach().float().cpu().numpy().ravel())

    def table(self) -> pd.DataFrame:
        """The collected rows as a tidy frame (``patient_id``, extra columns, values)."""
        mat = np.vstack(self._rows) if self._rows else np.zeros((0, 0))
        if self.mode == "features":
            values = pd.DataFrame(mat, columns=[f"f{j}" for j in range(mat.shape[1])])
        else:
            values = pd.DataFrame({"score": mat[:, -1] if len(mat) else []})
        head = pd.DataFrame({"patient_id": self._ids, **{k: [v] * len(self._ids) for k, v in self.extra.items()}})
        return pd.concat([head, values], axis=1)

    def _write(self, engine) -> None:
        atomic_write_table(self.output_path, self.table())


# ---------------------------------------------------------------------------------------------- cross-fitting
def _run_bundle(configs: Sequence[Path], workflow_type: str, overrides: dict) -> None:
    """Run a bundle config (list = base + overrides) through MONAI's ConfigWorkflow with property checks."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=[str(c) for c in configs], workflow_type=workflow_type,
                        meta_file=str(configs[0].parent / "metadata.json"),
                        logging_file=str(configs[0].parent / "logging.conf"), **overrides)
    wf.initialize()
    missing = wf.check_properties()
    if missing:
        raise P53hccError(f"bundle {configs[-1]} lacks required properties {missing}")
    wf.run()
    wf.finalize()


def train_phase_model(study: Path, model_dir: Path, net: str, phase: str, fold: int, cfg: dict,
                      bundle_dir: Path = BUNDLE_DIR) -> Path:
    """Train one phase CNN (``fold`` held out; -1 = all training patients) and export its features of everyone.

    Returns the model folder (``model.pt``, ``features.parquet``, ``done.json``). Does nothing when
    ``done.json`` is already there.
    """
    done = model_dir / "done.json"
    if done.is_file():
        return model_dir
    t0 = time.time()
    common = {"dataset_dir": str(study), "datalist": str(study / "datalist.json"), "phase": phase, "fold": fold,
              "net": net, "bundle_root": str(model_dir), "ckpt_dir": str(model_dir),
              "output_dir": str(model_dir / "logs"), **cfg}
    if not (model_dir / "train.done").is_file():
        _run_bundle([bundle_dir / "configs" / "train.json"], "train", common)
        atomic_write_json(model_dir / "train.done", {"seconds": time.time() - t0})
    _run_bundle([bundle_dir / "configs" / "inference.json", bundle_dir / "configs" / "export.json"], "infer",
                {**common, "ckpt_path": str(model_dir / "model.pt"),
                 "features_path": str(model_dir / "features.parquet")})
    atomic_write_json(done, {"net": net, "phase": phase, "fold": fold, "seconds": time.time() - t0})
    return model_dir


def _bundle_cfg(epochs: int | None, device: str | None, overrides: dict, study: Path) -> dict:
    cfg = dict(overrides)
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    if device is not None:
        cfg["device"] = str(device)
    key = params_hash({k: cfg.get(k) for k in CACHE_KEYS})
    cfg.setdefault("cache_dir", str(study / "dl" / "ff" / "cache" / key))
    return cfg


def train_ff_arm(cohort_csv: str | Path, out: str | Path, net: str = "resnet101", epochs: int | None = None,
                 device: str | None = None, folds: Sequence[int] | None = None, phases: Sequence[str] = PHASES,
                 head_kwargs: dict | None = None, **overrides) -> Path:
    """Cross-fit the FF arm for one network and write features, out-of-fold scores and LASSO counts.

    Args:
        cohort_csv: cohort manifest (used to write ``datalist.json``/``splits.json`` if the study lacks them).
        out: study folder.
        net: one of the six networks (``tools.nets.NETS``).
        epochs: training epochs per phase model (default: the bundle's).
        device: ``cpu`` / ``cuda`` (default: the bundle's, cuda when available).
        folds: folds to cross-fit (default all of ``splits.json``); the full-cohort models always train.
        phases: phases fused (the paper: AP, PVP, DP).
        head_kwargs: FF head parameters (``n_components``, ``cv``, ...), see :class:`fusion.ffhead.FFHead`.
        overrides: bundle config overrides (``spatial_size``, ``batch_size``, ``amp``, ``n4``, ...).

    Returns:
        The arm folder ``out/dl/ff/<net>``.
    """
    from tqdm.auto import tqdm

    from fusion.ffhead import crossfit_ff_head
    from tools.cohort import load_splits, write_datalist
    from tools.nets import check_net_name

    net, study = check_net_name(net), Path(out)
    if not (study / "datalist.json").is_file() or not (study / "splits.json").is_file():
        write_datalist(cohort_csv, study)
    splits = load_splits(study)
    folds = list(range(int(splits["n_folds"]))) if folds is None else [int(k) for k in folds]
    arm = study / "dl" / "ff" / net
    cfg = _bundle_cfg(epochs, device, overrides, study)
    jobs = [(k, p) for k in [*folds, -1] for p in phases]
    for k, phase in tqdm(jobs, desc=f"FF {net}", unit="model"):
        train_phase_model(study, arm / (f"fold{k}" if k >= 0 else "full") / phase, net, phase, k, cfg)

    features = pd.concat([read_table(arm / (f"fold{k}" if k >= 0 else "full") / p / "features.parquet")
                          for k, p in jobs], ignore_index=True)
    features = features[["patient_id", "phase", "fold", *[c for c in features.columns if c.startswith("f")
                                                           and c[1:].isdigit()]]]
    atomic_write_table(arm / "features.parquet", features)

    dl = json.loads((study / "datalist.json").read_text())
    split_of = {str(d["patient_id"]): d.get("split", s) for s in SECTIONS for d in dl.get(s, [])}
    labels = pd.Series({str(d["patient_id"]): int(d["label"]) for d in dl.get("training", [])})
    fold_of = {str(p): int(k) for p, k in splits["fold_of"].items()}
    others = [p for s in SECTIONS[1:] for p in (str(d["patient_id"]) for d in dl.get(s, []))]
    scores, n_selected = crossfit_ff_head(features, labels, fold_of, score_ids=others, folds=folds,
                                          phases=tuple(phases), **(head_kwargs or {}))
    scores["model"] = f"ff_{net}"
    scores["split"] = scores["patient_id"].map(split_of).replace({"training": "train"})
    atomic_write_table(arm / "scores.parquet", scores[["patient_id", "model", "fold", "split", "score"]])
    atomic_write_json(arm / "lasso.json", {"net": net, "n_selected": n_selected,
                                           "head": {"n_components": 8, **(head_kwargs or {})}})
    return arm
