"""The whole study in one call: :func:`run_study` (what ``p53hcc study`` runs).

Stages, in order, each cached and resumable through :mod:`p53hcc.tools.pipeline.stages` (a done-marker holding
the hash of its parameters and upstream keys is written only after its outputs):

    synth (no cohort given) -> validate -> preprocess -> radiomics -> datalist -> dl_<arm>_<net> ... ->
    fusion -> statistics -> gradcam -> figures -> report -> model

A patient an image stage cannot process stops the study (``on_failure: fail``) or is left out of the folds and
every model (``record``); either way it is named in ``dropped.csv`` and the report.

Every parameter comes from :mod:`p53hcc.tools.pipeline.config`; the resolved set is written to
``STUDY_DIR/study.yaml``, and everything the run logs goes to ``STUDY_DIR/study.log`` too.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from p53hcc.tools.io import atomic_write_json, atomic_write_text
from p53hcc.tools.lock import folder_lock
from p53hcc.tools.logs import study_log
from p53hcc.tools.pipeline.config import dl_training_values, fold_groups, resolve_config
from p53hcc.tools.pipeline.stages import Stage, StageContext, run_stages

log = logging.getLogger(__name__)


def _cohort_csv(ctx: StageContext) -> Path:
    return Path(ctx.state["cohort_csv"])


def _stage_synth(ctx: StageContext) -> None:
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    p = ctx.params
    make_cohort(n=p["n"], out=ctx.study_dir / "cohort", seed=p["seed"], size=p["size"],
                second_reader=p["second_reader"], profile=p["profile"])


def _stage_validate(ctx: StageContext) -> None:
    """Everything the later stages need from the cohort (files, values, clinical columns, classes, ROIs, phase
    order), checked before any heavy stage; warnings are logged, errors stop the study naming each problem."""
    from p53hcc.tools.cohort.imagechecks import ImageRequirements
    from p53hcc.tools.pipeline.checks import cohort_problems, raise_on_errors

    csv = _cohort_csv(ctx)
    checks = dict(ctx.params)
    problems = cohort_problems(csv, ImageRequirements(**checks.pop("requirements")), **checks)
    atomic_write_json(ctx.study_dir / "validation.json", {
        "cohort": str(csv), "problems": [{"severity": p.severity, "message": str(p)} for p in problems]})
    for p in problems:
        if p.severity != "error":
            log.warning("%s", p)
    raise_on_errors(csv, problems)


def _stage_datalist(ctx: StageContext) -> None:
    """Folds and datalist of the analysed patients: the cohort minus those an image stage dropped."""
    from p53hcc.tools.cohort.dropped import dropped_patients
    from p53hcc.tools.cohort.splits import write_datalist

    write_datalist(_cohort_csv(ctx), ctx.study_dir, folds=ctx.params["folds"], seed=ctx.params["seed"],
                   exclude=dropped_patients(ctx.study_dir), group_column=ctx.params.get("group_column"))


def _stage_preprocess(ctx: StageContext) -> None:
    from p53hcc.tools.preprocessing.run import preprocess_cohort

    run = ctx.state["config"]["preprocess"]
    preprocess_cohort(_cohort_csv(ctx), ctx.study_dir, workers=run.get("workers"), scheduler=run.get("scheduler"),
                      params=ctx.params["params"], on_failure=ctx.params["on_failure"])


def _stage_radiomics(ctx: StageContext) -> None:
    from p53hcc.tools.radiomics.extract import extract_cohort

    run = ctx.state["config"]["radiomics"]
    extract_cohort(_cohort_csv(ctx), ctx.study_dir, params=ctx.params["params"], workers=run.get("workers"),
                   scheduler=ctx.state["config"]["preprocess"].get("scheduler"), on_failure=ctx.params["on_failure"])


def _dl_stage(arm: str, net: str) -> Callable[[StageContext], None]:
    def body(ctx: StageContext) -> None:
        from p53hcc.tools.dl.crossfit import train_arm

        train_arm(_cohort_csv(ctx), ctx.study_dir, arm=arm, net=net, device=ctx.state["config"]["dl"].get("device"),
                  **ctx.params)
    return body


def _stage_fusion(ctx: StageContext) -> None:
    from p53hcc.tools.pipeline.fit import run_fusion

    run_fusion(ctx.study_dir, _cohort_csv(ctx), ctx.state["config"])


def _stage_statistics(ctx: StageContext) -> None:
    from p53hcc.tools.pipeline.statistics import run_statistics

    run_statistics(ctx.study_dir, _cohort_csv(ctx), ctx.state["config"])


def _stage_gradcam(ctx: StageContext) -> None:
    from p53hcc.tools.pipeline.explain import gradcam_command

    chosen = json.loads((ctx.study_dir / "selection.json").read_text())["chosen"]
    if not chosen:
        log.warning("gradcam: no DL model was chosen (every candidate degenerate); no heat maps")
        return
    if chosen["net"].startswith("vit"):
        log.warning("gradcam: the chosen %s is a ViT, which has no feature map for Grad-CAM; no heat maps",
                    chosen["model"])
        return
    gradcam_command(str(ctx.study_dir), arm=chosen["arm"], net=chosen["net"], n=ctx.params["n"],
                    layer=ctx.params.get("layer"))


def _stage_figures(ctx: StageContext) -> None:
    from p53hcc.fusion.report.figures import make_figures
    from p53hcc.tools.pipeline.fit import cohort_labels

    make_figures(ctx.study_dir, cohort_labels(_cohort_csv(ctx))[1])


def _stage_report(ctx: StageContext) -> None:
    from p53hcc.fusion.report.page import write_report
    from p53hcc.tools.cohort.dropped import dropped_patients
    from p53hcc.tools.cohort.manifest import read_cohort

    cohort = read_cohort(_cohort_csv(ctx))
    write_report(ctx.study_dir, cohort[~cohort["patient_id"].isin(dropped_patients(ctx.study_dir))])


def _stage_model(ctx: StageContext) -> None:
    from p53hcc.tools.pipeline.freeze import freeze_model

    freeze_model(ctx.study_dir)


# ------------------------------------------------------------------------------------------------ the pipeline
def build_stages(cfg: dict, cohort_given: bool, cohort_csv: str | Path | None = None) -> list[Stage]:
    """The study's stages with the parameters (from ``cfg``) that determine each one's outputs.

    Run-time knobs that do not change results (workers, scheduler, device) are deliberately not part of any
    stage's parameters, so changing them never invalidates finished work. With ``cohort_csv`` the stages that read
    images have the cohort's files as inputs: their content (every image and mask, hashed) is in their keys, so a
    replaced image reruns them (and the inner caches redo only the patients whose files changed).
    """
    from p53hcc.tools.cohort.dropped import DROPPED, check_on_failure
    from p53hcc.tools.cohort.manifest import cohort_files
    from p53hcc.tools.pipeline.checks import study_check_params

    stages: list[Stage] = []
    first: list[str] = []
    content = (lambda: cohort_files(cohort_csv)) if cohort_csv else ()
    table = [cohort_csv] if cohort_csv else []
    if not cohort_given:
        stages.append(Stage("synth", _stage_synth, params=dict(cfg["synth"])))
        first = ["synth"]
    on_failure = check_on_failure(cfg.get("on_failure"))
    stages += [
        Stage("validate", _stage_validate, deps=first, inputs=content, outputs=["validation.json"],
              params=study_check_params(cfg)),
        Stage("preprocess", _stage_preprocess, params={"params": cfg["preprocess"]["params"],
                                                       "on_failure": on_failure}, deps=first, inputs=content),
        Stage("radiomics", _stage_radiomics, params={"params": cfg["radiomics"]["params"],
                                                     "on_failure": on_failure},
              deps=["preprocess"], inputs=content, outputs=["radiomics.parquet"]),
        # after the image stages: the folds are made from the patients they did not drop (dropped.csv)
        # leave-one-scanner-out: one fold per scanner (the key changes only then, kfold studies keep theirs)
        Stage("datalist", _stage_datalist, params={"folds": cfg["folds"], "seed": cfg["seed"],
                                                   **({"group_column": fold_groups(cfg)} if fold_groups(cfg) else {})},
              deps=first, inputs=[*table, DROPPED], outputs=["splits.json", "datalist.json"]),
    ]
    dl_names = []
    dl = cfg["dl"]
    # nested cross-fitting needs the DL arms' pair-of-folds networks (their inner scores)
    training = {**dl_training_values(cfg), "source": "preprocessed", "inner": cfg["fusion"]["nesting"] == "nested"}
    harmonise = cfg["fusion"].get("harmonise", "none")
    weights = [training["pretrained_path"]] if training.get("pretrained_path") else []  # their content: in the key
    for arm in dl["arms"]:
        # a harmonising FF head: only then does the stage key change (refits the head, the networks are kept)
        head = ({"head_kwargs": {"harmonise": harmonise}, "batch_column": cfg.get("batch_column")}
                if arm == "ff" and harmonise != "none" else {})
        for net in dl["nets"]:
            name = f"dl_{arm}_{net}"
            dl_names.append(name)
            stages.append(Stage(name, _dl_stage(arm, net), params={**training, **head}, deps=["datalist", "preprocess"],
                                outputs=[f"dl/{arm}/{net}/scores.parquet"], inputs=weights))
    fusion_params = {"fusion": cfg["fusion"], "icc_threshold": cfg["radiomics"]["icc_threshold"],
                     "seed": cfg["seed"], "nets": dl["nets"], "arms": dl["arms"],
                     **({"batch_column": cfg.get("batch_column")} if harmonise != "none" else {})}
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
              source: str = "argument", **overrides: Any) -> Path:
    """Run (or resume) the whole study into ``out``; returns the path of ``report.html``.

    Args:
        cohort: cohort.csv; None generates the synthetic demo cohort in ``out/cohort/``.
        out: study folder.
        nets: networks to sweep (comma string or list; default: the config's six).
        config: user YAML merged over the defaults.
        paper_selection: also report the paper's optimistic choice of network by validation AUC.
        profile: ``paper`` or ``demo``; default ``demo`` for the generated synthetic cohort, else ``paper``.
        source: where ``overrides`` come from, for error messages (``command line`` or ``argument``).
        overrides: any setting, ``epochs=3`` or ``**{"dl.epochs": 3}``; checked with everything else against the
            typed schema before any stage runs (``p53hcc config`` lists them).
    """
    out = Path(out).resolve()
    profile = profile or ("demo" if cohort is None else "paper")
    cfg = resolve_config(config, nets=nets, paper_selection=paper_selection, profile=profile, source=source,
                         **overrides)
    cohort_csv = Path(cohort).resolve() if cohort else out / "cohort" / "cohort.csv"
    cfg["cohort"] = str(cohort_csv)
    cfg["cohort_generated"] = cohort is None
    with folder_lock(out), study_log(out / "study.log"):
        log.info("study %s (profile %s, cohort %s)", out, profile, cohort_csv)
        atomic_write_text(out / "study.yaml", yaml.safe_dump(cfg, sort_keys=False))
        stages = build_stages(cfg, cohort_given=cohort is not None, cohort_csv=cohort_csv)
        run_stages(stages, out, state={"config": cfg, "cohort_csv": str(cohort_csv)})
    return out / "report.html"
