"""The ``p53hcc`` command line (python-fire). Thin by design: each sub-command documents its arguments and
delegates to a Python function in the module that owns the stage, so everything is also usable from Python.
"""
from __future__ import annotations

import sys


def synth(n: int = 320, out: str = "synthetic", seed: int = 0, size: str = "demo", second_reader: bool = True,
          profile: str = "internal"):
    """Write a synthetic three-phase DCE-MRI cohort with known ground truth.

    Args:
        n: number of patients (7:3 train/validation split).
        out: output folder (cohort.csv, truth.csv, images/, masks/).
        seed: random seed; the same seed gives byte-identical files.
        size: "demo" (small volumes, fast) or "paper" (realistic size).
        second_reader: also write second-reader masks (for ICC).
        profile: "internal" scanner profiles, or "external" (different scanners, for external validation).
    """
    from tools.synth import make_cohort

    return str(make_cohort(n=n, out=out, seed=seed, size=size, second_reader=second_reader, profile=profile))


def validate(cohort: str):
    """Check every file and value of a cohort manifest and list all problems at once (exit 1 if any).

    Args:
        cohort: path to cohort.csv.
    """
    from tools.cohort import validate_command

    return validate_command(cohort)


def datalist(cohort: str, out: str, folds: int = 5, seed: int = 0):
    """Write MONAI datalist.json and the training cohort's stratified splits.json into the study folder.

    Args:
        cohort: path to cohort.csv.
        out: study folder.
        folds: number of cross-validation folds of the training cohort.
        seed: seed of the fold assignment.
    """
    from tools.cohort import write_datalist

    return str(write_datalist(cohort, out, folds=folds, seed=seed))


def preprocess(cohort: str, out: str, params: str = "demo", workers: int | None = None,
               scheduler: str | None = None):
    """N4 bias correction -> 1 mm resampling -> z-score for every patient and phase (cached, parallel).

    Args:
        cohort: path to cohort.csv.
        out: study folder (writes preprocessed/).
        params: preset "demo" (quicker N4 fit) or "paper" (the most accurate N4 schedule for its cost, what
            `p53hcc study` uses on your own cohort); see docs/preprocessing.md.
        workers: local worker processes (default: all cores).
        scheduler: address of a Dask distributed scheduler (tcp://host:port) to run on a cluster instead.
    """
    from tools.preprocess import preprocess_cohort

    preprocess_cohort(cohort, out, workers=workers, scheduler=scheduler, params=params)


def radiomics(cohort: str, out: str, params: str = "demo", workers: int | None = None,
              scheduler: str | None = None):
    """PyRadiomics features of every phase of every patient (cached, parallel), plus ICC when re-drawn masks exist.

    Args:
        cohort: path to cohort.csv.
        out: study folder (writes radiomics.parquet and radiomics_provenance.parquet).
        params: "paper" (1197 features per phase), "demo" (fast subset) or a path to a PyRadiomics YAML.
        workers: local worker processes (default: all cores).
        scheduler: Dask distributed scheduler address, optional.
    """
    from tools.radiomics import extract_cohort

    extract_cohort(cohort, out, params=params, workers=workers, scheduler=scheduler)


def train(cohort: str, out: str, arm: str = "mc", net: str = "resnet34", epochs: int | None = None,
          device: str | None = None, **overrides):
    """Cross-fit one deep-learning arm: one model per fold of splits.json plus one on the whole training cohort.

    Writes out-of-fold scores for training patients and full-model scores for the others. Resumes: finished
    folds are not retrained.

    Args:
        cohort: path to cohort.csv.
        out: study folder.
        arm: "mc" (multi-channel) or "ff" (feature fusion).
        net: resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | densenet121.
        epochs: training epochs (default: the bundle's).
        device: "cpu" or "cuda" (default: cuda when available).
        overrides: further bundle config overrides, e.g. --spatial_size 64.
    """
    from tools.train import train_arm

    train_arm(cohort, out, arm=arm, net=net, epochs=epochs, device=device, **overrides)


def gradcam(out: str, arm: str = "mc", net: str = "resnet34", patients: str | None = None, n: int = 4):
    """Grad-CAM heat maps (PNG overlays and arrays) for chosen patients, with the model-randomisation check.

    Args:
        out: study folder (models must be trained).
        arm: "mc" or "ff".
        net: network name.
        patients: comma-separated patient ids (default: n validation patients).
        n: number of patients when none are named.
    """
    from tools.gradcam import gradcam_command

    return gradcam_command(out, arm=arm, net=net, patients=patients, n=n)


def study(cohort: str | None = None, out: str = "study-demo", nets: str | None = None, config: str | None = None,
          paper_selection: bool = False, profile: str | None = None, **overrides):
    """Run the whole study: validate -> preprocess -> radiomics -> DL arms -> fusion -> statistics -> report.

    Cached and resumable: run the same command again after an interruption and it finishes the remaining work.

    Args:
        cohort: path to cohort.csv (default: generate the synthetic demo cohort inside the study folder).
        out: study folder.
        nets: comma-separated networks to sweep (default: all six).
        config: YAML file of study parameters (CLI flags override it).
        paper_selection: also report the paper's (optimistic) choice of network by validation AUC.
        profile: "paper" (the paper's settings: 256 px, 100 epochs, 1197 radiomics features per phase) or "demo"
            (fast settings); default: demo for the generated synthetic cohort, paper for your own cohort.
        overrides: any study parameter, e.g. --epochs 5 --folds 5.
    """
    from tools.study import run_study

    return str(run_study(cohort=cohort, out=out, nets=nets, config=config, paper_selection=paper_selection,
                         profile=profile, **overrides))


def predict(model: str, cohort: str, out: str):
    """Apply a frozen study model to new patients: probability, class, nomogram points, Grad-CAM.

    Args:
        model: the study's model/ folder.
        cohort: cohort.csv of new patients (split "predict"; p53 may be empty).
        out: output folder (predictions.csv, gradcam/).
    """
    from tools.predict import predict_cohort

    return str(predict_cohort(model, cohort, out))


def evaluate(model: str, cohort: str, out: str):
    """Externally validate a frozen study model on a labelled cohort: AUC (DeLong CI), calibration, net benefit.

    Args:
        model: the study's model/ folder.
        cohort: labelled external cohort.csv.
        out: output folder (metrics.csv, figures, report.html).
    """
    from tools.predict import evaluate_cohort

    return str(evaluate_cohort(model, cohort, out))


COMMANDS = {f.__name__: f for f in (synth, validate, datalist, preprocess, radiomics, train, gradcam, study,
                                     predict, evaluate)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``p53hcc`` console script; user errors become one line on stderr and exit code 1."""
    import fire

    from tools.errors import P53hccError

    try:
        fire.Fire(COMMANDS, command=argv, name="p53hcc")
    except P53hccError as err:
        print(f"p53hcc: error: {err}", file=sys.stderr)
        return 1
    except FileNotFoundError as err:
        print(f"p53hcc: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
