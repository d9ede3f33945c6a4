"""The frozen study model (:mod:`p53hcc.tools.pipeline.freeze`) applied to new patients.

``predict_cohort`` validates, preprocesses and extracts the new cohort with the frozen parameters, recomputes the
three component scores and applies the frozen models; ``evaluate_cohort`` does the same on a labelled cohort and
reports discrimination (AUC, DeLong CI), calibration-in-the-large and slope, and net benefit - external
validation.

This module is the documented entry point of applying a frozen model, the only part of the pipeline that the
MONAI Deploy runtime (:mod:`p53hcc.tools.deploy`) uses: ``__all__`` lists it, with the two checks a caller makes
first (:func:`read_manifest`: is the folder a frozen model; :func:`clinical_problems`: the clinical values it needs).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.models.clinical import RAW_PATHOLOGY
from p53hcc.fusion.models.factories import logit
from p53hcc.fusion.models.harmonise import with_batch
from p53hcc.fusion.models.nomogram import Nomogram
from p53hcc.fusion.report.evaluation_page import write_evaluation_report
from p53hcc.fusion.stats.decision import net_benefit
from p53hcc.fusion.stats.metric_rows import model_metrics
from p53hcc.tools.cohort.batches import batch_of
from p53hcc.tools.cohort.manifest import read_cohort
from p53hcc.tools.dl.frozen import predict_frozen
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.io import atomic_write_table, atomic_write_text, read_table
from p53hcc.tools.lock import folder_lock
from p53hcc.tools.pipeline.checks import (
    clinical_problems,
    cohort_problems,
    image_requirements,
    patient_warnings,
    raise_on_errors,
    range_problems,
)
from p53hcc.tools.pipeline.explain import gradcam_frozen
from p53hcc.tools.pipeline.freeze import load_model, read_manifest
from p53hcc.tools.pipeline.image_ranges import image_range_problems, image_values
from p53hcc.tools.preprocessing.run import preprocess_cohort
from p53hcc.tools.radiomics.extract import extract_cohort
from p53hcc.tools.schema import CLINICAL_COLUMNS

__all__ = ["DlScorer", "clinical_problems", "evaluate_cohort", "predict_cohort", "read_manifest", "score_patients"]
log = logging.getLogger(__name__)
DlScorer = Callable[[Path, Path, Path, dict], pd.DataFrame]


# ------------------------------------------------------------------------------------------------- prediction
def harmonisation_of(manifest: dict) -> dict:
    """The frozen model's scanner harmonisation record: ``method`` (``none`` for studies without one) and the
    ``batch_column`` naming each patient's scanner."""
    record = manifest.get("harmonisation") or {}
    return {**record, "method": record.get("method") or "none", "batch_column": record.get("batch_column")}


def score_patients(bundle: dict, cohort: pd.DataFrame, radiomics: pd.DataFrame, dl_scores: pd.Series | None
                   ) -> pd.DataFrame:
    """Apply the frozen fusion models to patients whose radiomics features and DL score are computed.

    Args:
        bundle: :func:`load_model` output.
        cohort: cohort rows (raw clinical columns, ``patient_id``).
        radiomics: one row per patient (``patient_id`` column or index), the study's feature columns.
        dl_scores: DL probability per patient (index ``patient_id``) from the frozen network; ``None`` when the
            study chose no DL model (every candidate degenerate), and then there is no ``dl`` column.

    Returns:
        ``patient_id, clinical, radiomics, [dl,] probability, predicted_class, points_<input>..., total_points``.
    """
    cohort = cohort.assign(patient_id=cohort["patient_id"].astype(str)).sort_values("patient_id")
    ids = pd.Index(cohort["patient_id"], name="patient_id")
    rad = radiomics.set_index("patient_id") if "patient_id" in radiomics.columns else radiomics
    rad.index = rad.index.astype(str)
    feats = bundle["radiomics_features"]
    missing = [pid for pid in ids if pid not in rad.index]
    if missing:
        raise P53hccError(f"patient {missing[0]}: no radiomics features (extraction failed?)")
    absent = [f for f in feats if f not in rad.columns]
    if absent:
        raise P53hccError(f"radiomics table lacks {len(absent)} feature(s) of the frozen model, e.g. {absent[0]}")
    clinical = cohort.reset_index(drop=True)[["patient_id", *[c for c in CLINICAL_COLUMNS if c in cohort]]]
    Xr = rad.loc[ids, feats]
    harmonisation = harmonisation_of(bundle["manifest"])
    if harmonisation["method"] != "none":  # new scanners: the frozen harmoniser's documented rule
        Xr = with_batch(Xr, batch_of(cohort, harmonisation["batch_column"]))
    X = pd.DataFrame({"clinical": bundle["clinical"].predict_proba(clinical)[:, 1],
                      "radiomics": bundle["radiomics"].predict_proba(Xr)[:, 1]}, index=ids)
    if bundle["manifest"].get("dl"):
        if dl_scores is None:
            raise P53hccError("the frozen model has a DL component but no DL scores were given")
        dl = dl_scores.copy()
        dl.index = dl.index.astype(str)
        if not set(ids) <= set(dl.index):
            raise P53hccError(f"patient {min(set(ids) - set(dl.index))}: no DL score")
        X["dl"] = dl.loc[ids].to_numpy(float)
    out = X.copy()
    out["probability"] = bundle["combined"].predict_proba(X)[:, 1]
    thr = bundle["manifest"]["threshold"]
    if thr is None:  # the combined model was constant on the training cohort: no operating point exists
        log.warning("the frozen combined model has no threshold (%s): predicted_class left empty",
                    bundle["manifest"].get("nomogram_note") or "constant on the training cohort")
        out["predicted_class"] = pd.array([pd.NA] * len(out), dtype="Int64")
    else:
        out["predicted_class"] = (out["probability"] >= float(thr)).astype(int)
    spec = bundle["manifest"]["nomogram"]
    if spec:  # None when every input has weight 0 (manifest "nomogram_note" says so)
        nomo = Nomogram(coefs=spec["coefs"], intercept=spec["intercept"], scale=spec["scale"], refs=spec["refs"],
                        ranges={k: tuple(v) for k, v in spec["ranges"].items()})
        pts = nomo.points(pd.DataFrame({k: logit(X[k].to_numpy()) for k in spec["coefs"]}, index=ids))
        out = out.join(pts[[c for c in pts.columns if c.startswith("points_")] + ["total_points"]])
    return out.reset_index()


def default_dl_scorer(model_dir: Path, cohort_csv: Path, work: Path, manifest: dict) -> pd.Series:
    """DL scores of new patients from the frozen network (:func:`p53hcc.tools.dl.frozen.predict_frozen`)."""
    dl = manifest["dl"]
    return predict_frozen(model_dir / dl["weights"], cohort_csv, work, arm=dl["arm"], net=dl["net"],
                          batch_column=harmonisation_of(manifest)["batch_column"])


def predict_cohort(model_dir: str | Path, cohort_csv: str | Path, out: str | Path,
                   dl_scorer: DlScorer = default_dl_scorer, gradcam: bool = True, purpose: str = "cohort",
                   workers: int | None = None) -> Path:
    """Frozen model -> ``out/predictions.csv`` for new patients (and Grad-CAM images under ``out/gradcam/``).

    The new cohort is validated (files, values, every clinical column the frozen clinical model needs, ROIs
    against the frozen radiomics parameters; ``purpose="evaluate"`` also needs both classes), then preprocessed
    and radiomics-extracted with the frozen parameters into ``out/work/``; nothing is refitted. Its warnings (phase
    order, mask extent across phases, clinical values and image-derived values outside the training cohort's
    range) are logged and written per patient to the ``warnings`` column (empty when none): flagged, still scored.
    ``workers``: local processes of those steps (default all cores; 1 runs them inline, as the Deploy app does for
    one patient).
    """
    model_dir, cohort_csv, out = Path(model_dir), Path(cohort_csv).resolve(), Path(out)
    with folder_lock(out):
        return _predict(model_dir, cohort_csv, out, dl_scorer, gradcam, purpose, workers)


def _predict(model_dir: Path, cohort_csv: Path, out: Path, dl_scorer: DlScorer, gradcam: bool, purpose: str,
             workers: int | None = None) -> Path:
    bundle = load_model(model_dir)
    requirements = image_requirements(model_dir / "radiomics_params.yaml")
    problems = cohort_problems(cohort_csv, requirements, purpose=purpose, progress=False)
    raise_on_errors(cohort_csv, problems)
    ranges = bundle["manifest"].get("training_ranges")
    if ranges is None:
        log.info("%s stores no training ranges of the clinical values (frozen by an earlier version, or its cohort "
                 "table was gone): new values are not compared with them", model_dir)
    else:
        problems += range_problems(read_cohort(cohort_csv), ranges)
    for p in problems:  # pathology (Table 2 of a study) is not needed to predict
        if p.severity == "warning" and (p.patient_id is not None or p.column not in RAW_PATHOLOGY):
            log.warning("%s", p)
    harmonisation = harmonisation_of(bundle["manifest"])
    if harmonisation["method"] != "none":  # every patient's scanner, named before any heavy step
        batch_of(cohort_csv, harmonisation["batch_column"])
    (out / "predictions.csv").unlink(missing_ok=True)  # never leave an earlier cohort's predictions beside a failure
    work = out / "work"
    preprocess_cohort(cohort_csv, work, workers=workers,
                      params=bundle["manifest"]["preprocessing"]["config"].get("params"))
    radiomics = extract_cohort(cohort_csv, work, params=str(model_dir / "radiomics_params.yaml"), workers=workers)
    cohort = read_cohort(cohort_csv)
    problems += _image_range_problems(bundle, model_dir, cohort, radiomics)
    dl = dl_scorer(model_dir, cohort_csv, work, bundle["manifest"]) if bundle["manifest"].get("dl") else None
    pred = score_patients(bundle, cohort, radiomics, dl)
    pred["warnings"] = patient_warnings(problems, pred["patient_id"])
    dest = atomic_write_table(out / "predictions.csv", pred)
    if gradcam and bundle["manifest"].get("dl"):
        _gradcam_new(model_dir, cohort_csv, out, bundle["manifest"])
    return dest


def _image_range_problems(bundle: dict, model_dir: Path, cohort: pd.DataFrame, radiomics: pd.DataFrame) -> list:
    """New patients' image-derived values outside the training cohort's range (:mod:`.image_ranges`: the radiomics
    just extracted, the images' headers), each logged; none for a model frozen before the ranges were stored."""
    ranges = bundle["manifest"].get("image_ranges")
    if ranges is None:
        log.info("%s stores no training ranges of image-derived values (frozen by an earlier version): new images "
                 "are not compared with them", model_dir)
        return []
    found = image_range_problems(image_values(radiomics, cohort, ranges), ranges)
    for p in found:
        log.warning("%s", p)
    return found


def _gradcam_new(model_dir: Path, cohort_csv: Path, out: Path, manifest: dict) -> None:
    """Grad-CAM overlays of the frozen network for the new patients (a note instead when it cannot be made)."""
    import shutil

    dl = manifest["dl"]
    shutil.rmtree(out / "gradcam", ignore_errors=True)  # overlays of an earlier cohort predicted into this folder
    try:
        gradcam_frozen(model_dir / dl["weights"], cohort_csv, out / "gradcam", arm=dl["arm"], net=dl["net"],
                       work=out / "work")
    except P53hccError as err:  # e.g. a frozen model folder lacking a network
        atomic_write_text(out / "gradcam" / "NOT_AVAILABLE.txt", f"{err}\n")


# ------------------------------------------------------------------------------------------------- evaluation
DCA_THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)


def evaluation_metrics(pred: pd.DataFrame, y: pd.Series, threshold: float, split: str = "external",
                       thresholds=DCA_THRESHOLDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy metrics (AUC + DeLong CI, accuracy/sens/spec at the frozen threshold, calibration-in-the-large and
    slope, Brier, Hosmer-Lemeshow) for the combined model and its three inputs, plus their net-benefit curves.
    """
    df = pred.assign(patient_id=pred["patient_id"].astype(str)).set_index("patient_id")
    yy = y.copy()
    yy.index = yy.index.astype(str)
    yy = pd.to_numeric(yy.reindex(df.index), errors="coerce")
    keep = yy.notna().to_numpy()
    if keep.sum() < 2 or yy[keep].nunique() < 2:
        raise P53hccError("evaluate needs labelled patients of both classes (p53 0 and 1)")
    df, yv = df[keep], yy[keep].astype(int).to_numpy()
    frames = [model_metrics(yv, df["probability"].to_numpy(), threshold, model="combined", split=split)]
    components = [c for c in ("clinical", "radiomics", "dl") if c in df.columns]
    for comp in components:
        frames.append(model_metrics(yv, df[comp].to_numpy(), 0.5, model=comp, split=split)
                      .query("metric not in ['accuracy', 'sensitivity', 'specificity', 'ppv', 'npv', 'threshold']"))
    nb = net_benefit(yv, {"combined": df["probability"].to_numpy(), **{c: df[c].to_numpy() for c in components}},
                     thresholds=thresholds)
    return pd.concat(frames, ignore_index=True), nb


def evaluate_cohort(model_dir: str | Path, cohort_csv: str | Path, out: str | Path,
                    dl_scorer: DlScorer = default_dl_scorer) -> Path:
    """Externally validate the frozen model on a labelled cohort: ``metrics.csv``, ``net_benefit.csv``,
    ``report.html`` (internal-validation vs external AUC side by side, then the patients predict's checks flagged,
    or a line saying none was); returns the metrics path."""
    out = Path(out)
    with folder_lock(out):
        return _evaluate(Path(model_dir), Path(cohort_csv), out, dl_scorer)


def _evaluate(model_dir: Path, cohort_csv: Path, out: Path, dl_scorer: DlScorer) -> Path:
    for name in ("metrics.csv", "net_benefit.csv", "report.html"):  # an earlier evaluation's, if any
        (out / name).unlink(missing_ok=True)
    predict_cohort(model_dir, cohort_csv, out, dl_scorer=dl_scorer, gradcam=False, purpose="evaluate")
    pred = read_table(out / "predictions.csv")
    cohort = read_cohort(cohort_csv)
    y = cohort.set_index("patient_id")["p53"]
    manifest = read_manifest(model_dir)
    thr = manifest["threshold"]  # None: a constant combined model (its metrics are NaN with the reason)
    metrics, nb = evaluation_metrics(pred, y, float("nan") if thr is None else float(thr))
    dest = atomic_write_table(out / "metrics.csv", metrics)
    atomic_write_table(out / "net_benefit.csv", nb)
    study_metrics = Path(model_dir) / "study_metrics.csv"
    write_evaluation_report(out / "report.html", metrics, read_table(study_metrics) if study_metrics.exists() else None,
                            dl_model=(manifest["dl"] or {}).get("model"), model_dir=Path(model_dir), predictions=pred)
    return dest
