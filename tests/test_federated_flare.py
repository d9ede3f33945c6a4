"""The federated study end to end in NVIDIA FLARE's simulator (one process per site), and what the server received.

One small run (2 centres, 40 patients, 16 px crops, one FedAvg round of one local epoch, the MC arm) from the
``p53hcc federated`` command; the privacy test reads the server's ledger of every reply (``server/ledger.jsonl``).
The FF arm (12 more networks per site, the FF head protocol) takes this run from ~6 to ~18 minutes on 2 loaded
cores, so it runs in the benchmark (benchmarks/federated.py) rather than in CI; its head's maths is covered by
tests/test_federated.py.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

#: What a site may send: the reply payload keys per task and the array names of a ``sums`` answer.
PAYLOAD_KEYS = {"prepare": {"site", "radiomics_features", *(f"{s}_{c}" for s in ("train", "validation", "external")
                                                          for c in (0, 1))},
                "sums": set(), "score": {"n_scored"}, "dl_train": {"n_train"}, "dl_outputs": {"n_train"},
                "finish": set()}
SUM_NAMES = {"grad", "hess", "llf", "n", "max_eta", "sum", "sumsq", "xtx", "n_rho", "u", "n10", "table", "cases",
             "controls", "case_sum", "control_sum", "sq_err"}


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory):
    from p53hcc.tools.cli import main
    from p53hcc.tools.cohort.synth.cohort import make_cohort

    root = tmp_path_factory.mktemp("fed")
    csv = make_cohort(40, root / "cohort", seed=1, size="demo", second_reader=False)
    df = pd.read_csv(csv)
    df["centre"] = np.where(np.arange(len(df)) % 2 == 0, "Hospital A", "Hospital B")
    df.to_csv(csv, index=False)
    out = root / "out"
    rc = main(["federated", str(csv), "--out", str(out), "--profile", "demo", "--fl.site_column", "centre",
               "--fl.rounds", "1", "--fl.net", "resnet18", "--fl.arms", "mc", "--dl.spatial_size", "16", "--dl.batch_size", "8",
               "--quiet"])
    assert rc == 0
    return out, df


def test_federated_study_runs_in_flare_and_writes_the_report(federated_run):
    out, _ = federated_run
    summary = json.loads((out / "server" / "summary.json").read_text())
    assert set(summary["sites"]) == {"site-Hospital-A", "site-Hospital-B"}
    assert set(summary["validation"]) == {"clinical", "radiomics", "mc_resnet18", "combined"}
    for model, r in summary["validation"].items():
        assert r["n_cases"] + r["n_controls"] == 12, model  # 30 % of 40 patients, every site's together
        assert 0 <= r["auc"] <= 1, model
    assert summary["rounds"] > 0 and all(b > 0 for b in summary["bytes_per_site"].values())
    page = (out / "report.html").read_text()
    assert "Federated" in page and "What each site revealed" in page
    import torch

    from p53hcc.tools.dl.nets import build_net

    # the full-cohort global network: the weights the bundle's network_def (MC: 3 channels) loads
    build_net("resnet18", in_channels=3).load_state_dict(
        torch.load(out / "server" / "models" / "mc" / "model.pt", weights_only=True))


def test_nothing_per_patient_reaches_the_server(federated_run):
    """Every reply the server received (the ledger) names only protocol fields; no patient id, no feature row, no
    column of per-patient clinical values appears in it."""
    from p53hcc.tools.io import read_table

    out, df = federated_run
    rows = [json.loads(line) for line in (out / "server" / "ledger.jsonl").read_text().splitlines() if line]
    assert {r["task"] for r in rows} >= {"prepare", "sums", "score", "dl_train", "finish"}
    text = (out / "server" / "ledger.jsonl").read_text()
    assert not [p for p in df["patient_id"] if p in text]
    assert "images" not in text and ".nii" not in text  # no file of a site named either
    for site in ("site-Hospital-A", "site-Hospital-B"):
        work = out / "sites" / site / "work"
        rad = read_table(work / "radiomics.parquet").set_index("patient_id").select_dtypes("number")
        own = pd.read_csv(out / "sites" / site / "cohort.csv")
        for r in (r for r in rows if r["site"] == site):
            assert r["values"] or not r["arrays"] or r["task"].startswith("dl_"), r["task"]
            assert set(r["payload"]) <= PAYLOAD_KEYS[r["task"]], r["task"]
            if r["task"] == "sums":
                assert {k.split("/", 1)[1] for k in r["arrays"]} <= SUM_NAMES
            for name, value in (r["values"] or {}).items():
                a = np.atleast_1d(np.asarray(value, float))
                if a.shape[-1] == rad.shape[1]:  # a vector over features: never one patient's features
                    for row in a.reshape(-1, a.shape[-1]):
                        assert not np.isclose(rad.to_numpy(), row, rtol=1e-9, atol=0).all(axis=1).any(), name
                if a.ndim == 1 and len(a) == len(own):  # a vector over this site's patients: never their ages
                    assert not np.allclose(np.sort(a), np.sort(own["age"].to_numpy(float))), name
