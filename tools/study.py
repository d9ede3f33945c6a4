"""The whole study in one call: ``run_study`` (what ``p53hcc study`` runs).

Stages, in order, each cached and resumable through :mod:`tools.stages` (a done-marker holding the hash of its
parameters and upstream keys is written only after its outputs):

    synth (no cohort given) -> validate -> datalist -> preprocess -> radiomics -> dl_<arm>_<net> ... ->
    fusion -> statistics -> gradcam -> figures -> report -> model

Every parameter and seed comes from ``tools/config/study_defaults.yaml``, overridden by a user YAML and then by
CLI flags; the resolved set is written to ``STUDY_DIR/study.yaml``. The final DL model is chosen on the training
cohort's out-of-fold AUC only (validation is never looked at); see :func:`choose_dl_model`.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tools.errors import P53hccError
from tools.io_utils import atomic_write_json, atomic_write_table, atomic_write_text, read_table
from tools.stages import Stage, StageContext, run_stages

DEFAULTS = Path(__file__).parent / "config" / "study_defaults.yaml"
ARM_LABEL = {"mc": "multi-channel (MC)", "ff": "feature fusion (FF)"}


# ----------------------------------------------------------------------------------------------- configuration
def _merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge: values of ``extra`` win; nested dicts are merged, not replaced."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_override(cfg: dict, key: str, value: Any) -> None:
    """Set ``key`` (``section.name``, a top-level name, or a name unique within one section) in ``cfg``."""
    if "." in key:
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        return
    if key in cfg:
        cfg[key] = value
        return
    owners = [s for s, v in cfg.items() if isinstance(v, dict) and key in v]
    if len(owners) != 1:
        where = "no section" if not owners else f"sections {owners}; write section.{key}"
        raise P53hccError(f"unknown or ambiguous study parameter --{key} ({where}); see {DEFAULTS.name}")
    cfg[owners[0]][key] = value


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def resolve_config(config: str | Path | None = None, nets: Any = None, paper_selection: bool | None = None,
                   profile: str = "paper", **overrides: Any) -> dict:
    """Defaults <- profile <- user YAML <- CLI overrides; returns the full parameter set of the study.

    Args:
        profile: ``paper`` (the defaults, faithful to the paper) or ``demo`` (fast settings for the synthetic demo).
    """
    cfg = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))
    profiles = cfg.pop("profiles", {})
    if profile not in profiles:
        raise P53hccError(f"unknown profile {profile!r}; choose one of {', '.join(profiles)}")
    cfg = _merge(cfg, profiles[profile] or {})
    cfg["profile"] = profile
    if config:
        path = Path(config)
        if not path.is_file():
            raise P53hccError(f"study config not found: {path}")
        cfg = _merge(cfg, yaml.safe_load(path.read_text()) or {})
    for key, value in overrides.items():
        _set_override(cfg, key, value)
    if nets is not None:
        cfg["dl"]["nets"] = _as_list(nets)
    cfg["dl"]["nets"] = _as_list(cfg["dl"]["nets"])
    cfg["dl"]["arms"] = _as_list(cfg["dl"]["arms"])
    if paper_selection:
        cfg["paper_selection"] = True
    return cfg


# ---------------------------------------------------------------------------------------------- stage bodies
def _cohort_csv(ctx: StageContext) -> Path:
    return Path(ctx.state["cohort_csv"])


def _stage_synth(ctx: StageContext) -> None:
    from tools.synth import make_cohort

    p = ctx.params
    make_cohort(n=p["n"], out=ctx.study_dir / "cohort", seed=p["seed"], size=p["size"],
                second_reader=p["second_reader"], profile=p["profile"])


def _stage_validate(ctx: StageContext) -> None:
    from tools.cohort import validate_cohort

    problems = validate_cohort(_cohort_csv(ctx))
    errors = [str(p) for p in problems if getattr(p, "severity", "error") == "error"]
    atomic_write_json(ctx.study_dir / "validation.json",
                      {"cohort": str(_cohort_csv(ctx)), "problems": [str(p) for p in problems]})
    if errors:
        shown = "; ".join(errors[:5]) + (f"; ... ({len(errors) - 5} more)" if len(errors) > 5 else "")
        raise P53hccError(f"{_cohort_csv(ctx)}: {len(errors)} problem(s): {shown}")


def _stage_datalist(ctx: StageContext) -> None:
    from tools.cohort import write_datalist

    write_datalist(_cohort_csv(ctx), ctx.study_dir, folds=ctx.params["folds"], seed=ctx.params["seed"])


def _stage_preprocess(ctx: StageContext) -> None:
    from tools.preprocess import preprocess_cohort

    run = ctx.state["config"]["preprocess"]
    preprocess_cohort(_cohort_csv(ctx), ctx.study_dir, workers=run.get("workers"), scheduler=run.get("scheduler"),
                      params=ctx.params["params"])


def _stage_radiomics(ctx: StageContext) -> None:
    from tools.radiomics import extract_cohort

    run = ctx.state["config"]["radiomics"]
    extract_cohort(_cohort_csv(ctx), ctx.study_dir, params=ctx.params["params"], workers=run.get("workers"),
                   scheduler=ctx.state["config"]["preprocess"].get("scheduler"))


def _dl_stage(arm: str, net: str) -> Callable[[StageContext], None]:
    def body(ctx: StageContext) -> None:
        from tools.train import train_arm

        p = ctx.params
        train_arm(_cohort_csv(ctx), ctx.study_dir, arm=arm, net=net, epochs=p["epochs"],
                  device=ctx.state["config"]["dl"].get("device"), spatial_size=p["spatial_size"],
                  batch_size=p["batch_size"], seed=p["seed"], source="preprocessed")
    return body


def _stage_fusion(ctx: StageContext) -> None:
    from tools.stages import run_fusion

    run_fusion(ctx.study_dir, _cohort_csv(ctx), ctx.state["config"])


def _stage_statistics(ctx: StageContext) -> None:
    from tools.stages import run_statistics

    run_statistics(ctx.study_dir, _cohort_csv(ctx), ctx.state["config"])


def _stage_gradcam(ctx: StageContext) -> None:
    from tools.gradcam import gradcam_command

    chosen = json.loads((ctx.study_dir / "selection.json").read_text())["chosen"]
    gradcam_command(str(ctx.study_dir), arm=chosen["arm"], net=chosen["net"], n=ctx.params["n"])


def _stage_figures(ctx: StageContext) -> None:
    from fusion.report import make_figures

    make_figures(ctx.study_dir)


def _stage_report(ctx: StageContext) -> None:
    from fusion.report import write_report

    write_report(ctx.study_dir)


def _stage_model(ctx: StageContext) -> None:
    from tools.predict import freeze_model

    freeze_model(ctx.study_dir)


# ------------------------------------------------------------------------------------------------ the pipeline
def build_stages(cfg: dict, cohort_given: bool) -> list[Stage]:
    """The study's stages with the parameters (from ``cfg``) that determine each one's outputs.

    Run-time knobs that do not change results (workers, scheduler, device) are deliberately not part of any
    stage's parameters, so changing them never invalidates finished work.
    """
    stages: list[Stage] = []
    first: list[str] = []
    if not cohort_given:
        stages.append(Stage("synth", _stage_synth, params=dict(cfg["synth"])))
        first = ["synth"]
    stages += [
        Stage("validate", _stage_validate, deps=first, inputs=()),
        Stage("datalist", _stage_datalist, params={"folds": cfg["folds"], "seed": cfg["seed"]}, deps=["validate"],
              outputs=["splits.json", "datalist.json"]),
        Stage("preprocess", _stage_preprocess, params={"params": cfg["preprocess"]["params"]}, deps=["validate"]),
        Stage("radiomics", _stage_radiomics, params={"params": cfg["radiomics"]["params"]}, deps=["preprocess"],
              outputs=["radiomics.parquet"]),
    ]
    dl_names = []
    dl = cfg["dl"]
    for arm in dl["arms"]:
        for net in dl["nets"]:
            name = f"dl_{arm}_{net}"
            dl_names.append(name)
            params = {"epochs": dl["epochs"], "spatial_size": dl["spatial_size"], "batch_size": dl["batch_size"],
                      "seed": cfg["seed"], "source": "preprocessed"}
            stages.append(Stage(name, _dl_stage(arm, net), params=params, deps=["datalist", "preprocess"],
                                outputs=[f"dl/{arm}/{net}/scores.parquet"]))
    fusion_params = {"fusion": cfg["fusion"], "icc_threshold": cfg["radiomics"]["icc_threshold"],
                     "seed": cfg["seed"], "nets": dl["nets"], "arms": dl["arms"]}
    stats_params = {"statistics": cfg["statistics"], "paper_selection": bool(cfg.get("paper_selection"))}
    stages += [
        Stage("fusion", _stage_fusion, params=fusion_params, deps=["datalist", "radiomics", *dl_names],
              outputs=["scores.parquet", "selection.json", "fusion/combined.joblib"]),
        Stage("statistics", _stage_statistics, params=stats_params, deps=["fusion"], outputs=["metrics.csv"]),
        Stage("gradcam", _stage_gradcam, params=dict(cfg["gradcam"]), deps=["fusion"]),
        Stage("figures", _stage_figures, deps=["statistics"]),
        Stage("report", _stage_report, params={"paper_selection": bool(cfg.get("paper_selection"))},
              deps=["statistics", "figures", "gradcam"], outputs=["report.html"]),
        Stage("model", _stage_model, deps=["fusion", "statistics"], outputs=["model/manifest.json"]),
    ]
    return stages


def run_study(cohort: str | Path | None = None, out: str | Path = "study-demo", nets: Any = None,
              config: str | Path | None = None, paper_selection: bool = False, profile: str | None = None,
              **overrides: Any) -> Path:
    """Run (or resume) the whole study into ``out``; returns the path of ``report.html``.

    Args:
        cohort: cohort.csv; None generates the synthetic demo cohort in ``out/cohort/``.
        out: study folder.
        nets: networks to sweep (comma string or list; default: the config's six).
        config: user YAML merged over the defaults.
        paper_selection: also report the paper's optimistic choice of network by validation AUC.
        profile: ``paper`` or ``demo``; default ``demo`` for the generated synthetic cohort, else ``paper``.
        overrides: any parameter, ``--epochs 3`` or ``--dl.epochs 3``.
    """
    out = Path(out).resolve()
    profile = profile or ("demo" if cohort is None else "paper")
    cfg = resolve_config(config, nets=nets, paper_selection=paper_selection, profile=profile, **overrides)
    cohort_csv = Path(cohort).resolve() if cohort else out / "cohort" / "cohort.csv"
    cfg["cohort"] = str(cohort_csv)
    cfg["cohort_generated"] = cohort is None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "study.yaml", yaml.safe_dump(cfg, sort_keys=False))
    stages = build_stages(cfg, cohort_given=cohort is not None)
    for stage in stages:  # the cohort's content is an input of validation (a changed CSV reruns everything)
        if stage.name == "validate":
            stage.inputs = [cohort_csv]
    run_stages(stages, out, state={"config": cfg, "cohort_csv": str(cohort_csv)})
    return out / "report.html"


# ---------------------------------------------------------------------------------------- DL model selection
def oof_auc_table(scores: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """AUC per (model, split) of a long score table; train rows are the out-of-fold scores."""
    from sklearn.metrics import roc_auc_score

    rows = []
    lab = pd.DataFrame({"patient_id": labels.index.astype(str), "y": pd.to_numeric(labels, errors="coerce").to_numpy()})
    df = scores.assign(patient_id=scores["patient_id"].astype(str)).merge(lab, on="patient_id").dropna(subset=["y"])
    for (model, split), g in df.groupby(["model", "split"], sort=True):
        auc = roc_auc_score(g["y"].astype(int), g["score"]) if g["y"].nunique() == 2 else np.nan
        rows.append({"model": model, "split": split, "auc": float(auc), "n": len(g)})
    return pd.DataFrame(rows)


def choose_dl_model(aucs: pd.DataFrame, arms: list[str], nets: list[str], split: str = "train") -> dict:
    """Best network per arm, then the better arm, by AUC on ``split`` (``train`` = out-of-fold: the honest rule).

    Ties go to the earlier network in ``nets`` (the simpler one in the default order) and to MC over FF, so the
    choice is deterministic. ``split="validation"`` reproduces the paper's (optimistic) practice.
    """
    auc = aucs[aucs["split"] == split].set_index("model")["auc"]
    best_per_arm = {}
    for arm in arms:
        cands = [(auc.get(f"{arm}_{net}", np.nan), -i, net) for i, net in enumerate(nets)]
        cands = [c for c in cands if not np.isnan(c[0])]
        if cands:
            best = max(cands)
            best_per_arm[arm] = {"net": best[2], "model": f"{arm}_{best[2]}", "auc": float(best[0])}
    if not best_per_arm:
        raise P53hccError(f"no DL scores with labels on the {split} split to choose a network from")
    arm = max(best_per_arm, key=lambda a: (best_per_arm[a]["auc"], -arms.index(a)))
    return {"split": split, "best_per_arm": best_per_arm,
            "chosen": {"arm": arm, "net": best_per_arm[arm]["net"], "model": best_per_arm[arm]["model"],
                       "auc": best_per_arm[arm]["auc"]}}


def write_selection(study_dir: Path, dl_scores: pd.DataFrame, labels: pd.Series, arms: list[str],
                    nets: list[str]) -> dict:
    """Write ``selection.json``: the choice of the final DL model by training-cohort out-of-fold AUC."""
    aucs = oof_auc_table(dl_scores, labels)
    sel = choose_dl_model(aucs, arms, nets, "train")
    sel["rule"] = ("best network per arm, then MC vs FF, by training-cohort out-of-fold AUC "
                   "(ties: simpler network, then MC); the validation cohort is not used for the choice")
    sel["aucs"] = aucs.to_dict("records")
    atomic_write_json(study_dir / "selection.json", sel)
    return sel


def write_paper_selection(study_dir: Path, dl_scores: pd.DataFrame, labels: pd.Series, arms: list[str],
                          nets: list[str], enabled: bool) -> dict | None:
    """``selection_paper.json``: the paper's choice by validation AUC (report only; never used for fitting).

    Removed when not ``enabled`` so a report never shows a stale one.
    """
    dest = study_dir / "selection_paper.json"
    if not enabled:
        dest.unlink(missing_ok=True)
        return None
    paper = choose_dl_model(oof_auc_table(dl_scores, labels), arms, nets, "validation")
    paper["rule"] = "paper's practice: choice by validation-cohort AUC (optimistic: validation used twice)"
    atomic_write_json(dest, paper)
    return paper


def collect_dl_scores(study_dir: Path) -> pd.DataFrame:
    """All ``dl/<arm>/<net>/scores.parquet`` in one long table, sorted by model and patient."""
    files = sorted((study_dir / "dl").glob("*/*/scores.parquet"))
    if not files:
        return pd.DataFrame(columns=["patient_id", "model", "fold", "split", "score"])
    df = pd.concat([read_table(f) for f in files], ignore_index=True)
    df["patient_id"] = df["patient_id"].astype(str)
    return df.sort_values(["model", "patient_id"]).reset_index(drop=True)


def write_scores(study_dir: Path, frames: list[pd.DataFrame]) -> Path:
    """Write ``scores.parquet`` (all models), sorted so reruns are byte-identical."""
    cols = ["patient_id", "model", "fold", "split", "score"]
    df = pd.concat([f[cols] for f in frames if len(f)], ignore_index=True)
    df["patient_id"] = df["patient_id"].astype(str)
    df = df.sort_values(["model", "patient_id"]).reset_index(drop=True)
    return atomic_write_table(study_dir / "scores.parquet", df)
