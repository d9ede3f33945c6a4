"""A tiny cached, resumable stage runner (what ``p53hcc study`` is built on).

Why: the study takes minutes to hours; a user who kills it (or a crash) must be able to rerun the same command and
have only the unfinished work redone, and a changed parameter must redo exactly the stages it affects.

How: every stage has a *key* = hash of its own parameters, of the keys of the stages it depends on and of any
input files it names. After the stage function returns (all its outputs written, atomically, by the stage
itself) the runner writes ``<study>/.stages/<name>.done`` atomically, holding that key. A later run skips a stage
whose marker holds the same key; a stage that raised (or was killed) has no marker and is run again. Because a
dependent stage's key contains its upstream keys, a changed parameter invalidates the stage and everything
downstream of it, and nothing else.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p53hcc.tools.io import atomic_write_json, file_sha256, params_hash

MARKER_DIR = ".stages"
log = logging.getLogger(__name__)


@dataclass
class Stage:
    """One step of a pipeline.

    Attributes:
        name: unique stage name (also the marker file name).
        func: called as ``func(ctx)`` with the :class:`StageContext`; must write its outputs atomically and be
            deterministic (same inputs and params -> same outputs).
        params: JSON-serialisable parameters that determine the outputs (part of the cache key).
        deps: names of stages whose outputs this stage reads (their keys enter this stage's key).
        inputs: files or folders whose content enters the key (e.g. the cohort CSV and every image it names),
            hashed when the stage's turn comes (after the stages before it ran); or a callable returning them.
        outputs: paths (relative to the study folder) the stage must have produced; a cached stage with one of
            them missing (deleted by hand) is run again.
    """

    name: str
    func: Callable[[StageContext], Any]
    params: dict = field(default_factory=dict)
    deps: Sequence[str] = ()
    inputs: Sequence[str | Path] | Callable[[], Sequence[str | Path]] = ()
    outputs: Sequence[str] = ()


@dataclass
class StageContext:
    """What a running stage sees: the study folder, its own params and the run-wide shared state."""

    study_dir: Path
    stage: Stage
    state: dict

    @property
    def params(self) -> dict:
        """The stage's parameters."""
        return self.stage.params


@dataclass
class StageResult:
    """Outcome of one stage in a run: ``ran`` or ``cached``, with the elapsed seconds and the key."""

    name: str
    status: str
    seconds: float
    key: str


def _marker(study_dir: Path, name: str) -> Path:
    return Path(study_dir) / MARKER_DIR / f"{name}.done"


def read_marker(study_dir: str | Path, name: str) -> dict | None:
    """Return the done-marker of stage ``name`` or None when the stage has not finished."""
    path = _marker(Path(study_dir), name)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _input_digest(paths: Iterable[str | Path]) -> dict:
    """sha256 per input path (None when absent); threads, as hashlib releases the GIL."""
    paths = sorted({str(p) for p in paths})

    def one(p: str) -> str | None:
        return file_sha256(p) if Path(p).exists() else None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(paths, pool.map(one, paths)))


def stage_key(stage: Stage, upstream: dict[str, str], study_dir: str | Path | None = None) -> str:
    """Cache key of ``stage`` given the keys of the stages already resolved in this run (relative input paths are
    files of ``study_dir``, e.g. ``dropped.csv`` written by an earlier stage)."""
    missing = [d for d in stage.deps if d not in upstream]
    if missing:
        raise ValueError(f"stage {stage.name} depends on unknown or later stages: {missing}")
    inputs = stage.inputs() if callable(stage.inputs) else stage.inputs
    if study_dir is not None:
        inputs = [Path(study_dir) / p for p in inputs]  # an absolute path stays as it is
    return params_hash({
        "name": stage.name,
        "params": stage.params,
        "deps": {d: upstream[d] for d in sorted(stage.deps)},
        "inputs": _input_digest(inputs),
    })


def run_stages(stages: Sequence[Stage], study_dir: str | Path, state: dict | None = None,
               force: Sequence[str] = ()) -> list[StageResult]:
    """Run ``stages`` in order, skipping those whose done-marker matches their current key.

    Args:
        stages: the pipeline, in execution order (dependencies before dependants).
        study_dir: folder holding outputs and the ``.stages/`` markers.
        state: dict shared by all stage functions of this run (e.g. resolved paths); created when None.
        force: names of stages to rerun even when cached.

    Returns:
        One :class:`StageResult` per stage.
    """
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    state = {} if state is None else state
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names: {names}")
    keys: dict[str, str] = {}
    results: list[StageResult] = []
    width = max(len(n) for n in names) if names else 0
    for i, stage in enumerate(stages, 1):
        key = stage_key(stage, keys, study_dir)
        keys[stage.name] = key
        marker = read_marker(study_dir, stage.name)
        prefix = f"[{i}/{len(stages)}] {stage.name:<{width}}"
        complete = all((study_dir / o).exists() for o in stage.outputs)
        if marker is not None and marker.get("key") == key and complete and stage.name not in force:
            results.append(StageResult(stage.name, "cached", 0.0, key))
            log.info("%s  cached", prefix)
            continue
        _marker(study_dir, stage.name).unlink(missing_ok=True)
        log.info("%s  running ...", prefix)
        t0 = time.perf_counter()
        try:
            stage.func(StageContext(study_dir, stage, state))
        except Exception:
            log.error("%s  failed after %.1f s", prefix, time.perf_counter() - t0)
            raise
        seconds = time.perf_counter() - t0
        atomic_write_json(_marker(study_dir, stage.name), {
            "stage": stage.name, "key": key, "params": stage.params, "deps": list(stage.deps),
            "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        results.append(StageResult(stage.name, "ran", seconds, key))
        log.info("%s  done in %.1f s", prefix, seconds)
    return results
