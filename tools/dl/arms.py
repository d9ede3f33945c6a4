"""The two DL arms as implementations of one small interface used by the cross-fitting skeleton.

* **MC** (multi-channel, paper "MC3"): AP|PVP|DP crops stacked as three channels, one CNN per fold; each fold
  model scores its held-out patients, the full-cohort model scores everybody else.
* **FF** (feature fusion, paper "DL"): one one-channel CNN per phase and fold; each phase model exports the
  penultimate features of every patient, and the FF head (:mod:`p53hcc.fusion.models.ffhead`: per-phase PCA -> LASSO ->
  LR) is cross-fitted on them: the head of fold k is fit on the other folds' patients, using the features of the
  CNNs that never saw fold k.

An arm defines its training *units* (MC: one network per fold; FF: one per phase), its crops, what a trained unit
leaves behind (MC: scores; FF: features) and how the units become the arm's scores. For nested cross-fitting
(:mod:`p53hcc.fusion.models.nested`) the arm also trains *pair* units: one per pair of folds {k, m}, fitted on the
training patients outside both, which give the inner scores that the choice of network and the combined model of
outer fold k (or m) are fitted on. Layout under ``STUDY/dl/<arm>/<net>/``::

    fold<k>/config.json, model.pt, history.csv, scores.parquet, done.json        (MC)
    fold<k>/config.json, <phase>/model.pt, history.csv, features.parquet, done.json   (FF)
    full/...           the full-cohort models (fold -1); FF also full/head.joblib
    pair<k>-<m>/...    the inner models of the fold pair {k, m}: as a fold, without model.pt (only their
                       scores or features are needed; the weights of 10 more networks per unit are not kept)
    scores.parquet     patient_id, model, fold, split, score   (out-of-fold for training patients)
    inner_scores.parquet   outer, patient_id, score   (pair models; written when they were trained)
    features.parquet, lasso.json   (FF)
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from p53hcc.fusion.models.nested import fold_map, fold_pairs, pair_inner_scores
from p53hcc.tools.dl.bundle import COMPONENT_KEYS, bundle_dir, run_workflow
from p53hcc.tools.dl.engine import cached_crops, penultimate_features, predict_scores, resolve_device
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, atomic_write_json, atomic_write_table, read_table
from p53hcc.tools.schema import DATALIST_SECTIONS, PHASES, SCORE_COLUMNS

#: ``Unit.fold`` of a pair unit (it belongs to no single fold).
PAIR = -2


def fold_dir(arm_dir: Path, fold: int, pair: tuple[int, int] | None = None) -> Path:
    """``fold<k>`` for a fold model, ``full`` for the full-cohort model (fold -1), ``pair<k>-<m>`` for a pair."""
    if pair is not None:
        return arm_dir / f"pair{pair[0]}-{pair[1]}"
    return arm_dir / (f"fold{fold}" if fold >= 0 else "full")


@dataclass(frozen=True)
class Unit:
    """One network to train: its fold (-1 = full cohort, ``PAIR`` = the pair of folds ``pair``), its phase (FF)
    or None (MC), and where it lives."""

    fold: int
    unit: str | None
    dir: Path
    pair: tuple[int, int] | None = None

    @property
    def held(self) -> tuple[int, ...]:
        """The training folds this unit never trains on (and scores): none for the full-cohort unit."""
        return self.pair if self.pair is not None else ((self.fold,) if self.fold >= 0 else ())


class Arm:
    """Interface of a DL arm (see the module docstring); :class:`MCArm` and :class:`FFArm` implement it."""

    name: str = ""
    units: tuple[str | None, ...] = (None,)

    def unit_dir(self, arm_dir: Path, fold: int, unit: str | None, pair: tuple[int, int] | None = None) -> Path:
        """Where the network of ``(fold or pair, unit)`` and its outputs live."""
        folder = fold_dir(arm_dir, fold, pair)
        return folder if unit is None else folder / unit

    def crops(self, study: Path, items: list[dict], params: dict, unit: str | None,
              masks: bool = False) -> torch.Tensor:
        """Deterministic 2D crops ``[N, C, S, S]`` of ``items`` (multi-phase datalist items) for ``unit``; with
        ``masks`` their tumour masks instead, cut and resized like them (for displays, cached apart)."""
        raise NotImplementedError

    def mask_crops(self, study: Path, items: list[dict], params: dict, unit: str | None) -> torch.Tensor:
        """The tumour masks ``[N, C, S, S]`` of :meth:`crops`, cut and resized like them (for displays)."""
        return self.crops(study, items, params, unit, masks=True)

    def save_outputs(self, u: Unit, net: torch.nn.Module, x: torch.Tensor, items: list[dict], score_ids: list[str],
                     params: dict, device) -> None:
        """What a trained unit leaves for :meth:`collect` (its scores or features)."""
        raise NotImplementedError

    def train_with_bundle(self, study: Path, u: Unit, net: str, params: dict, device, score_parts: list[str]
                          ) -> None:
        """Train the unit with the bundle's own ``ConfigWorkflow`` and write the same outputs as the fast engine."""
        raise NotImplementedError

    def collect(self, study: Path, arm_dir: Path, net: str, splits: dict, items: list[dict], **options
                ) -> pd.DataFrame:
        """The arm's tidy scores (``SCORE_COLUMNS``) from its finished units."""
        raise NotImplementedError

    def collect_inner(self, arm_dir: Path, splits: dict, items: list[dict], **options) -> pd.DataFrame:
        """The arm's inner scores (``outer, patient_id, score``) from its finished pair units."""
        raise NotImplementedError

    def _bundle_overrides(self, study: Path, u: Unit, net: str, params: dict, device) -> dict:
        keys = ("epochs", "batch_size", "learning_rate", "weight_decay", "spatial_size", "margin", "pixdim", "n4",
                "precision", "seed", "min_scale", "patch_size", "warmup_epochs", *COMPONENT_KEYS)
        over = {"bundle_root": str(bundle_dir(self.name)), "dataset_dir": str(study),
                "datalist": str(study / "datalist.json"), "fold": int(u.fold), "net": net,
                "device": str(resolve_device(device)), "ckpt_dir": str(u.dir), "output_dir": str(u.dir / "logs"),
                "cache_dir": str(study / "dl" / "cache" / f"bundle_{self.name}"), **{k: params[k] for k in keys}}
        if u.fold < 0:  # the full-cohort model has no held-out patients: monitor once, at the end, on training
            over["val_interval"] = max(1, int(params["epochs"]))
        return over


def _split_of(items: list[dict]) -> dict[str, str]:
    return {d["patient_id"]: d.get("split", "train") for d in items}


class MCArm(Arm):
    """Multi-channel arm: one three-channel CNN per fold; each fold model scores its held-out patients."""

    name, units = "mc", (None,)

    def crops(self, study, items, params, unit, masks=False):
        return cached_crops(items, study, params, "mc", area="dl", prefix="p53_mc",
                            desc="ROI mask crops" if masks else "2D ROI crops", masks=masks)

    def save_outputs(self, u, net, x, items, score_ids, params, device):
        pos = {d["patient_id"]: i for i, d in enumerate(items)}
        idx = torch.as_tensor([pos[p] for p in score_ids], dtype=torch.long)
        scores = predict_scores(net, x[idx], device, precision=params["precision"]) if len(idx) else np.zeros(0)
        atomic_write_table(u.dir / "scores.parquet", pd.DataFrame({"patient_id": score_ids, "score": scores}))

    def train_with_bundle(self, study, u, net, params, device, score_parts):
        configs = bundle_dir("mc") / "configs"
        over = self._bundle_overrides(study, u, net, params, device)
        run_workflow([configs / "train.json"], "train", over)
        parts = []
        for part in score_parts:
            table = u.dir / f"scores_{part}.parquet"
            run_workflow([configs / "inference.json"], "infer",
                         {**over, "infer_part": part, "predictions_path": str(table), "ckpt_path": str(u.dir / "model.pt")})
            parts.append(read_table(table))
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["patient_id", "score"])
        atomic_write_table(u.dir / "scores.parquet", table[["patient_id", "score"]])

    def collect(self, study, arm_dir, net, splits, items, **options):
        folds = [int(f["fold"]) for f in splits["folds"]] + [-1]
        parts = [read_table(self.unit_dir(arm_dir, k, None) / "scores.parquet").assign(fold=k) for k in folds]
        scores = pd.concat(parts, ignore_index=True).astype({"patient_id": str})
        scores["model"] = f"mc_{net}"
        scores["split"] = scores["patient_id"].map(_split_of(items))
        return scores[SCORE_COLUMNS]

    def collect_inner(self, arm_dir, splits, items, **options):
        folds = fold_map(splits)
        return pd.concat([pair_inner_scores(pair, read_table(self.unit_dir(arm_dir, PAIR, None, pair) / "scores.parquet"),
                                            folds) for pair in fold_pairs(splits)], ignore_index=True)


#: LASSO-retained FF features per network in the paper's Results (of 3 x 8 = 24 PCA features).
PAPER_N_SELECTED = {"resnet18": 18, "resnet34": 14, "resnet50": 11, "resnet101": 12, "resnet152": 3,
                    "densenet121": 6}


def phase_items(items: list[dict], phase: str) -> list[dict]:
    """Multi-phase items -> one phase's ``{patient_id, image, mask, label, fold, split, phase}`` items."""
    keep = ("patient_id", "label", "fold", "split")
    return [{**{k: d[k] for k in keep if k in d}, "image": d[phase], "mask": d[f"{phase}_mask"], "phase": phase}
            for d in items]


def features_frame(ids: Sequence[str], phase: str, fold: int, feats: np.ndarray) -> pd.DataFrame:
    """Tidy feature table ``patient_id, phase, fold, f0..f{D-1}`` of one phase network."""
    head = pd.DataFrame({"patient_id": list(ids), "phase": phase, "fold": int(fold)})
    return pd.concat([head, pd.DataFrame(feats, columns=[f"f{j}" for j in range(feats.shape[1])])], axis=1)


class FFArm(Arm):
    """Feature-fusion arm: one one-channel CNN per phase and fold, penultimate features, cross-fitted FF head."""

    name, units = "ff", PHASES

    def crops(self, study, items, params, unit, masks=False):
        return cached_crops(phase_items(items, unit), study, params, "ff", area="dl/ff", prefix=unit,
                            desc=f"{unit} ROI {'mask ' if masks else ''}crops", masks=masks)

    def save_outputs(self, u, net, x, items, score_ids, params, device):
        feats = penultimate_features(net, x, device, precision=params["precision"])
        atomic_write_table(u.dir / "features.parquet",
                           features_frame([d["patient_id"] for d in items], u.unit, u.fold, feats))

    def train_with_bundle(self, study, u, net, params, device, score_parts):
        configs = bundle_dir("ff") / "configs"
        over = {**self._bundle_overrides(study, u, net, params, device), "phase": u.unit}
        run_workflow([configs / "train.json"], "train", over)
        run_workflow([configs / "inference.json", configs / "export.json"], "infer",
                     {**over, "ckpt_path": str(u.dir / "model.pt"), "features_path": str(u.dir / "features.parquet")})

    def collect(self, study, arm_dir, net, splits, items, head_kwargs: dict | None = None,
                batches: pd.Series | None = None, **options):
        return fit_ff_head(arm_dir, net, splits, items, head_kwargs, batches=batches)

    def collect_inner(self, arm_dir, splits, items, head_kwargs: dict | None = None,
                      batches: pd.Series | None = None, **options):
        """For each fold pair, the FF head fitted on the pair networks' features of the training patients outside
        both folds scores the two folds' patients (as :func:`fit_ff_head` does for one fold)."""
        from p53hcc.fusion.models.ffhead import make_ff_head, wide_features
        from p53hcc.fusion.models.harmonise import with_batch

        labels = pd.Series({str(d["patient_id"]): int(d["label"]) for d in items if d.get("split") == "train"})
        fold_of = fold_map(splits)
        parts = []
        for pair in fold_pairs(splits):
            feats = pd.concat([read_table(self.unit_dir(arm_dir, PAIR, p, pair) / "features.parquet")
                               for p in PHASES], ignore_index=True)
            wide = wide_features(feats.assign(patient_id=feats["patient_id"].astype(str)), PHASES)
            wide = wide if batches is None else with_batch(wide, batches)
            fit_ids = [p for p in labels.index if fold_of[p] not in pair]
            held = [p for p in labels.index if fold_of[p] in pair]
            head = make_ff_head(phases=tuple(PHASES), **(head_kwargs or {})).fit(
                wide.loc[fit_ids], labels.loc[fit_ids].to_numpy())
            parts.append(pair_inner_scores(pair, pd.DataFrame({"patient_id": held,
                                                               "score": head.predict_proba(wide.loc[held])[:, 1]}),
                                           fold_of))
        return pd.concat(parts, ignore_index=True)


def save_full_head(head, path: Path, wide: pd.DataFrame | None = None, expected: np.ndarray | None = None) -> Path:
    """Save the fitted full-cohort FF head (the one that scored validation/external patients) with joblib.

    Frozen scoring of new patients applies exactly this object, so it reproduces the study's fold -1 FF scores;
    refitting would not be guaranteed to (liblinear's inner CV is not seeded by the head). When ``wide`` (fold -1
    features of the scored patients) and ``expected`` (their scores) are given, the head is checked to reproduce
    them before it is written.
    """
    import joblib

    if wide is not None and len(wide) and not np.allclose(head.predict_proba(wide)[:, 1], expected, rtol=1e-9):
        raise P53hccError(f"{path}: the recorded FF head does not reproduce the full-cohort scores")
    with atomic_path(path) as tmp:
        joblib.dump(head, tmp)
    return path


def fit_ff_head(arm_dir: Path, net: str, splits: dict, items: list[dict], head_kwargs: dict | None = None,
                phases: Sequence[str] = PHASES, batches: pd.Series | None = None) -> pd.DataFrame:
    """Collect every phase model's features, cross-fit the FF head, write features/scores/lasso tables.

    ``batches`` (scanner per patient) feeds a harmonising head (``head_kwargs={"harmonise": "combat"}``)."""
    from p53hcc.fusion.models.ffhead import crossfit_ff_head, feature_columns, make_ff_head, wide_features
    from p53hcc.fusion.models.harmonise import with_batch

    folds = [int(f["fold"]) for f in splits["folds"]]
    features = pd.concat([read_table(fold_dir(arm_dir, k) / p / "features.parquet")
                          for k in [*folds, -1] for p in phases], ignore_index=True)
    features = features[["patient_id", "phase", "fold", *feature_columns(features)]]
    atomic_write_table(arm_dir / "features.parquet", features)
    split_of = _split_of(items)
    labels = pd.Series({d["patient_id"]: int(d["label"]) for d in items if d.get("split") == "train"})
    fold_of = fold_map(splits)
    others = [d["patient_id"] for d in items if d.get("split") != "train"]
    heads: list = []

    def recording_factory(**kwargs):  # keeps every fitted head; the last one is the full-cohort head (fold -1)
        heads.append(make_ff_head(**kwargs))
        return heads[-1]

    scores, n_selected = crossfit_ff_head(features, labels, fold_of, score_ids=others, folds=folds,
                                          phases=tuple(phases), head_factory=recording_factory, batches=batches,
                                          **(head_kwargs or {}))
    full_scores = scores[scores["fold"] == -1]
    full_wide = wide_features(features[features["fold"] == -1], phases)
    full_wide = full_wide if batches is None else with_batch(full_wide, batches)
    save_full_head(heads[-1], fold_dir(arm_dir, -1) / "head.joblib", full_wide.loc[full_scores["patient_id"]],
                   full_scores["score"].to_numpy())
    scores["model"] = f"ff_{net}"
    scores["split"] = scores["patient_id"].map(split_of)
    atomic_write_json(arm_dir / "lasso.json", {"net": net, "n_selected": n_selected,
                                               "paper_n_selected": PAPER_N_SELECTED.get(net),
                                               "head": {"n_components": 8, **(head_kwargs or {})}})
    return scores[SCORE_COLUMNS]


ARMS: dict[str, Arm] = {"mc": MCArm(), "ff": FFArm()}


def get_arm(name: str) -> Arm:
    """The arm implementation of ``mc`` or ``ff``."""
    from p53hcc.tools.dl.bundle import check_arm

    return ARMS[check_arm(name)]


def read_config(folder: Path) -> dict:
    """Training parameters of a trained fold folder (``config.json``), as written by the cross-fitting."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise P53hccError(f"{path} not found: the trained model folder lacks its training parameters")
    return json.loads(path.read_text())


def load_unit_network(folder: Path, unit: str | None, net: str) -> torch.nn.Module:
    """The trained network of one unit of a fold folder (``model.pt``, or ``<phase>/model.pt`` for FF)."""
    from p53hcc.tools.dl.nets import load_net

    path = Path(folder) / "model.pt" if unit is None else Path(folder) / unit / "model.pt"
    if not path.is_file():
        raise P53hccError(f"{path} not found: the model folder lacks its {unit or 'network'} weights")
    return load_net(path, net)


def score_sections(datalist: dict) -> list[str]:
    """Non-training datalist sections that hold patients (what the full-cohort model scores)."""
    return [s for s in DATALIST_SECTIONS.values() if s != "training" and datalist.get(s)]
