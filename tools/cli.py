"""The ``p53hcc`` command line (python-fire). Thin by design: each sub-command documents its arguments and makes
one call into the package that owns the stage, so everything is also usable from Python.

Global flags (before or after the sub-command): ``--verbose`` / ``-v`` (debug lines) and ``--quiet`` / ``-q``
(warnings and errors only). Every argument is parsed by its annotated type before the command runs (pydantic's
``validate_call``): booleans accept ``true/false``, ``yes/no``, ``on/off``, ``1/0`` in any case (python-fire alone
would pass the string ``'false'``, which is truthy), and a wrong type is a one-line error naming the argument.
Study settings (``--dl.epochs 3``) are checked against the typed schema (``p53hcc config`` lists them).
"""
from __future__ import annotations

import sys


def synth(n: int = 320, out: str = "synthetic", seed: int = 0, size: str = "demo", second_reader: bool = True,
          profile: str = "internal", format: str = "nifti"):
    """Write a synthetic three-phase DCE-MRI cohort with known ground truth.

    Args:
        n: number of patients (7:3 train/validation split).
        out: output folder (cohort.csv, truth.csv, images/, masks/).
        seed: random seed; the same seed gives byte-identical files.
        size: "demo" (small volumes, fast) or "paper" (realistic size).
        second_reader: also write second-reader masks (for ICC); with ``--format dicom`` that is a second SEG per
            phase, which the Deploy app refuses (two masks for a series): pass false for app inputs.
        profile: "internal" scanner profiles, or "external" (different scanners, for external validation).
        format: "nifti", or "dicom" (the same voxels as one DICOM study per patient: an MR series per phase and a
            DICOM SEG per mask, under dicom/<patient>/; needs p53hcc[dicom]).
    """
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    return str(make_cohort(n=n, out=out, seed=seed, size=size, second_reader=second_reader, profile=profile,
                           image_format=format))


def validate(cohort: str, study: bool = False, config: str | None = None, profile: str = "paper", **overrides):
    """Check every file and value of a cohort manifest and list all problems at once (exit 1 if any).

    Always: files readable 3-D volumes, masks binary, non-empty and on their image's grid, no NaN voxels, ids,
    splits, labels and clinical values plausible, every clinical column the clinical model needs present and
    filled, each ROI large enough for radiomics (paper parameter set) and the DL crop, and the phases' enhancement
    order (a warning: swapped phase columns?).

    Args:
        cohort: path to cohort.csv.
        study: also check the classes of each split against the study's folds (training needs `folds` patients of
            each class; a one-class validation split warns) and simulate the study plan on the folds it will make
            (every fold's and pair of folds' training set against the radiomics LASSO's inner CV, ComBat's
            scanners; the settings and network names), with the ROI rules of the study's radiomics parameter set.
        config: study YAML (implies --study).
        profile: "paper" (default) or "demo", as for `p53hcc study`.
        overrides: study parameters as for `p53hcc study`, e.g. --folds 10 (implies --study).
    """
    from p53hcc.tools.pipeline.checks import validate_study_command

    purpose = "study" if study or config or overrides else "cohort"
    return validate_study_command(cohort, config=config, profile=profile, purpose=purpose, source="command line",
                                  **overrides)


def datalist(cohort: str, out: str, folds: int | None = None, seed: int = 0):
    """Write MONAI datalist.json and the training cohort's stratified splits.json into the study folder.

    Args:
        cohort: path to cohort.csv.
        out: study folder.
        folds: number of cross-validation folds of the training cohort (default 5).
        seed: seed of the fold assignment.
    """
    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.lock import folder_lock

    with folder_lock(out):
        return str(write_datalist(cohort, out, folds=folds, seed=seed))


def preprocess(cohort: str, out: str, params: str | None = None, workers: int | None = None,
               scheduler: str | None = None):
    """N4 bias correction -> 1 mm resampling -> z-score for every patient and phase (cached, parallel).

    Args:
        cohort: path to cohort.csv.
        out: study folder (writes preprocessed/).
        params: preset "paper" (default, as `p53hcc study` on your cohort: the most accurate N4 schedule for its
            cost) or "demo" (quicker N4 fit); see docs/preprocessing.md.
        workers: local worker processes (default: all cores).
        scheduler: address of a Dask distributed scheduler (tcp://host:port) to run on a cluster instead.
    """
    from p53hcc.tools.lock import folder_lock
    from p53hcc.tools.preprocessing.run import preprocess_cohort

    with folder_lock(out):
        preprocess_cohort(cohort, out, workers=workers, scheduler=scheduler, params=params)


def radiomics(cohort: str, out: str, params: str | None = None, workers: int | None = None,
              scheduler: str | None = None):
    """PyRadiomics features of every phase of every patient (cached, parallel), plus ICC when re-drawn masks exist.

    Args:
        cohort: path to cohort.csv.
        out: study folder (writes radiomics.parquet and radiomics_provenance.parquet).
        params: "paper" (default: 1197 features per phase), "demo" (fast subset) or a path to a PyRadiomics YAML.
        workers: local worker processes (default: all cores).
        scheduler: Dask distributed scheduler address, optional.
    """
    from p53hcc.tools.lock import folder_lock
    from p53hcc.tools.radiomics.extract import extract_cohort

    with folder_lock(out):
        extract_cohort(cohort, out, params=params, workers=workers, scheduler=scheduler)


def train(cohort: str, out: str, arm: str = "mc", net: str | None = None, epochs: int | None = None,
          device: str | None = None, engine: str = "fast", inner: bool = False, **overrides):
    """Cross-fit one deep-learning arm: one model per fold of splits.json plus one on the whole training cohort.

    Writes out-of-fold scores for training patients and full-model scores for the others. Resumes: finished
    folds are not retrained. Defaults (network, epochs, ROI size, learning rate...) come from the arm's bundle
    (bundles/p53_<arm>/configs/train.json).

    Args:
        cohort: path to cohort.csv.
        out: study folder.
        arm: "mc" (multi-channel) or "ff" (feature fusion).
        net: resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | densenet121 (default: the bundle's).
        epochs: training epochs (default: the bundle's).
        device: "cpu" or "cuda" (default: cuda when available).
        engine: "fast" (in-process, cached crops) or "bundle" (the bundle's own MONAI workflow per fold).
        inner: also train the pair-of-folds networks nested cross-fitting needs (what `p53hcc study` does by
            default).
        overrides: further training values (`p53hcc config` lists them), e.g. --spatial_size 64 --n4 false
            --cpu_threads 8 (torch threads on a CPU: fixed, 1 by default, so the networks do not depend on the
            machine; in the resume keys) --precision fp32.
    """
    from p53hcc.tools.dl.crossfit import train_arm
    from p53hcc.tools.lock import folder_lock

    with folder_lock(out):
        return str(train_arm(cohort, out, arm=arm, net=net, epochs=epochs, device=device, engine=engine,
                             inner=inner, **overrides))


def gradcam(out: str, arm: str = "mc", net: str | None = None, patients: str | None = None, n: int = 4,
            layer: str | None = None):
    """Grad-CAM heat maps (PNG overlays and arrays) for chosen patients, with the model-randomisation check.

    Args:
        out: study folder (models must be trained).
        arm: "mc" or "ff".
        net: network name (default: the bundle's).
        patients: comma-separated patient ids (default: n validation patients).
        n: number of patients when none are named.
        layer: target layer (default: the deepest stage with at least 7x7 cells at the model's input size).
    """
    from p53hcc.tools.lock import folder_lock
    from p53hcc.tools.pipeline.explain import gradcam_command

    with folder_lock(out):
        return gradcam_command(out, arm=arm, net=net, patients=patients, n=n, layer=layer)


def study(cohort: str | None = None, out: str = "study-demo", nets: str | None = None, config: str | None = None,
          paper_selection: bool = False, profile: str | None = None, **overrides):
    """Run the whole study: validate -> preprocess -> radiomics -> DL arms -> fusion -> statistics -> report.

    Cached and resumable: run the same command again after an interruption and it finishes the remaining work.
    Everything it logs is also in OUT/study.log.

    Args:
        cohort: path to cohort.csv (default: generate the synthetic demo cohort inside the study folder).
        out: study folder.
        nets: comma-separated networks to sweep (default: all six).
        config: YAML file of study parameters (CLI flags override it).
        paper_selection: also report the paper's (optimistic) choice of network by validation AUC.
        profile: "paper" (the paper's settings: 256 px, 100 epochs, 1197 radiomics features per phase) or "demo"
            (fast settings); default: demo for the generated synthetic cohort, paper for your own cohort.
        overrides: any study setting, e.g. --dl.epochs 5 --folds 5; `p53hcc config` lists every setting with its
            type, allowed values, default and meaning.
    """
    from p53hcc.tools.pipeline.study import run_study

    return str(run_study(cohort=cohort, out=out, nets=nets, config=config, paper_selection=paper_selection,
                         profile=profile, source="command line", **overrides))


def federated(cohort: str | None = None, out: str = "federated-demo", config: str | None = None,
              profile: str | None = None, export: bool = False, **overrides):
    """Run the study federated: the cohort's sites (``--fl.site_column``, default ``scanner``) become NVIDIA FLARE
    clients in FLARE's simulator, each reading only its own rows and images; writes OUT/report.html.

    Args:
        cohort: path to cohort.csv (default: generate the synthetic demo cohort in OUT/cohort, its seven scanners
            grouped into three centres, the sites).
        out: output folder (OUT/sites/<site>/ holds each site's own work, OUT/server/ what the server kept).
        config: YAML of study settings; its ``fl:`` section holds the federation's settings.
        profile: "paper" or "demo" (default: demo for the generated cohort, paper for your own).
        export: write the FLARE job to OUT/job for a real deployment instead of running the simulator.
        overrides: study parameters (--dl.spatial_size 32) and federated settings (--fl.rounds 3,
            --fl.site_column centre, --fl.arms mc; the `fl` section of `p53hcc config`).
    """
    from p53hcc.tools.federated.job import run_federated, study_config

    profile = profile or ("demo" if cohort is None else "paper")
    if cohort is None:  # the demo's sites: its scanners grouped into three centres
        overrides.setdefault("fl.site_column", "centre")
    cfg, fl = study_config(config, profile, source="command line", **overrides)
    if cohort is None:
        from p53hcc.tools.federated.job import demo_cohort

        cohort = str(demo_cohort(out, cfg["synth"]))
    return str(run_federated(cohort, out, cfg, fl, export_only=export))


def predict(model: str, cohort: str, out: str):
    """Apply a frozen study model to new patients: probability, class, nomogram points, Grad-CAM.

    Args:
        model: the study's model/ folder.
        cohort: cohort.csv of new patients (split "predict"; p53 may be empty).
        out: output folder (predictions.csv, gradcam/).
    """
    from p53hcc.tools.pipeline.predict import predict_cohort

    return str(predict_cohort(model, cohort, out))


def evaluate(model: str, cohort: str, out: str):
    """Externally validate a frozen study model on a labelled cohort: AUC (DeLong CI), calibration, net benefit.

    Args:
        model: the study's model/ folder.
        cohort: labelled external cohort.csv.
        out: output folder (metrics.csv, figures, report.html).
    """
    from p53hcc.tools.pipeline.predict import evaluate_cohort

    return str(evaluate_cohort(model, cohort, out))


def export_bundle(study: str, arm: str = "mc", out: str = "bundle-export", net: str | None = None,
                  name: str | None = None, version: str = "0.1.0", weights_url: str | None = None):
    """Export a study's trained arm as a MONAI model-zoo bundle (folder, zip and zoo unit test) that runs without
    p53hcc: its code in scripts/, weights (model.pt, TorchScript model.ts), metadata with pins and metrics.

    Args:
        study: the study folder.
        arm: "mc" or "ff" (FF: the three phase networks and the fitted head as one network).
        out: output folder (models/<name>/, ci/unit_tests/test_<name>.py, <name>_v<version>.zip).
        net: network to export (default: the study's choice for the arm).
        name: bundle name (default hcc_p53_<arm>_<net>_mri_classification).
        version: bundle version (metadata.json; an earlier export's changelog is kept).
        weights_url: public location of the weights for large_files.yml (default: a placeholder to fill in).
    """
    from p53hcc.tools.export.bundle import export_bundle as export

    return str(export(study, arm=arm, out=out, net=net, name=name, version=str(version), weights_url=weights_url))


def config(format: str = "table", profile: str = "paper", federated: bool = False):
    """Every study setting: key, type and allowed values, default and meaning (the typed schema).

    Args:
        format: "table" (one line per setting) or "yaml" (a commented study YAML of the defaults to start a
            --config file from).
        profile: the profile whose values the defaults column shows ("paper" or "demo").
        federated: also the federation's settings (the `fl` section of `p53hcc federated`).
    """
    from p53hcc.tools.pipeline.settings_doc import settings_text

    print(settings_text(format=format, profile=profile, federated=federated))


def _typed(command):
    """``command`` with its arguments parsed by their annotated types before it runs (one home of that parsing)."""
    from pydantic import ConfigDict, validate_call

    return validate_call(command, config=ConfigDict(arbitrary_types_allowed=True))


COMMANDS = {f.__name__: _typed(f) for f in (synth, validate, datalist, preprocess, radiomics, train, gradcam, study,
                                             federated, predict, evaluate, config)}
COMMANDS["export-bundle"] = _typed(export_bundle)
VERBOSE, QUIET, HELP = ("--verbose", "-v"), ("--quiet", "-q"), ("--help", "-h")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``p53hcc`` console script; user errors become one line on stderr and exit code 1."""
    import errno
    import logging

    import fire
    from pydantic import ValidationError

    from p53hcc.tools.errors import P53hccError
    from p53hcc.tools.logs import configure_logging
    from p53hcc.tools.parallel import EXIT_TERMINATED, Terminated, terminated_as_interrupt

    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(verbose=any(a in VERBOSE for a in argv), quiet=any(a in QUIET for a in argv))
    argv = [a for a in argv if a not in VERBOSE + QUIET]
    if any(a in HELP for a in argv):  # a command taking **settings would read --help as a setting: fire's help
        argv = [a for a in argv if a not in HELP] + ["--", "--help"]
    log = logging.getLogger("p53hcc.cli")
    try:
        with terminated_as_interrupt():  # SIGTERM (batch schedulers, kill) unwinds like Ctrl-C
            fire.Fire(COMMANDS, command=argv, name="p53hcc")
    except fire.core.FireExit as done:  # --help, or fire's own usage error (it has printed why)
        return int(done.code or 0)
    except (P53hccError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    except ValidationError as err:  # a command-line argument of the wrong type (validate_call)
        for e in err.errors():
            log.error("--%s %r: %s", ".".join(str(p) for p in e["loc"]), e.get("input"), e["msg"])
        return 1
    except OSError as err:  # a read-only or full output folder, a vanished network share...
        hint = " (is the folder read-only?)" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""
        log.error("%s%s", err, hint)
        return 1
    except Terminated:
        log.error("terminated (SIGTERM); workers stopped, nothing half-written: run the same command again to resume")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
