"""The report of a federated study (``OUT/report.html``): the study report's page and style, with the
"Federated" section: validation AUC with DeLong CI and calibration of every model from the sites' binned sums,
the sites, the protocol's rounds and bytes, and what each site revealed. Everything shown comes from
``OUT/server/summary.json``: the server never had a per-patient value to show.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from p53hcc.fusion.report.page import html_page, html_table, image_html, not_available
from p53hcc.tools.io import atomic_write_table, atomic_write_text

REVEALED = [
    "patient counts per split and outcome (the site table below)",
    ("sums over its selected training rows: gradients, Hessians and log-likelihoods of logistic fits (clinical, "
    "radiomics, FF head, combined), feature sums and sums of squares (z-scores), cross-products (PCA), the n-weighted "
    "Spearman matrix and per-feature Mann-Whitney U (the radiomics redundancy filter), 2 x 2 counts (Fisher's test)"),
    "weight updates of every DL network after each FedAvg round (MONAI FL, send_weight_diff)",
    "per score bin: counts of cases and controls and their summed scores, and the summed squared error (evaluation)",
]


def _auc_table(evaluation: dict, train_auc: dict) -> pd.DataFrame:
    rows = []
    for model, r in evaluation.items():
        ci = (f"{r['auc']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f})" if np.isfinite(r.get("ci_low", np.nan))
              else ("" if not np.isfinite(r.get("auc", np.nan)) else f"{r['auc']:.3f} (CI not estimable)"))
        rows.append({"model": model, "validation AUC (95% DeLong CI)": ci, "cases": r["n_cases"],
                     "controls": r["n_controls"], "Brier": r["brier"], "calibration slope": r["calibration_slope"],
                     "training OOF AUC": train_auc.get(model, np.nan), "note": r.get("note", "")})
    return pd.DataFrame(rows)


def _site_table(summary: dict) -> pd.DataFrame:
    rows = []
    for site, counts in summary["sites"].items():
        rows.append({"site": site, **{k.replace("_", " "): v for k, v in counts.items() if k != "site"},
                     "MB sent": summary["bytes_per_site"].get(site, 0) / 1e6})
    return pd.DataFrame(rows)


def federated_figure(evaluation: dict, path: Path) -> Path:
    """ROC curves (from the binned counts) and calibration points of every model on the validation patients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc, cal) = plt.subplots(1, 2, figsize=(10, 4.4))
    for model, r in evaluation.items():
        c = r.get("calibration") or {}
        if not c:
            continue
        roc_pts = r.get("roc")
        if roc_pts:
            roc.plot(roc_pts["fpr"], roc_pts["tpr"], label=f"{model} ({r['auc']:.2f})")
        cal.plot(c["mean_predicted"], c["observed"], "o-", label=model)
    roc.plot([0, 1], [0, 1], ":", color="grey")
    cal.plot([0, 1], [0, 1], ":", color="grey")
    roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, validation (federated)")
    cal.set(xlabel="mean predicted probability", ylabel="observed rate", title="Calibration, validation (federated)")
    for ax in (roc, cal):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_federated_report(out: str | Path, summary: dict) -> Path:
    """``OUT/report.html`` and ``OUT/tables/federated_*.csv`` of a federated study."""
    out = Path(out)
    auc = _auc_table(summary["validation"], summary.get("train_auc", {}))
    sites = _site_table(summary)
    atomic_write_table(out / "tables" / "federated_validation.csv", auc)
    atomic_write_table(out / "tables" / "federated_sites.csv", sites)
    fig = federated_figure(summary["validation"], out / "figures" / "federated.png")
    s = summary["settings"]
    methods = (f"<p>{len(summary['sites'])} sites (column <code>{html.escape(s['site_column'])}</code>) ran as NVIDIA "
               f"FLARE clients, each on its own rows and images; {summary['folds']} site-local folds; DL arms "
               f"{', '.join(s['arms']) or 'none'} by FedAvg of the bundles' train config through MONAI FL "
               f"({s['rounds']} round(s) x {s['local_epochs']} local epoch(s)); {summary['features']} radiomics "
               f"features common to every site. Chosen DL arm (higher federated training-cohort AUC): "
               f"{html.escape(str(summary.get('chosen_dl')))}.</p>")
    comb = summary["combined"]
    body = [
        "<h2 id='methods'>Methods actually run</h2>", methods,
        "<h2 id='federated'>Federated</h2>",
        "<h3>Validation cohort: discrimination and calibration</h3>", html_table(auc),
        (f"<p class='note'>AUC and DeLong CI of scores binned to 1/{s['bins']} (each site sends per-bin counts); "
        "Brier score and calibration slope exact (summed squared errors; federated Newton on logit(score)).</p>"),
        image_html(fig, "ROC (from the binned counts) and calibration points, validation patients of every site"),
        "<h3>Models</h3>",
        (f"<p>Clinical variables kept: {html.escape(', '.join(summary['clinical']['selected']) or 'none')}. "
        f"Radiomics: {summary['radiomics']['n_features']} features, {summary['radiomics']['n_spearman']} after the "
        f"federated Spearman filter, {len(summary['radiomics']['selected'])} kept by the federated LASSO "
        f"(C = {summary['radiomics']['lasso_C']:.3g}). Combined weights (per logit unit): "
        f"{html.escape(', '.join(f'{k} {v:.3f}' for k, v in comb['coefficients'].items()))}.</p>"),
        "<h3>Sites, rounds and bytes</h3>", html_table(sites),
        f"<p>{summary['rounds']} protocol rounds; server wall time {summary['wall_s']:.0f} s"
        + (f", simulator {summary['simulator_wall_s']:.0f} s" if "simulator_wall_s" in summary else "") + ".</p>",
        "<h3>What each site revealed to the server</h3><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in REVEALED)
        + "</ul><p class='note'>No image, crop, feature row, score or clinical value of a patient left a site "
          "(tests/test_federated_flare.py inspects the server's ledger, <code>server/ledger.jsonl</code>). "
          "See docs/federated.md.</p>",
    ]
    if not summary["validation"]:
        body.insert(4, not_available("no validation patients"))
    return atomic_write_text(out / "report.html", html_page("P53 prediction: federated study", "\n".join(body)))
