"""``p53hcc federated``: the study as an NVIDIA FLARE job, run in FLARE's simulator or exported for a real
(provisioned) deployment; the same job either way.

The job: the server runs :class:`~p53hcc.tools.federated.controller.StudyController` (the protocol of
:mod:`.server`); every site runs the Client API script :mod:`.client`, which reads only its own cohort CSV and
images. In the simulator each site is its own process and the cohort is split by ``site_column`` into one CSV per
site (``OUT/sites/<site>/cohort.csv``, the stand-in for each hospital's own table). On a real deployment each
site keeps its CSV where it likes and says where through ``P53HCC_SITE_COHORT`` (docs/federated.md).
"""
from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from p53hcc.tools.config.schema import Federated
from p53hcc.tools.errors import InputError, P53hccError
from p53hcc.tools.io import atomic_write_json, atomic_write_text
from p53hcc.tools.schema import IMAGE_COLUMNS, R2_MASK_COLUMNS

log = logging.getLogger(__name__)
JOB_NAME = "p53hcc_federated"
#: FLARE's polling intervals (seconds): the defaults (0.5-2 s) make every protocol round cost ~3 s.
TASK_CHECK_PERIOD = 0.02
TASK_REQUEST_INTERVAL = 0.05


#: The demo's hospitals: the synthetic cohort's seven internal scanners grouped into three centres (a scanner
#: alone has too few patients at the demo's 120 for three stratified folds).
DEMO_CENTRES = {"S1_Aera_1.5T": "centre-1", "S4_Prisma_3T": "centre-1", "S7_Ingenia_3T": "centre-1",
                "S2_Skyra_3T": "centre-2", "S5_uMR770_3T": "centre-2",
                "S3_Avanto_1.5T": "centre-3", "S6_SignaHDxt_1.5T": "centre-3"}


def demo_cohort(out: str | Path, synth: dict) -> Path:
    """The synthetic demo cohort (``study``'s ``synth`` settings) with a ``centre`` column (:data:`DEMO_CENTRES`)."""
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    csv = Path(out) / "cohort" / "cohort.csv"
    if not csv.is_file():
        make_cohort(n=synth["n"], out=csv.parent, seed=synth["seed"], size=synth["size"], second_reader=False,
                    profile=synth["profile"])
    df = pd.read_csv(csv)
    if "centre" not in df.columns:
        df["centre"] = df["scanner"].map(DEMO_CENTRES)
        atomic_write_text(csv, df.to_csv(index=False))
    return csv


def site_name(value: str) -> str:
    """A FLARE client name for a site value (letters, digits, ``-``, ``_``; ``site-`` prefix)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", str(value)).strip("-")
    if not slug:
        raise InputError(None, f"site value {value!r} gives an empty site name")
    return f"site-{slug}"


def split_cohort(cohort_csv: str | Path, site_column: str, out: str | Path) -> dict[str, Path]:
    """One cohort CSV per site (absolute image paths) under ``out/<site>/cohort.csv``; ``{site name: csv}``."""
    from p53hcc.tools.cohort.manifest import read_cohort

    df = read_cohort(cohort_csv)
    if site_column not in df.columns:
        raise InputError(None, f"the site column is not in {cohort_csv}", column=site_column)
    blank = df[site_column].isna() | (df[site_column].astype(str).str.strip() == "")
    if blank.any():
        raise InputError(str(df.loc[blank, "patient_id"].iloc[0]), "no site value", column=site_column)
    raw = pd.read_csv(cohort_csv, dtype=str, keep_default_na=False)
    for col in [c for c in raw.columns if c in (*IMAGE_COLUMNS, *R2_MASK_COLUMNS, "mask", "mask_r2")]:
        raw[col] = [v if not v else str((Path(cohort_csv).resolve().parent / v).resolve()) for v in raw[col]]
    names = {v: site_name(v) for v in sorted(df[site_column].astype(str).unique())}
    if len(set(names.values())) < len(names):
        raise InputError(None, f"site values {sorted(names)} give clashing site names", column=site_column)
    out = Path(out)
    paths = {}
    for value, name in names.items():
        path = out / name / "cohort.csv"
        atomic_write_text(path, raw[raw[site_column].astype(str) == value].to_csv(index=False))
        paths[name] = path
    return paths


def write_job(cfg: dict, fl: Federated, sites: list[str], dest: Path, out: Path,
              site_csvs: dict[str, Path] | None = None) -> Path:
    """Write the FLARE job folder (``dest/<JOB_NAME>``): the study controller on the server, the Client API script
    on every site; returns its path.

    FLARE's ``FedJob`` writes the folder (client apps, meta, the server's polling interval); the server's workflow
    entry is then pointed at :class:`~p53hcc.tools.federated.controller.StudyController` by its import path:
    ``FedJob`` would copy the controller's source file into the job instead, which fails for a package installed
    in development mode and is not wanted anyway (every site and the server install p53hcc). ``site_csvs`` (the
    simulator) passes each site its CSV; without it (a real deployment) each site reads ``P53HCC_SITE_COHORT``.
    """
    from nvflare.app_common.workflows.fedavg import FedAvg
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

    from p53hcc.tools.federated import client

    job = FedJob(name=JOB_NAME, min_clients=len(sites))
    job.to_server(FedAvg(num_clients=len(sites), num_rounds=1))  # placeholder, replaced below
    job.to_server({"server": {"task_request_interval": TASK_REQUEST_INTERVAL}})
    for name in sites:
        args = [] if not site_csvs else ["--cohort", str(site_csvs[name]), "--work", str(out / "sites" / name / "work")]
        job.to(ScriptRunner(script=client.__file__, script_args=shlex.join(args), framework=FrameworkType.RAW), name)
    shutil.rmtree(dest / JOB_NAME, ignore_errors=True)
    job.export_job(str(dest))
    config = dest / JOB_NAME / "app_server" / "config" / "config_fed_server.json"
    server = json.loads(config.read_text())
    server["workflows"] = [{"id": "controller", "path": "p53hcc.tools.federated.controller.StudyController",
                            "args": {"cfg": cfg, "fl": fl.model_dump(), "sites": sites,
                                     # a deployment's server writes into its run folder
                                     "out": str(out / "server") if site_csvs else "p53hcc-server",
                                     "task_check_period": TASK_CHECK_PERIOD}}]
    atomic_write_json(config, server)
    if not site_csvs:  # a deployment: each site runs the script shipped in its app's custom/, not this checkout's
        for path in (dest / JOB_NAME).glob("app_*/config/config_fed_client.json"):
            client_cfg = json.loads(path.read_text())
            for ex in client_cfg.get("executors", []):
                args = ex.get("executor", {}).get("args", {})
                if "task_script_path" in args:
                    args["task_script_path"] = Path(args["task_script_path"]).name
            atomic_write_json(path, client_cfg)
    return dest / JOB_NAME


def run_federated(cohort: str | Path, out: str | Path, cfg: dict, fl: Federated,
                  export_only: bool = False) -> Path:
    """Split the cohort by site, run the job in FLARE's simulator (one process per site), write the report.

    With ``export_only`` the job is written to ``OUT/job`` for a real deployment instead of being run.
    """
    import subprocess
    import sys

    out = Path(out).resolve()
    site_csvs = split_cohort(cohort, fl.site_column, out / "sites")
    if len(site_csvs) < 2:
        raise P53hccError(f"column {fl.site_column!r} has {len(site_csvs)} site(s); a federation needs two or more")
    atomic_write_json(out / "federated.json", {"cohort": str(cohort), "sites": {k: str(v) for k, v in site_csvs.items()},
                                               "settings": fl.model_dump()})
    if export_only:
        return write_job(cfg, fl, list(site_csvs), out / "job", out)
    job = write_job(cfg, fl, list(site_csvs), out / "flare_job", out, site_csvs)
    workspace = out / "flare"
    shutil.rmtree(workspace, ignore_errors=True)
    summary_path = out / "server" / "summary.json"
    summary_path.unlink(missing_ok=True)  # never report an earlier run's summary
    t0 = time.perf_counter()
    log.info("federated: %d sites in FLARE's simulator (%s)", len(site_csvs), ", ".join(site_csvs))
    status = subprocess.run([sys.executable, "-m", "nvflare.private.fed.app.simulator.simulator", str(job),
                             "-w", str(workspace), "-c", ",".join(site_csvs), "-t", str(len(site_csvs))],
                            check=False).returncode
    if status != 0 or not summary_path.is_file():
        raise P53hccError(f"the federated job failed (status {status}); logs: {workspace}/server/log.txt and "
                          f"{workspace}/<site>/log.txt")
    summary = json.loads(summary_path.read_text())
    summary["simulator_wall_s"] = time.perf_counter() - t0
    atomic_write_json(summary_path, summary)
    from p53hcc.fusion.report.federated import write_federated_report

    return write_federated_report(out, summary)


def study_config(config: str | Path | None, profile: str, source: str = "argument",
                 **overrides: Any) -> tuple[dict, Federated]:
    """The study configuration (as ``p53hcc study``) and the federation's settings (its ``fl`` section, in the same
    YAML and ``--fl.*`` flags), both checked against the one schema (``FederatedStudyConfig``)."""
    from p53hcc.tools.config.schema import FederatedStudyConfig
    from p53hcc.tools.pipeline.config import resolve_config

    cfg = resolve_config(config, profile=profile, source=source, model=FederatedStudyConfig, **overrides)
    return cfg, Federated(**cfg.pop("fl"))
