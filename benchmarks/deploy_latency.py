"""Latency of the MONAI Deploy app per patient, bundle + combined model, at the synthetic demo and paper sizes.

For each size one new synthetic patient is written as a DICOM study (series + SEG per phase, clinical.json) and
scored by the app itself (``python -m deploy`` in the Deploy environment, its start-up included; the wall time and
the peak resident memory of the process) ``--repeats`` times, and once more step by step in this process to say
where the time goes: start-up (importing the app: the SDK, MONAI, p53hcc), reading and checking the series,
loading the volumes, preprocessing once (RAS, N4, 1 mm, z-score: both models' share), the bundle (ROI crops and
network), the combined model (``predict`` on the seeded preprocessing: checks, radiomics, fusion, nomogram) and
writing the SR and JSON. The study is a small one trained for the purpose with the paper's preprocessing and
radiomics settings and 256-pixel crops (``--study`` reuses one), since the per-patient work depends on those, not
on how well the network was trained.

Usage: ``.venv/bin/python benchmarks/deploy_latency.py [--study DIR] [--repeats 2]`` (``make deploy-env`` first)
-> ``benchmarks/results/deploy_latency.json``. The machine's load is recorded before and after: on a shared
machine the numbers are only as good as it was quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# run as a script, this folder is sys.path[0] and its radiomics.py would shadow PyRadiomics (`import radiomics`)
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
TARGET_S = 30.0
STUDY = dict(profile="demo", nets="resnet18", folds=2, epochs=1, spatial_size=256, batch_size=8,
             **{"dl.arms": "mc", "gradcam.n": 1, "fusion.nesting": "apparent", "preprocess.params": "paper",
                "radiomics.params": "paper"})


def _machine() -> dict:
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True,
                         check=False).stdout.splitlines()[1:6]
    return {"cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "busiest_processes": [ln.strip() for ln in top], "platform": platform.platform(),
            "python": platform.python_version()}


def _study(work: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    study = work / "study"
    if (study / "model" / "manifest.json").is_file():
        return study
    from p53hcc.tools.pipeline.study import run_study
    from tests.conftest import make_tiny_cohort

    run_study(make_tiny_cohort(work / "cohort", n=28), out=study, **STUDY)
    return study


def _models(study: Path, work: Path) -> Path:
    from p53hcc.tools.export.bundle import export_bundle

    models = work / "models"
    if not models.is_dir():
        bundle = export_bundle(study, arm="mc", out=work / "export")
        shutil.copytree(bundle, models / bundle.name)
        shutil.copytree(study / "model", models / "study_model")
    return models


def _patient(work: Path, size: str) -> tuple[Path, dict]:
    """One new synthetic patient of ``size`` as a DICOM study with its clinical.json; its image facts."""
    import pandas as pd

    from p53hcc.tools.cohort.synth.cohort import make_cohort
    from p53hcc.tools.deploy.combined import clinical_json_values

    root = work / f"patients-{size}"
    if not (root / "cohort.csv").is_file():
        make_cohort(2, root, seed=21, second_reader=False, profile="external", image_format="dicom", size=size)
    table = pd.read_csv(root / "cohort.csv", dtype={"patient_id": str}).set_index("patient_id")
    pid = table.index[0]
    folder = root / "dicom" / pid
    (folder / "clinical.json").write_text(json.dumps(clinical_json_values(table.loc[pid])))
    slices = {p: len(list((folder / p).iterdir())) for p in ("ap", "pvp", "dp")}
    return folder, {"patient": pid, "slices": slices, "scanner": str(table.loc[pid].get("scanner", ""))}


def _app_runs(python: Path, folder: Path, models: Path, work: Path, repeats: int) -> dict:
    """The app as a hospital runs it: one process per patient; wall time and peak memory per run."""
    walls, peaks = [], []
    for i in range(repeats):
        out = work / f"app-out-{i}"
        shutil.rmtree(out, ignore_errors=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        done = subprocess.run([str(python), "-m", "deploy", "-i", str(folder), "-m", str(models), "-o", str(out)],
                              cwd=REPO, capture_output=True, text=True, check=False)
        walls.append(round(time.perf_counter() - t0, 2))
        if done.returncode != 0:
            raise SystemExit(f"the app failed:\n{done.stderr[-3000:]}")
        peaks.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    return {"wall_s": walls, "median_wall_s": sorted(walls)[len(walls) // 2],
            "peak_rss_mb": round(max(peaks) / 1024, 1),
            "result": json.loads((work / "app-out-0" / "result.json").read_text())["combined"]["probability"]}


def _startup(python: Path) -> float:
    """Seconds to import the app (SDK, MONAI, p53hcc) in a fresh process."""
    t0 = time.perf_counter()
    subprocess.run([str(python), "-c", "import deploy.app"], cwd=REPO, check=True, capture_output=True)
    return round(time.perf_counter() - t0, 2)


def _breakdown(folder: Path, models: Path, work: Path) -> dict:
    """The app's steps timed one by one in this process (no SDK: the same functions its operators call)."""
    import monai.transforms  # noqa: F401 - imports are start-up's share, not the first step's

    from p53hcc.tools.deploy import run as deploy_run
    from p53hcc.tools.deploy import shared_preprocessing
    from p53hcc.tools.deploy.dicom_study import load_volume, nifti_masks, scan, select_series
    from p53hcc.tools.deploy.series_checks import check_series
    from p53hcc.tools.deploy.shared_preprocessing import BUNDLE_OVERRIDES

    times: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        times[name] = round(time.perf_counter() - t0, 2)
        return out

    def read_and_check():
        found = scan(folder)
        images, masks = select_series(found, nifti_masks(folder))
        check_series(images, masks)
        return images, masks

    images, masks = timed("read_and_check_series", read_and_check)
    timed("load_volumes", load_volume, images, masks)
    real = shared_preprocessing.preprocess_once
    shared_preprocessing.preprocess_once = lambda *a, **k: timed("preprocess_once", real, *a, **k)
    try:
        bundle, study_model, study = deploy_run.prepare(folder, models)  # reads again, then preprocesses once
    finally:
        shared_preprocessing.preprocess_once = real
    result = timed("bundle_roi_and_network", deploy_run.bundle_inference, bundle, study.volume, "cpu",
                   BUNDLE_OVERRIDES)
    result = {**result, "dl_note": study.dl_note(), "inputs": study.identities(),
              **timed("combined_model", deploy_run.combined_for, study, study_model, result["probability"])}
    timed("write_sr_and_json", deploy_run.write_outputs, work / "breakdown-out", result, study.evidence)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=None, help="a finished study (default: train a small one)")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work" / "deploy")
    ap.add_argument("--python", type=Path, default=REPO / ".venv-deploy" / "bin" / "python",
                    help="the Deploy environment's interpreter (make deploy-env)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sizes", default="demo,paper")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "deploy_latency.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    machine_before = _machine()
    study = _study(args.work, args.study)
    models = _models(study, args.work)
    report = {"target_s_per_patient": TARGET_S, "machine_before": machine_before, "study": str(study),
              "study_settings": STUDY if args.study is None else "given", "startup_s": _startup(args.python)}
    for size in args.sizes.split(","):
        folder, facts = _patient(args.work, size)
        app = _app_runs(args.python, folder, models, args.work, args.repeats)
        report[size] = {**facts, "app": app, "breakdown_s": _breakdown(folder, models, args.work)}
        report[size]["meets_target"] = app["median_wall_s"] <= TARGET_S
        print(size, json.dumps(report[size]), flush=True)
    report["machine_after"] = _machine()
    load = max(report["machine_before"]["load_average"][0], report["machine_after"]["load_average"][0])
    report["machine_busy"] = load > 1.5 * (os.cpu_count() or 1)  # other work shared the cores: times inflated
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
