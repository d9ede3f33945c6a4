"""The sharing and deployment steps on a finished study, end to end: export the study's chosen DL arm as a
model-zoo bundle, write new synthetic patients as DICOM studies (series + DICOM SEG), and score one with the
MONAI Deploy app, with the patient's clinical values and the frozen study model, so the result has the combined
model and its nomogram points. Prints the app's result beside ``p53hcc predict``'s for the same patient.

Usage: ``python scripts/deploy_demo.py [--study study-demo] [--out STUDY/deploy-demo]`` (``make deploy-demo``
after ``make demo``). Needs the ``deploy`` extra: ``make deploy-demo`` runs it in ``.venv-deploy``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from p53hcc.tools.cohort.synth.cohort import make_cohort
from p53hcc.tools.deploy.combined import clinical_json_values
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.export.bundle import export_bundle
from p53hcc.tools.pipeline.predict import predict_cohort

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=Path("study-demo"))
    ap.add_argument("--out", type=Path, default=None, help="default STUDY/deploy-demo")
    ap.add_argument("--patients", type=int, default=2, help="new synthetic patients written as DICOM")
    args = ap.parse_args()
    study, out = args.study, args.out or args.study / "deploy-demo"
    if not (study / "model" / "manifest.json").is_file():
        raise SystemExit(f"{study}/model not found: run `make demo` (or `p53hcc study --out {study}`) first")
    chosen = json.loads((study / "selection.json").read_text()).get("chosen")
    if not chosen:
        raise SystemExit(f"{study} chose no DL model (every candidate degenerate): nothing to export")
    shutil.rmtree(out, ignore_errors=True)
    print(f"1/4 export {chosen['model']} (the study's DL component) as a model-zoo bundle")
    bundle = export_bundle(study, arm=chosen["arm"], net=chosen["net"], out=out / "export")
    models = out / "models"  # the app's models folder: the bundle and the frozen study model beside it
    shutil.copytree(bundle, models / bundle.name)
    shutil.copytree(study / "model", models / "study_model")
    print(f"2/4 {args.patients} new synthetic patients as DICOM series + DICOM SEG")
    cohort = make_cohort(args.patients, out / "new", seed=11, second_reader=False, profile="external",
                         image_format="dicom")
    table = pd.read_csv(cohort, dtype={"patient_id": str}).set_index("patient_id")
    pid = table.index[0]
    patient = Path(shutil.copytree(out / "new" / "dicom" / pid, out / "input" / pid))
    (patient / "clinical.json").write_text(json.dumps(clinical_json_values(table.loc[pid]), indent=2) + "\n")
    print(f"3/4 the MONAI Deploy app on patient {pid} (python -m deploy)")
    done = subprocess.run([sys.executable, "-m", "deploy", "-i", str(patient.resolve()), "-m",
                           str(models.resolve()), "-o", str((out / "result").resolve())], cwd=REPO, check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise P53hccError(f"the app failed:\n{done.stderr[-3000:]}")
    result = json.loads((out / "result" / "result.json").read_text())
    print("4/4 p53hcc predict on the same patients, for comparison")
    want = pd.read_csv(predict_cohort(study / "model", cohort, out / "predict", gradcam=False),
                       dtype={"patient_id": str}).set_index("patient_id").loc[pid]
    combined = result["combined"]
    rows = [("DL arm probability", result["probability"], want.get("dl")),
            ("combined probability", combined["probability"], want["probability"]),
            ("nomogram total points", combined["total_points"], want.get("total_points"))]
    print(f"\npatient {pid} (true P53 status in the synthetic cohort: {int(table.loc[pid, 'p53'])})")
    print(f"{'':24}{'Deploy app':>14}{'p53hcc predict':>16}")
    for name, got, ref in rows:
        print(f"{name:24}{_fmt(got):>14}{_fmt(ref):>16}")
    print(f"\nresult: {out / 'result' / 'result.json'} and {out / 'result' / 'result_sr.dcm'}")


def _fmt(value) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{float(value):.6g}"


if __name__ == "__main__":
    main()
