"""Cross-fitting of a DL arm: one network per fold of ``splits.json`` (and unit) plus the full-cohort networks.

One skeleton for both arms (:mod:`p53hcc.tools.dl.arms`): the fold plan, resume markers, progress, concurrent
units (threads, one CUDA stream each) and the out-of-fold bookkeeping check. Training patients get scores from
the one fold whose networks never saw them; validation / external / predict patients from the full-cohort
networks. A unit is finished when its ``done.json`` (written last, atomically, holding the hash of every
parameter, the folds and the content of every patient's images) matches; a rerun trains only the rest.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from p53hcc.fusion.models.nested import fold_map, fold_pairs
from p53hcc.tools.cohort.batches import batch_of
from p53hcc.tools.cohort.splits import load_splits, select_items, write_datalist
from p53hcc.tools.dl.arms import PAIR, Arm, Unit, fold_dir, get_arm, score_sections
from p53hcc.tools.dl.bundle import applied_params, training_params
from p53hcc.tools.dl.engine import fit, items_digest, resolve_device, source_items
from p53hcc.tools.dl.nets import check_net_name
from p53hcc.tools.dl.weights import weights_file
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_path, atomic_write_json, atomic_write_table, file_sha256, params_hash
from p53hcc.tools.parallel import fixed_threads

log = logging.getLogger(__name__)
ENGINES = ("fast", "bundle")


def check_oof(scores: pd.DataFrame, splits: dict) -> None:
    """Check the fold bookkeeping: no out-of-fold score comes from a model that saw that patient.

    Every training patient has exactly one score, from fold ``k`` whose held-out part contains it (so the model
    of fold ``k`` never trained on it); full-model scores (``fold == -1``) are only for non-training patients.

    Raises:
        P53hccError: the bookkeeping is violated.
    """
    train_ids = {pid for f in splits["folds"] for pid in f["val"]}
    scored = {f["fold"]: set(scores.loc[scores["fold"] == f["fold"], "patient_id"]) for f in splits["folds"]}
    for f in splits["folds"]:  # a leak first: it is the worse finding
        if scored[f["fold"]] & set(f["train"]):
            leaked = sorted(scored[f["fold"]] & set(f["train"]))[:5]
            raise P53hccError(f"fold {f['fold']} scored patients it trained on: {leaked}")
    for f in splits["folds"]:
        if scored[f["fold"]] != set(f["val"]):
            raise P53hccError(f"fold {f['fold']} scores do not match its held-out patients")
    full = scores[scores["fold"] == -1]
    if set(full["patient_id"]) & train_ids:
        raise P53hccError("the full-cohort model scored training patients (they need out-of-fold scores)")
    oof = scores[scores["patient_id"].isin(train_ids)]
    if oof["patient_id"].duplicated().any() or set(oof["patient_id"]) != train_ids:
        raise P53hccError("each training patient needs exactly one out-of-fold score")


def check_inner(inner: pd.DataFrame, splits: dict) -> None:
    """Check the inner-score bookkeeping: for every outer fold k, each training patient outside fold k has exactly
    one inner score, and none of fold k's own patients has one (their models never saw fold k or them).

    Raises:
        P53hccError: the bookkeeping is violated.
    """
    fold_of = fold_map(splits)
    for f in splits["folds"]:
        k = int(f["fold"])
        got = inner.loc[inner["outer"] == k, "patient_id"].astype(str)
        if any(fold_of.get(p) == k for p in got):
            raise P53hccError(f"inner scores of outer fold {k} include fold {k}'s own patients")
        if got.duplicated().any() or set(got) != {p for p, m in fold_of.items() if m != k}:
            raise P53hccError(f"outer fold {k} needs exactly one inner score per training patient outside it")


def _is_done(unit_dir: Path, tag: str) -> bool:
    marker = unit_dir / "done.json"
    return marker.is_file() and json.loads(marker.read_text()).get("params") == tag


def init_weights_digest(params: dict, net: str) -> dict:
    """Content hash of the local initialisation weights (``pretrained_path``), so replaced weights retrain (empty
    without them, so the keys of units trained from scratch stay what they were)."""
    path = params.get("pretrained_path")
    return {"weights": file_sha256(weights_file(path, net))} if path else {}


def _train_unit(arm: Arm, u: Unit, x: torch.Tensor, items: list[dict], net: str, params: dict, device) -> None:
    """Fit one unit on the training patients outside its held-out fold(s) (monitoring the held-out ones; the
    monitor is only logged, never used to pick an epoch), save model and outputs."""
    train = [i for i, d in enumerate(items) if d["split"] == "train" and d["fold"] not in u.held]
    held = [i for i, d in enumerate(items) if d["split"] == "train" and d["fold"] in u.held]
    score_ids = ([items[i]["patient_id"] for i in held] if u.held
                 else [d["patient_id"] for d in items if d["split"] != "train"])
    y = torch.as_tensor([int(d["label"]) for d in items])
    monitor = (x[held], y[held]) if held else (None, None)
    where = f"folds {u.pair[0]}+{u.pair[1]}" if u.pair else f"fold {u.fold}"
    desc = f"{arm.name}_{net}{' ' + u.unit if u.unit else ''} {where}"
    model, history = fit(x[train], y[train], net, params, device, *monitor, desc=desc, arm=arm.name,
                         recipe_path=u.dir / "recipe.json")
    if u.pair is None:  # a pair network is only needed for its inner scores: its weights are not kept (disk)
        with atomic_path(u.dir / "model.pt") as tmp:
            torch.save(model.state_dict(), tmp)
    atomic_write_table(u.dir / "history.csv", history)
    arm.save_outputs(u, model, x, items, score_ids, params, device)


def train_arm(cohort_csv: str | os.PathLike, out: str | os.PathLike, arm: str = "mc", net: str | None = None,
              epochs: int | None = None, device: str | None = None, folds: Sequence[int] | None = None,
              engine: str = "fast", workers: int = 1, head_kwargs: dict | None = None, inner: bool = False,
              batch_column: str | None = None, **overrides) -> Path:
    """Cross-fit one DL arm for one network and write its scores (and, for FF, features and head).

    Args:
        cohort_csv: cohort manifest (used to write ``datalist.json``/``splits.json`` if the study lacks them).
        out: study folder.
        arm: ``mc`` (multi-channel) or ``ff`` (feature fusion).
        net: one of the six networks (default: the bundle's ``net``).
        epochs: training epochs (default: the bundle's).
        device: ``cpu``, ``cuda``... (default: CUDA when available).
        folds: train only these folds (-1 = the full-cohort networks); the arm's scores are written once every
            unit of every fold is finished.
        engine: ``fast`` (cached crops, on-device training) or ``bundle`` (each unit through the bundle's own
            ``ConfigWorkflow``: SupervisedTrainer, handlers, TensorBoard).
        workers: units trained concurrently by the fast engine (threads, one CUDA stream each), for networks
            too small to fill the GPU alone.
        head_kwargs: FF head parameters (``n_components``, ``cv``...), see :class:`p53hcc.fusion.models.ffhead.FFHead`.
        inner: also train the pair units (one per pair of folds, K (K - 1) / 2 more networks per unit) and write
            ``inner_scores.parquet``, which nested cross-fitting (:mod:`p53hcc.fusion.models.nested`) needs; pair units
            run when ``folds`` is None (fast engine only).
        batch_column: the cohort column with each patient's scanner (default ``scanner``), read when the FF head
            harmonises (``head_kwargs={"harmonise": "combat"}``).
        overrides: training parameters (``spatial_size``, ``batch_size``, ``learning_rate``, ``n4``, ``precision``,
            ``seed``, ``source``, ``compile``...); defaults come from the bundle's ``train.json``.

    Returns:
        Path of ``out/dl/<arm>/<net>/scores.parquet``, or of the arm folder when only some folds ran.
    """
    spec, out = get_arm(arm), Path(out)
    if engine not in ENGINES:
        raise P53hccError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    params = training_params(spec.name, epochs=epochs, net=net, **overrides)
    net = params["net"] = check_net_name(params["net"])
    if params["source"] == "preprocessed" and engine == "bundle":
        raise P53hccError("engine 'bundle' runs the bundle's own chain on raw images; use source='raw' with it")
    inner = bool(inner)  # the CLI parses its flags by type (pydantic's validate_call)
    if inner and engine == "bundle":
        raise P53hccError("the pair units of nested cross-fitting (inner=True) need engine 'fast'")
    if not (out / "datalist.json").is_file() or not (out / "splits.json").is_file():
        write_datalist(cohort_csv, out)
    splits = load_splits(out)
    if inner and len(splits["folds"]) < 3:
        raise P53hccError(f"nested cross-fitting (inner=True) needs at least 3 folds; splits.json has "
                          f"{len(splits['folds'])}: a pair of 2 folds leaves no patient to train on")
    batches = None
    if spec.name == "ff" and (head_kwargs or {}).get("harmonise", "none") != "none":
        batches = batch_of(cohort_csv, batch_column)
    with fixed_threads(params["cpu_threads"]):  # CPU convolutions give other bits with another thread count
        return _train_units(spec, out, params, splits, net, engine, folds, device, workers, head_kwargs, inner,
                            batches)


#: FF head options that change only the head (refitted from the saved features on every run), not the networks.
HEAD_ONLY = ("harmonise", "min_batch")


def _train_units(spec: Arm, out: Path, params: dict, splits: dict, net: str, engine: str,
                 folds: Sequence[int] | None, device, workers: int, head_kwargs: dict | None, inner: bool,
                 batches=None) -> Path:
    items = source_items(select_items(out / "datalist.json", "all"), out, params)
    # a unit is done for these parameters, folds, patients, labels and image contents (a replaced image retrains)
    network_head = {k: v for k, v in (head_kwargs or {}).items() if k not in HEAD_ONLY}
    tag = params_hash({**applied_params(params), "engine": engine, "splits": splits, "head": network_head,
                       "data": items_digest(items), **init_weights_digest(params, net)})
    arm_dir = out / "dl" / spec.name / net
    plan = [Unit(k, unit, spec.unit_dir(arm_dir, k, unit))
            for k in [*(int(f["fold"]) for f in splits["folds"]), -1] for unit in spec.units]
    pairs = [Unit(PAIR, unit, spec.unit_dir(arm_dir, PAIR, unit, pair), pair)
             for pair in fold_pairs(splits) for unit in spec.units] if inner else []
    wanted = None if folds is None else {int(k) for k in folds}
    todo = [u for u in plan if wanted is None or u.fold in wanted] + (pairs if wanted is None else [])
    pending = [u for u in todo if not _is_done(u.dir, tag)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), initial=len(todo) - len(pending), desc=f"{spec.name}_{net} networks", unit="net")

    def finish(u: Unit) -> None:
        where = {"fold": u.fold, **({"pair": list(u.pair)} if u.pair else {})}
        atomic_write_json(fold_dir(arm_dir, u.fold, u.pair) / "config.json", {**params, "engine": engine, **where})
        atomic_write_json(u.dir / "done.json", {"params": tag, "net": net, "unit": u.unit, **where})
        bar.update()

    if engine == "bundle":
        datalist = json.loads((out / "datalist.json").read_text())
        for u in pending:
            spec.train_with_bundle(out, u, net, params, device, ["val"] if u.fold >= 0 else score_sections(datalist))
            finish(u)
    elif pending:
        crops = {unit: spec.crops(out, items, params, unit) for unit in dict.fromkeys(u.unit for u in pending)}
        dev = resolve_device(device)

        def run(u: Unit) -> None:
            stream = (torch.cuda.stream(torch.cuda.Stream(dev)) if dev.type == "cuda" and workers > 1
                      else contextlib.nullcontext())
            with stream:
                _train_unit(spec, u, crops[u.unit], items, net, params, device)
            finish(u)

        if workers > 1 and len(pending) > 1:
            with ThreadPoolExecutor(max_workers=int(workers)) as pool:
                list(pool.map(run, pending))
        else:
            for u in pending:
                run(u)
    bar.close()
    if not all(_is_done(u.dir, tag) for u in plan + pairs):
        return arm_dir
    scores = spec.collect(out, arm_dir, net, splits, items, head_kwargs=head_kwargs, batches=batches)
    check_oof(scores, splits)
    inner_path = arm_dir / "inner_scores.parquet"
    if inner:
        inner_scores = spec.collect_inner(arm_dir, splits, items, head_kwargs=head_kwargs, batches=batches)
        check_inner(inner_scores, splits)
        atomic_write_table(inner_path, inner_scores)
    else:
        inner_path.unlink(missing_ok=True)  # never leave inner scores of other networks beside new scores
    return atomic_write_table(arm_dir / "scores.parquet", scores)
