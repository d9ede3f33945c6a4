"""The whole study in one call: :func:`run_study` (what ``p53hcc study`` runs).

Stages, in order, each cached and resumable through :mod:`p53hcc.tools.pipeline.stages` (a done-marker holding
the hash of its parameters and upstream keys is written only after its outputs):

    synth (no cohort given) -> validate -> datalist -> preprocess -> radiomics -> dl_<arm>_<net> ... ->
    fusion -> statistics -> gradcam -> figures -> report -> model

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

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_json, atomic_write_text
from p53hcc.tools.logs import study_log
from p53hcc.tools.pipeline.config import dl_training_values, resolve_config
from p53hcc.tools.pipeline.stages import Stage, StageContext, run_stages

log = logging.getLogger(__name__)


def _cohort_csv(ctx: StageContext) -> Path:
    return Path(ctx.state["cohort_csv"])


def _stage_synth(ctx: StageContext) -> None:
    from p53hcc.tools.cohort.synth import make_cohort

    p = ctx.params
    make_cohort(n=p["n"], out=ctx.study_dir / "cohort", seed=p["seed"], size=p["size"],
                second_reader=p["second_reader"], profile=p["profile"])


def _stage_validate(ctx: StageContext) -> None:
    from p53hcc.tools.cohort.manifest import validate_cohort

    problems = validate_cohort(_cohort_csv(ctx))
    errors = [str(p) for p in problems if p.severity == "error"]
    atomic_write_json(ctx.study_dir / "validation.json",
                      {"cohort": str(_cohort_csv(ctx)), "problems": [str(p) for p in problems]})
    if errors:
        shown = "; ".join(errors[:5]) + (f"; ... ({len(errors) - 5} more)" if len(errors) > 5 else "")
        raise P53hccError(f"{_cohort_csv(ctx)}: {len(errors)} problem(s): {shown}")


def _stage_datalist(ctx: StageContext) -> None:
    from p53hcc.tools.cohort.splits import write_datalist

    write_datalist(_cohort_csv(ctx), ctx.study_dir, folds=ctx.params["folds"], seed=ctx.params["seed"])


def _stage_preprocess(ctx: StageContext) -> None:
    from p53hcc.tools.preprocessing.run import preprocess_cohort

    run = ctx.state["config"]["preprocess"]
    preprocess_cohort(_cohort_csv(ctx), ctx.study_dir, workers=run.get("workers"), scheduler=run.get("scheduler"),
                      params=ctx.params["params"])


def _stage_radiomics(ctx: StageContext) -> None:
    from p53hcc.tools.radiomics.extract import extract_cohort

    run = ctx.state["config"]["radiomics"]
    extract_cohort(_cohort_csv(ctx), ctx.study_dir, params=ctx.params["params"], workers=run.get("workers"),
                   scheduler=ctx.state["config"]["preprocess"].get("scheduler"))


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
    from p53hcc.tools.dl.gradcam import gradcam_command

    chosen = json.loads((ctx.study_dir / "selection.json").read_text())["chosen"]
    gradcam_command(str(ctx.study_dir), arm=chosen["arm"], net=chosen["net"], n=ctx.params["n"],
                    layer=ctx.params.get("layer"))


def _stage_figures(ctx: StageContext) -> None:
    from p53hcc.fusion.figures import make_figures
    from p53hcc.tools.pipeline.fit import cohort_labels

    make_figures(ctx.study_dir, cohort_labels(_cohort_csv(ctx))[1])


def _stage_report(ctx: StageContext) -> None:
    from p53hcc.fusion.report import write_report
    from p53hcc.tools.cohort.manifest import read_cohort

    write_report(ctx.study_dir, read_cohort(_cohort_csv(ctx)))


def _stage_model(ctx: StageContext) -> None:
    from p53hcc.tools.pipeline.freeze import freeze_model

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
    training = {**dl_training_values(cfg), "source": "preprocessed"}
    for arm in dl["arms"]:
        for net in dl["nets"]:
            name = f"dl_{arm}_{net}"
            dl_names.append(name)
            stages.append(Stage(name, _dl_stage(arm, net), params=dict(training), deps=["datalist", "preprocess"],
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
    with study_log(out / "study.log"):
        log.info("study %s (profile %s, cohort %s)", out, profile, cohort_csv)
        atomic_write_text(out / "study.yaml", yaml.safe_dump(cfg, sort_keys=False))
        stages = build_stages(cfg, cohort_given=cohort is not None)
        for stage in stages:  # the cohort's content is an input of validation (a changed CSV reruns everything)
            if stage.name == "validate":
                stage.inputs = [cohort_csv]
        run_stages(stages, out, state={"config": cfg, "cohort_csv": str(cohort_csv)})
    return out / "report.html"
