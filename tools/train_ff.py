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

import contextlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tools.errors import P53hccError
from tools.io_utils import atomic_write_json, atomic_write_table, params_hash, read_table
from tools.train import resolve_device

PHASES = ("ap", "pvp", "dp")
BUNDLE_DIR = Path(__file__).resolve().parent.parent / "bundles" / "p53_ff"
SECTIONS = ("training", "validation", "external", "predict")
# LASSO-retained FF features per network in the paper's Results (of 3 x 8 = 24 PCA features).
PAPER_N_SELECTED = {"resnet18": 18, "resnet34": 14, "resnet50": 11, "resnet101": 12, "resnet152": 3,
                    "densenet121": 6}


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
def _params(epochs: int | None, overrides: dict) -> dict:
    from tools.train import _params as mc_params

    return mc_params(epochs, overrides)  # same defaults and the same raw/preprocessed source rule as MC


def _model_dir(arm: Path, fold: int, phase: str) -> Path:
    return arm / (f"fold{fold}" if fold >= 0 else "full") / phase


def _is_done(model_dir: Path, tag: str) -> bool:
    marker = model_dir / "done.json"
    return marker.is_file() and json.loads(marker.read_text()).get("params") == tag


def phase_crops(study: Path, items: list[dict], phase: str, params: dict,
                bundle_dir: Path = BUNDLE_DIR) -> torch.Tensor:
    """Deterministic 2D crops ``[N, 1, S, S]`` of one phase (the bundle's own transforms), cached per patient.

    The bundle's ``deterministic_transforms`` (load -> N4 -> 1 mm -> z-score -> largest slice -> bbox+10 ->
    resize) run once per patient-phase through a ``PersistentDataset``; the stacked tensor is kept in
    ``study/dl/ff/slices/`` keyed by phase, crop parameters and patients.
    """
    from tools.train import cached_crops

    return cached_crops(items, study, params, bundle_dir, area="dl/ff", prefix=phase, desc=f"{phase} ROI crops")


def penultimate_features(net: torch.nn.Module, x: torch.Tensor, device=None, batch_size: int = 64,
                         amp: bool = True) -> np.ndarray:
    """Penultimate-layer features ``[N, D]`` of ``x`` via a forward hook (``tools.nets.feature_extractor``)."""
    from tools.nets import feature_extractor

    dev = resolve_device(device)
    # channels_last like training (fit_fast), so a reloaded checkpoint runs the same conv kernels and gives
    # bit-identical features (a contiguous-format copy differs by ~1e-6, enough to move small FF scores)
    extractor = feature_extractor(net.to(dev, memory_format=torch.channels_last).eval())
    out = []
    try:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                                    enabled=amp and dev.type == "cuda"):
            for i in range(0, len(x), batch_size):
                xb = x[i:i + batch_size].to(dev).contiguous(memory_format=torch.channels_last)
                out.append(extractor(xb).float().cpu())
    finally:
        extractor.remove()
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def _features_frame(ids: Sequence[str], phase: str, fold: int, feats: np.ndarray) -> pd.DataFrame:
    head = pd.DataFrame({"patient_id": list(ids), "phase": phase, "fold": int(fold)})
    return pd.concat([head, pd.DataFrame(feats, columns=[f"f{j}" for j in range(feats.shape[1])])], axis=1)


def _train_phase_fast(x: torch.Tensor, items: list[dict], fold: int, phase: str, net: str, params: dict,
                      device, model_dir: Path, tag: str) -> None:
    """Train one phase CNN with ``tools.train.fit_fast`` on cached crops; save model, features, marker."""
    from tools.io_utils import atomic_path
    from tools.train import fit_fast

    train = [i for i, d in enumerate(items) if d["split"] == "train" and (fold < 0 or d["fold"] != fold)]
    held = [i for i, d in enumerate(items) if d["split"] == "train" and d["fold"] == fold]
    y = torch.as_tensor([int(d["label"]) for d in items])
    val = (x[held], y[held]) if held else (None, None)
    model, history = fit_fast(x[train], y[train], net, params, device, *val, desc=f"{net} {phase} fold {fold}")
    feats = penultimate_features(model, x, device, amp=bool(params["amp"]))
    with atomic_path(model_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    atomic_write_table(model_dir / "history.csv", history)
    atomic_write_table(model_dir / "features.parquet",
                       _features_frame([d["patient_id"] for d in items], phase, fold, feats))
    atomic_write_json(model_dir / "done.json", {"params": tag, "net": net, "phase": phase, "fold": fold})


def _run_bundle(configs: Sequence[Path], workflow_type: str, overrides: dict) -> None:
    """Run a bundle config through MONAI's ConfigWorkflow (shared with the MC arm: ``tools.train.run_bundle``)."""
    from tools.train import run_bundle

    run_bundle(list(configs), workflow_type, overrides)


def _train_phase_bundle(study: Path, model_dir: Path, net: str, phase: str, fold: int, params: dict, device,
                        tag: str, bundle_dir: Path = BUNDLE_DIR) -> None:
    """Train one phase CNN with the bundle's ``train.json``, then export features of everyone (``export.json``)."""
    cfg = {k: params[k] for k in ("epochs", "batch_size", "learning_rate", "weight_decay", "spatial_size",
                                  "margin", "pixdim", "n4", "amp", "seed")}
    common = {"dataset_dir": str(study), "datalist": str(study / "datalist.json"), "phase": phase, "fold": fold,
              "net": net, "bundle_root": str(model_dir), "ckpt_dir": str(model_dir),
              "output_dir": str(model_dir / "logs"), "cache_dir": str(study / "dl" / "ff" / "cache" / "bundle"),
              **cfg, **({"device": str(device)} if device else {})}
    _run_bundle([bundle_dir / "configs" / "train.json"], "train", common)
    _run_bundle([bundle_dir / "configs" / "inference.json", bundle_dir / "configs" / "export.json"], "infer",
                {**common, "ckpt_path": str(model_dir / "model.pt"),
                 "features_path": str(model_dir / "features.parquet")})
    atomic_write_json(model_dir / "done.json", {"params": tag, "net": net, "phase": phase, "fold": fold})


def save_full_head(head, path: Path, wide: pd.DataFrame | None = None, expected: np.ndarray | None = None) -> Path:
    """Save the fitted full-cohort FF head (the one that scored validation/external patients) with joblib.

    Frozen scoring of new patients (:func:`predict_frozen`) applies exactly this object, so it reproduces the
    study's fold -1 FF scores; refitting would not be guaranteed to (liblinear's inner CV is not seeded by the
    head). When ``wide`` (fold -1 features of the scored patients) and ``expected`` (their scores) are given,
    the head is checked to reproduce them before it is written.
    """
    import joblib

    from tools.io_utils import atomic_path

    if wide is not None and len(wide) and not np.allclose(head.predict_proba(wide)[:, 1], expected, rtol=1e-9):
        raise P53hccError(f"{path}: the recorded FF head does not reproduce the full-cohort scores")
    with atomic_path(path) as tmp:
        joblib.dump(head, tmp)
    return path


def fit_ff_head(study: Path, arm: Path, net: str, splits: dict, phases: Sequence[str] = PHASES,
                head_kwargs: dict | None = None) -> pd.DataFrame:
    """Collect every phase model's features, cross-fit the FF head, write features/scores/lasso tables."""
    from fusion.ffhead import crossfit_ff_head, feature_columns, make_ff_head, wide_features

    folds = [int(f["fold"]) for f in splits["folds"]]
    features = pd.concat([read_table(_model_dir(arm, k, p) / "features.parquet")
                          for k in [*folds, -1] for p in phases], ignore_index=True)
    features = features[["patient_id", "phase", "fold", *feature_columns(features)]]
    atomic_write_table(arm / "features.parquet", features)
    dl = json.loads((study / "datalist.json").read_text())
    split_of = {str(d["patient_id"]): d.get("split", "train") for s in SECTIONS for d in dl.get(s, [])}
    labels = pd.Series({str(d["patient_id"]): int(d["label"]) for d in dl.get("training", [])})
    fold_of = {str(p): int(k) for p, k in splits["fold_of"].items()}
    others = [str(d["patient_id"]) for s in SECTIONS[1:] for d in dl.get(s, [])]
    heads: list = []

    def recording_factory(**kwargs):  # keeps every fitted head; the last one is the full-cohort head (fold -1)
        heads.append(make_ff_head(**kwargs))
        return heads[-1]

    scores, n_selected = crossfit_ff_head(features, labels, fold_of, score_ids=others, folds=folds,
                                          phases=tuple(phases), head_factory=recording_factory,
                                          **(head_kwargs or {}))
    full_scores = scores[scores["fold"] == -1]
    save_full_head(heads[-1], arm / "full" / "head.joblib",
                   wide_features(features[features["fold"] == -1], phases).loc[full_scores["patient_id"]],
                   full_scores["score"].to_numpy())
    scores["model"] = f"ff_{net}"
    scores["split"] = scores["patient_id"].map(split_of)
    scores = scores[["patient_id", "model", "fold", "split", "score"]]
    atomic_write_table(arm / "scores.parquet", scores)
    atomic_write_json(arm / "lasso.json", {"net": net, "n_selected": n_selected,
                                           "head": {"n_components": 8, **(head_kwargs or {})}})
    return scores


def train_ff_arm(cohort_csv: str | Path, out: str | Path, net: str = "resnet101", epochs: int | None = None,
                 device: str | None = None, folds: Sequence[int] | None = None, phases: Sequence[str] = PHASES,
                 engine: str = "fast", head_kwargs: dict | None = None, workers: int = 1, **overrides) -> Path:
    """Cross-fit the FF arm for one network and write features, out-of-fold scores and LASSO counts.

    Args:
        cohort_csv: cohort manifest (used to write ``datalist.json``/``splits.json`` if the study lacks them).
        out: study folder.
        net: one of the six networks (``tools.nets.NETS``).
        epochs: training epochs per phase model (default ``tools.train.DEFAULTS``: 100).
        device: ``cpu`` / ``cuda`` (default: cuda when available).
        folds: train only these folds (-1 = full-cohort models); the head and scores are written once every
            fold and the full models are done.
        phases: phases fused (the paper: AP, PVP, DP).
        engine: ``fast`` (cached crops, on-device training via ``tools.train.fit_fast``) or ``bundle`` (each
            phase model through the bundle's ConfigWorkflow: ``train.json`` then ``export.json``).
        head_kwargs: FF head parameters (``n_components``, ``cv``, ...), see :class:`fusion.ffhead.FFHead`.
        workers: phase models trained concurrently (fast engine; threads, one CUDA stream each), for networks
            too small to fill the GPU alone.
        overrides: training parameters (``spatial_size``, ``batch_size``, ``amp``, ``n4``, ``learning_rate``...).

    Returns:
        The arm folder ``out/dl/ff/<net>``.
    """
    from tqdm.auto import tqdm

    from tools.cohort import load_splits, write_datalist
    from tools.nets import check_net_name
    from tools.train import source_items

    if engine not in ("fast", "bundle"):
        raise P53hccError(f"unknown engine {engine!r}; choose fast or bundle")
    net, study = check_net_name(net), Path(out)
    if not (study / "datalist.json").is_file() or not (study / "splits.json").is_file():
        write_datalist(cohort_csv, study)
    splits = load_splits(study)
    params = _params(epochs, overrides)
    tag = params_hash({**params, "net": net, "engine": engine, "splits": splits})
    arm = study / "dl" / "ff" / net
    plan = [(k, p) for k in [*(int(f["fold"]) for f in splits["folds"]), -1] for p in phases]
    todo = [(k, p) for k, p in plan if folds is None or k in {int(f) for f in folds}]
    pending = [(k, p) for k, p in todo if not _is_done(_model_dir(arm, k, p), tag)]
    bar = tqdm(total=len(todo), initial=len(todo) - len(pending), desc=f"ff_{net} phase models", unit="model")
    if engine == "bundle":
        for k, phase in pending:
            _train_phase_bundle(study, _model_dir(arm, k, phase), net, phase, k, params, device, tag)
            bar.update()
    elif pending:
        train_ids = {str(d["patient_id"]) for d in json.loads((study / "datalist.json").read_text())["training"]}
        items, crops = {}, {}
        for phase in dict.fromkeys(p for _, p in pending):  # deterministic crops first, once per phase
            items[phase] = source_items(phase_datalist(study / "datalist.json", "all", -1, phase), study, params)
            for d in items[phase]:
                d["split"] = "train" if d["patient_id"] in train_ids else "other"
            crops[phase] = phase_crops(study, items[phase], phase, params)

        def run_one(job: tuple[int, str]) -> None:
            k, phase = job
            dev = resolve_device(device)
            stream = (torch.cuda.stream(torch.cuda.Stream(dev)) if dev.type == "cuda" and workers > 1
                      else contextlib.nullcontext())
            with stream:
                _train_phase_fast(crops[phase], items[phase], k, phase, net, params, device,
                                  _model_dir(arm, k, phase), tag)

        if workers > 1 and len(pending) > 1:
            with ThreadPoolExecutor(max_workers=int(workers)) as pool:
                for _ in pool.map(run_one, pending):
                    bar.update()
        else:
            for job in pending:
                run_one(job)
                bar.update()
    bar.close()
    if not all(_is_done(_model_dir(arm, k, p), tag) for k, p in plan):
        return arm
    # training parameters of the full-cohort models, read by tools.gradcam (per-phase Grad-CAM of full/<phase>)
    atomic_write_json(arm / "full" / "config.json", {**params, "net": net, "engine": engine})
    fit_ff_head(study, arm, net, splits, phases, head_kwargs)
    return arm


def lasso_table(out: str | Path, nets: Sequence[str] | None = None) -> pd.DataFrame:
    """LASSO-retained FF feature counts per network (full head and fold range) next to the paper's numbers.

    Returns:
        ``net, n_selected_full, n_selected_fold_min, n_selected_fold_max, paper_n_selected`` for every network
        whose ``dl/ff/<net>/lasso.json`` exists.
    """
    rows = []
    for path in sorted((Path(out) / "dl" / "ff").glob("*/lasso.json")):
        rec = json.loads(path.read_text())
        if nets is not None and rec["net"] not in nets:
            continue
        folds = [v for k, v in rec["n_selected"].items() if k != "full"]
        rows.append({"net": rec["net"], "n_selected_full": rec["n_selected"].get("full"),
                     "n_selected_fold_min": min(folds, default=None), "n_selected_fold_max": max(folds, default=None),
                     "paper_n_selected": PAPER_N_SELECTED.get(rec["net"])})
    return pd.DataFrame(rows, columns=["net", "n_selected_full", "n_selected_fold_min", "n_selected_fold_max",
                                       "paper_n_selected"])


# ------------------------------------------------------------------------------------------- frozen model scoring
def frozen_phase_crops(weights: Path, cohort_csv: str | Path, work: str | Path, phase: str
                       ) -> tuple[list[str], torch.Tensor, dict]:
    """ROI crops ``[N, 1, S, S]`` of one phase for the patients of ``cohort_csv``, made as training made them.

    The parameters (ROI size, margin, spacing, N4, source) come from the frozen ``full/config.json``; with
    ``source="preprocessed"`` the crops are cut from ``work/preprocessed`` (``tools.preprocess`` run with the frozen
    preset, as ``tools.predict.predict_cohort`` does). Returns ``(patient_ids, crops, params)``.
    """
    from tools.train import DEFAULTS, cohort_items, source_items

    cfg = weights / "config.json"
    if not cfg.is_file():
        raise P53hccError(f"{cfg} not found: the frozen FF model lacks its training parameters")
    params = {**DEFAULTS, **json.loads(cfg.read_text())}
    items = [{"patient_id": d["patient_id"], "image": d[phase], "mask": d[f"{phase}_mask"], "label": d["label"],
              "fold": -1, "phase": phase} for d in cohort_items(cohort_csv)]
    items = source_items(items, work, params)
    return [d["patient_id"] for d in items], phase_crops(Path(work), items, phase, params), params


def predict_frozen(weights: str | Path, cohort_csv: str | Path, work: str | Path, net: str = "resnet34",
                   device: str | None = None) -> pd.Series:
    """FF score (P(P53 mutated)) of every patient of ``cohort_csv`` from a frozen full-cohort FF folder.

    ``weights`` is ``dl/ff/<net>/full`` (copied into ``model/`` by ``tools.predict.freeze_model``):
    ``<phase>/model.pt`` (the full-cohort phase CNNs), ``config.json`` (their training parameters) and
    ``head.joblib`` (the FF head fit on all training patients). Each phase's crops go through its CNN to the
    penultimate features, and the head (per-phase PCA -> LASSO -> LR) turns them into the score - the same
    computation that gave validation patients their FF score in the study.

    Returns:
        Series ``score`` indexed by ``patient_id``.
    """
    import joblib

    from fusion.ffhead import wide_features
    from tools.nets import load_net

    weights = Path(weights)
    head_path = weights / "head.joblib"
    if not head_path.is_file():
        raise P53hccError(f"{head_path} not found: the FF arm was trained before the head was saved; "
                          "retrain it (`p53hcc train --arm ff`) or rerun the study")
    head = joblib.load(head_path)
    parts, ids = [], None
    for phase in head.phases:
        model_path = weights / phase / "model.pt"
        if not model_path.is_file():
            raise P53hccError(f"{model_path} not found: the frozen FF model lacks its {phase} network")
        phase_ids, x, params = frozen_phase_crops(weights, cohort_csv, work, phase)
        ids = phase_ids
        feats = penultimate_features(load_net(model_path, net), x, device, amp=bool(params["amp"]))
        parts.append(_features_frame(phase_ids, phase, -1, feats))
    wide = wide_features(pd.concat(parts, ignore_index=True), head.phases).loc[ids]
    return pd.Series(head.predict_proba(wide)[:, 1], index=pd.Index(ids, name="patient_id"), name="score")
