"""The frozen study model and its use on new patients: ``freeze_model``, ``predict_cohort``, ``evaluate_cohort``.

``model/`` holds everything a new patient needs, with nothing refitted: the study parameters (preprocessing,
radiomics parameter file), the fitted radiomics / clinical / combined models (joblib), the chosen network's
full-training-cohort weights, the operating threshold (Youden on training out-of-fold scores), the nomogram
spec and a ``manifest.json`` with file hashes. ``predict_cohort`` recomputes the three component scores for new
patients and applies the frozen models; ``evaluate_cohort`` does the same on a labelled cohort and reports
discrimination (AUC, DeLong CI), calibration-in-the-large and slope, and net benefit - external validation.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tools.errors import P53hccError
from tools.io_utils import atomic_write_json, atomic_write_table, atomic_write_text, file_sha256, read_table

MODEL_FILES = ("clinical.joblib", "radiomics.joblib", "combined.joblib")
DlScorer = Callable[[Path, Path, Path, dict], pd.DataFrame]


# --------------------------------------------------------------------------------------------------- freezing
def _threshold(study_dir: Path, model: str = "combined") -> float:
    m = read_table(study_dir / "metrics.csv")
    row = m[(m["model"] == model) & (m["metric"] == "threshold")]
    if row.empty:
        raise P53hccError(f"{study_dir / 'metrics.csv'}: no threshold for the {model} model (run statistics)")
    return float(row["estimate"].iloc[0])


def _nomogram_spec(study_dir: Path, combined) -> dict:
    X = read_table(study_dir / "fusion" / "combined_inputs.parquet").set_index("patient_id")
    s = read_table(study_dir / "scores.parquet")
    train = s[(s["model"] == "combined") & (s["split"] == "train")]["patient_id"].astype(str)
    nomo = combined.nomogram(X.loc[X.index.intersection(train)])
    return {"coefs": nomo.coefs, "intercept": nomo.intercept, "ranges": {k: list(v) for k, v in nomo.ranges.items()},
            "scale": nomo.scale, "refs": nomo.refs, "predictor_scale": "logit of the component probability"}


def freeze_model(study_dir: str | Path) -> Path:
    """Write ``study_dir/model/`` (atomically: built beside it, then renamed into place); returns its path."""
    import joblib

    study_dir = Path(study_dir)
    cfg = yaml.safe_load((study_dir / "study.yaml").read_text())
    selection = json.loads((study_dir / "selection.json").read_text())
    dest = study_dir / "model"
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=study_dir))
    try:
        for name in MODEL_FILES:
            shutil.copy2(study_dir / "fusion" / name, tmp / name)
        shutil.copy2(study_dir / "fusion" / "radiomics_features.json", tmp / "radiomics_features.json")
        shutil.copy2(study_dir / "study.yaml", tmp / "study.yaml")
        shutil.copy2(study_dir / "metrics.csv", tmp / "study_metrics.csv")
        from tools.radiomics import load_params

        atomic_write_text(tmp / "radiomics_params.yaml",
                          yaml.safe_dump(load_params(cfg["radiomics"]["params"]), sort_keys=False))
        chosen = selection["chosen"]
        net_src = study_dir / "dl" / chosen["arm"] / chosen["net"]
        net_dst = tmp / "dl" / chosen["arm"] / chosen["net"]
        if (net_src / "full").is_dir():
            shutil.copytree(net_src / "full", net_dst / "full")
        for extra in ("lasso.json", "head.joblib", "ff_head.joblib"):
            if (net_src / extra).exists():
                shutil.copy2(net_src / extra, net_dst / extra)
        combined = joblib.load(study_dir / "fusion" / "combined.joblib")
        manifest = {
            "format": "p53hcc-model/1",
            "study": str(study_dir.resolve()),
            "preprocessing": {"steps": ["N4 bias-field correction", "resample 1x1x1 mm", "z-score"],
                              "config": cfg.get("preprocess", {})},
            "radiomics": {"params_file": "radiomics_params.yaml", "params": cfg["radiomics"]["params"],
                          "icc_threshold": cfg["radiomics"].get("icc_threshold"), "features": "radiomics_features.json"},
            "dl": {"arm": chosen["arm"], "net": chosen["net"], "model": chosen["model"],
                   "weights": f"dl/{chosen['arm']}/{chosen['net']}/full", "train_params": cfg.get("dl", {}),
                   "selection_rule": selection.get("rule")},
            "fusion": {"clinical": "clinical.joblib", "radiomics": "radiomics.joblib", "combined": "combined.joblib",
                       "combined_inputs": list(combined.feature_names_)},
            "threshold": _threshold(study_dir, "combined"),
            "component_thresholds": {m: _threshold(study_dir, m) for m in ("clinical", "radiomics", chosen["model"])},
            "nomogram": _nomogram_spec(study_dir, combined),
        }
        manifest["files"] = {p.relative_to(tmp).as_posix(): file_sha256(p)
                             for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_json(tmp / "manifest.json", manifest)
        if dest.exists():
            old = study_dir / f".model.old.{os.getpid()}"
            os.replace(dest, old)
            shutil.rmtree(old)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def load_model(model_dir: str | Path) -> dict:
    """The manifest plus the fitted fusion models (keys ``clinical``, ``radiomics``, ``combined``)."""
    import joblib

    model_dir = Path(model_dir)
    path = model_dir / "manifest.json"
    if not path.is_file():
        raise P53hccError(f"{model_dir}: not a frozen p53hcc model (no manifest.json); run `p53hcc study` first")
    manifest = json.loads(path.read_text())
    bundle = {"manifest": manifest, "dir": model_dir}
    for key, fname in (("clinical", "clinical.joblib"), ("radiomics", "radiomics.joblib"),
                       ("combined", "combined.joblib")):
        bundle[key] = joblib.load(model_dir / fname)
    bundle["radiomics_features"] = json.loads((model_dir / "radiomics_features.json").read_text())
    return bundle


# ------------------------------------------------------------------------------------------------- prediction
def score_patients(bundle: dict, cohort: pd.DataFrame, radiomics: pd.DataFrame, dl_scores: pd.Series
                   ) -> pd.DataFrame:
    """Apply the frozen fusion models to patients whose radiomics features and DL score are computed.

    Args:
        bundle: :func:`load_model` output.
        cohort: cohort rows (raw clinical columns, ``patient_id``).
        radiomics: one row per patient (``patient_id`` column or index), the study's feature columns.
        dl_scores: DL probability per patient (index ``patient_id``) from the frozen network.

    Returns:
        ``patient_id, clinical, radiomics, dl, probability, predicted_class, points_<input>..., total_points``.
    """
    from fusion.models import logit
    from fusion.nomogram import Nomogram

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
    dl = dl_scores.copy()
    dl.index = dl.index.astype(str)
    if not set(ids) <= set(dl.index):
        raise P53hccError(f"patient {min(set(ids) - set(dl.index))}: no DL score")
    X = pd.DataFrame({"clinical": bundle["clinical"].predict_proba(cohort.reset_index(drop=True))[:, 1],
                      "radiomics": bundle["radiomics"].predict_proba(rad.loc[ids, feats])[:, 1],
                      "dl": dl.loc[ids].to_numpy(float)}, index=ids)
    out = X.copy()
    out["probability"] = bundle["combined"].predict_proba(X)[:, 1]
    thr = float(bundle["manifest"]["threshold"])
    out["predicted_class"] = (out["probability"] >= thr).astype(int)
    spec = bundle["manifest"]["nomogram"]
    nomo = Nomogram(coefs=spec["coefs"], intercept=spec["intercept"],
                    ranges={k: tuple(v) for k, v in spec["ranges"].items()}, scale=spec["scale"], refs=spec["refs"])
    pts = nomo.points(pd.DataFrame({k: logit(X[k].to_numpy()) for k in spec["coefs"]}, index=ids))
    out = out.join(pts[[c for c in pts.columns if c.startswith("points_")] + ["total_points"]])
    return out.reset_index()


def default_dl_scorer(model_dir: Path, cohort_csv: Path, work: Path, manifest: dict) -> pd.Series:
    """DL scores of new patients from the frozen network (delegates to ``tools.train.predict_frozen``)."""
    try:
        from tools.train import predict_frozen  # type: ignore[attr-defined]
    except ImportError as err:
        raise P53hccError("scoring new patients with the frozen network needs tools.train.predict_frozen, "
                          "which this installation lacks") from err
    dl = manifest["dl"]
    return predict_frozen(model_dir / dl["weights"], cohort_csv, work, arm=dl["arm"], net=dl["net"])


def predict_cohort(model_dir: str | Path, cohort_csv: str | Path, out: str | Path,
                   dl_scorer: DlScorer = default_dl_scorer, gradcam: bool = True) -> Path:
    """Frozen model -> ``out/predictions.csv`` for new patients (and Grad-CAM images under ``out/gradcam/``).

    The new cohort is validated, preprocessed and radiomics-extracted with the frozen parameters into
    ``out/work/``; nothing is refitted.
    """
    from tools.cohort import read_cohort, validate_cohort
    from tools.preprocess import preprocess_cohort
    from tools.radiomics import extract_cohort

    model_dir, cohort_csv, out = Path(model_dir), Path(cohort_csv).resolve(), Path(out)
    bundle = load_model(model_dir)
    errors = [str(p) for p in validate_cohort(cohort_csv, progress=False) if getattr(p, "severity", "error") == "error"]
    if errors:
        raise P53hccError(f"{cohort_csv}: {len(errors)} problem(s): " + "; ".join(errors[:5]))
    work = out / "work"
    preprocess_cohort(cohort_csv, work, params=bundle["manifest"]["preprocessing"]["config"].get("params"))
    radiomics = extract_cohort(cohort_csv, work, params=str(model_dir / "radiomics_params.yaml"))
    dl = dl_scorer(model_dir, cohort_csv, work, bundle["manifest"])
    pred = score_patients(bundle, read_cohort(cohort_csv), radiomics, dl)
    dest = atomic_write_table(out / "predictions.csv", pred)
    if gradcam:
        _gradcam_new(model_dir, cohort_csv, out, bundle["manifest"])
    return dest


def _gradcam_new(model_dir: Path, cohort_csv: Path, out: Path, manifest: dict) -> None:
    """Grad-CAM overlays of the frozen network for the new patients (skipped with a note when unsupported)."""
    try:
        from tools.gradcam import gradcam_frozen  # type: ignore[attr-defined]
    except ImportError:
        atomic_write_text(out / "gradcam" / "NOT_AVAILABLE.txt",
                          "tools.gradcam.gradcam_frozen is not available in this installation\n")
        return
    dl = manifest["dl"]
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
    from fusion.stats import model_metrics, net_benefit

    df = pred.assign(patient_id=pred["patient_id"].astype(str)).set_index("patient_id")
    yy = y.copy()
    yy.index = yy.index.astype(str)
    yy = pd.to_numeric(yy.reindex(df.index), errors="coerce")
    keep = yy.notna().to_numpy()
    if keep.sum() < 2 or yy[keep].nunique() < 2:
        raise P53hccError("evaluate needs labelled patients of both classes (p53 0 and 1)")
    df, yv = df[keep], yy[keep].astype(int).to_numpy()
    frames = [model_metrics(yv, df["probability"].to_numpy(), threshold, model="combined", split=split)]
    for comp in ("clinical", "radiomics", "dl"):
        frames.append(model_metrics(yv, df[comp].to_numpy(), 0.5, model=comp, split=split)
                      .query("metric not in ['accuracy', 'sensitivity', 'specificity', 'ppv', 'npv', 'threshold']"))
    nb = net_benefit(yv, {"combined": df["probability"].to_numpy(), "clinical": df["clinical"].to_numpy(),
                          "radiomics": df["radiomics"].to_numpy(), "dl": df["dl"].to_numpy()},
                     thresholds=thresholds)
    return pd.concat(frames, ignore_index=True), nb


def evaluate_cohort(model_dir: str | Path, cohort_csv: str | Path, out: str | Path,
                    dl_scorer: DlScorer = default_dl_scorer) -> Path:
    """Externally validate the frozen model on a labelled cohort: ``metrics.csv``, ``net_benefit.csv``,
    ``report.html`` (internal-validation vs external AUC side by side); returns the metrics path."""
    from tools.cohort import read_cohort

    out = Path(out)
    predict_cohort(model_dir, cohort_csv, out, dl_scorer=dl_scorer, gradcam=False)
    pred = read_table(out / "predictions.csv")
    cohort = read_cohort(cohort_csv)
    y = cohort.set_index("patient_id")["p53"]
    manifest = load_model(model_dir)["manifest"]
    metrics, nb = evaluation_metrics(pred, y, float(manifest["threshold"]))
    dest = atomic_write_table(out / "metrics.csv", metrics)
    atomic_write_table(out / "net_benefit.csv", nb)
    write_evaluation_report(Path(model_dir), out, metrics)
    return dest


def write_evaluation_report(model_dir: Path, out: Path, metrics: pd.DataFrame) -> Path:
    """A small self-contained HTML page: external vs the study's own validation AUC with CIs, calibration."""
    import html

    study = read_table(model_dir / "study_metrics.csv") if (model_dir / "study_metrics.csv").exists() else None
    dl_model = json.loads((model_dir / "manifest.json").read_text())["dl"]["model"]
    rows = []
    for comp, study_name in (("combined", "combined"), ("clinical", "clinical"), ("radiomics", "radiomics"),
                             ("dl", dl_model)):
        ext = metrics[(metrics["model"] == comp) & (metrics["metric"] == "auc")]
        row, internal = {"Model": comp}, {}
        if study is not None:
            for sp in ("train", "validation"):
                s = study[(study["model"] == study_name) & (study["split"] == sp) & (study["metric"] == "auc")]
                if len(s):
                    r = s.iloc[0]
                    internal[sp] = float(r.estimate)
                    row[f"AUC {sp}"] = f"{r.estimate:.3f} ({r.ci_low:.3f}–{r.ci_high:.3f})"
        if len(ext):
            r = ext.iloc[0]
            row["AUC external"] = f"{r.estimate:.3f} ({r.ci_low:.3f}–{r.ci_high:.3f})"
            if "validation" in internal:
                row["AUC drop (validation − external)"] = f"{internal['validation'] - r.estimate:+.3f}"
        for key in ("calibration_intercept", "calibration_slope", "brier"):
            v = metrics[(metrics["model"] == comp) & (metrics["metric"] == key)]
            row[key.replace("_", " ")] = f"{v['estimate'].iloc[0]:.3f}" if len(v) else ""
        rows.append(row)
    table = pd.DataFrame(rows).to_html(index=False, escape=True, border=0)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>External evaluation</title><style>"
            "body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px}</style></head><body><h1>External evaluation of the frozen model</h1>"
            f"<p>Model: <code>{html.escape(str(model_dir))}</code>. AUC with DeLong 95% CI; calibration-in-the-large "
            "(0 ideal) and slope (1 ideal) by logistic recalibration; net benefit in net_benefit.csv. "
            "AUC train is the study's out-of-fold estimate, AUC validation its internal validation cohort; the "
            "drop is internal validation minus external AUC (positive: worse on the external cohort; compare it "
            "with the width of the CIs).</p>"
            f"{table}</body></html>")
    return atomic_write_text(out / "report.html", page)
