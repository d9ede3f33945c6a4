"""The server's side of the federated study, written against a small :class:`Federation` interface (broadcast a
task, get each site's reply), so the same code runs inside FLARE's controller (:mod:`.controller`) and
in-process (:mod:`.local`: the pooled and site-alone comparisons, quick tests).

Order: prepare (sites run their own image stages) -> clinical and radiomics models, cross-fitted, side by side
-> each DL arm: FedAvg of every fold's networks at once (MC: one network per fold; FF: one per phase and fold)
and the FF head on the sites' features -> the DL arm with the higher federated training-cohort AUC -> the
combined model -> federated evaluation of every model on the validation patients.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from p53hcc.fusion.models.clinical import PREOPERATIVE_VARIABLES
from p53hcc.fusion.models.federated import lockstep, newton_logit, sum_answers
from p53hcc.fusion.models.federated_fits import (
    clinical_protocol,
    combined_protocol,
    crossfit_protocol,
    feature_table_name,
    ff_head_protocol,
    radiomics_protocol,
)
from p53hcc.fusion.stats.federated import auc_from_bins, brier_from_bins, calibration_from_bins
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.federated.site import unflatten
from p53hcc.tools.schema import PHASES

log = logging.getLogger(__name__)
Reply = tuple[dict, dict[str, np.ndarray]]
#: Arrays of at most this many numbers are kept with their values in the ledger (``server/ledger.jsonl``).
LEDGER_VALUES_MAX = 4096


class Federation:
    """What the server needs from a transport: the site names and ``broadcast``. Subclasses record what each
    site sent (``ledger``: one row per reply: task, site, payload, array names, shapes, bytes)."""

    sites: list[str]

    def __init__(self) -> None:
        self.ledger: list[dict] = []
        self.rounds = 0

    def broadcast(self, task: str, payload: dict, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Reply]:
        raise NotImplementedError

    def record(self, task: str, site: str, payload: dict, arrays: dict[str, np.ndarray], keep: bool) -> None:
        """One reply in the ledger; with ``keep`` the values of its arrays of at most :data:`LEDGER_VALUES_MAX`
        numbers (vectors over features, counts, bins; not the large Hessians and cross-products, whose shapes and
        sha256 are kept), so an audit sees what the server received."""
        import hashlib

        small = {k: np.asarray(v).tolist() for k, v in arrays.items() if np.size(v) <= LEDGER_VALUES_MAX} if keep else {}
        self.ledger.append({"task": task, "site": site, "payload": payload,
                            "arrays": {k: list(np.shape(v)) for k, v in arrays.items()}, "values": small,
                            "sha256": {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
                                       for k, v in arrays.items() if k not in small} if keep else {},
                            "bytes": len(encode(payload)) + int(sum(np.asarray(v).nbytes for v in arrays.values()))})


def encode(obj: Any) -> bytes:
    """JSON bytes of a payload (arrays as lists: exact float64 round trip)."""
    return json.dumps(obj, default=lambda o: np.asarray(o).tolist()).encode()


def sums_transport(fed: Federation) -> Callable[[list[dict]], list[dict]]:
    """The transport of :func:`p53hcc.fusion.federated.lockstep`: one ``sums`` task per round, answers added."""
    def transport(requests: list[dict]) -> list[dict]:
        replies = fed.broadcast("sums", {"requests": json.loads(encode(requests))})
        fed.rounds += 1
        return sum_answers([unflatten(arrays, len(requests)) for _, arrays in replies.values()])
    return transport


def _evaluate(fed: Federation, models: list[str], split: str, fl: dict) -> dict[str, dict]:
    """AUC with DeLong CI, calibration and Brier of each model on ``split`` from the sites' binned sums."""
    transport = sums_transport(fed)
    reqs = [{"kind": "binned", "source": "scores", "rows": {"split": split}, "bins": fl["bins"],
             "ops": [{"op": "select", "columns": [m]}]} for m in models]
    totals = transport(reqs)
    slopes, _ = lockstep({m: newton_logit("scores", {"split": split}, [{"op": "select", "columns": [m]},
                                                                       {"op": "logit", "eps": 1e-10}], 1)
                          for m in models}, transport)
    out = {}
    for m, total in zip(models, totals):
        auc = auc_from_bins(total["cases"], total["controls"])
        fit = slopes[m]
        ok = fit.converged and np.all(np.isfinite(fit.bse))
        out[m] = {"auc": auc.auc, "ci_low": auc.ci_low, "ci_high": auc.ci_high, "se": auc.se,
                  "n_cases": int(total["cases"].sum()), "n_controls": int(total["controls"].sum()),
                  "brier": brier_from_bins(total),
                  "calibration_slope": float(fit.beta[1]) if ok else float("nan"),
                  "calibration_slope_se": float(fit.bse[1]) if ok else float("nan"),
                  "calibration": calibration_from_bins(total, fl["calibration_groups"]).to_dict("list")
                  if auc.auc == auc.auc else {},
                  "roc": _roc(total), "note": "" if auc.auc == auc.auc else auc.method.split(": ", 1)[-1]}
    return out


def _roc(total: dict) -> dict:
    """ROC points of binned scores (a threshold between every two bins)."""
    c1, c0 = np.asarray(total["cases"], float)[::-1], np.asarray(total["controls"], float)[::-1]
    n1, n0 = max(c1.sum(), 1.0), max(c0.sum(), 1.0)
    return {"fpr": np.r_[0.0, np.cumsum(c0) / n0].tolist(), "tpr": np.r_[0.0, np.cumsum(c1) / n1].tolist()}


def _fedavg_unit(fed: Federation, cfg: dict, fl: dict, arm: str, unit: str | None, folds: list[int]) -> dict:
    """FedAvg of one (arm, unit)'s networks of every fold at once; the sites then keep their outputs."""
    from p53hcc.tools.federated.dl import dl_params, fedavg, initial_weights

    params = dl_params(cfg, fl, arm)
    start = initial_weights(arm, params)
    weights = {k: dict(start) for k in folds}
    for r in range(int(fl["rounds"])):
        replies = fed.broadcast("dl_train", {"arm": arm, "unit": unit, "folds": folds},
                                {f"{k}/{name}": v for k in folds for name, v in weights[k].items()})
        for k in folds:
            updates = [({name[len(f'{k}/'):]: v for name, v in arrays.items() if name.startswith(f"{k}/")},
                        float(payload["n_train"][str(k)])) for payload, arrays in replies.values()
                       if payload["n_train"].get(str(k))]
            if not updates:
                raise P53hccError(f"{arm} {unit or ''} fold {k}: no site has training patients for it")
            weights[k] = fedavg(weights[k], updates)
        fed.rounds += 1
        log.info("federated %s %s: round %d/%d done", arm, unit or "", r + 1, fl["rounds"])
    fed.broadcast("dl_outputs", {"arm": arm, "unit": unit, "folds": folds},
                  {f"{k}/{name}": v for k in folds for name, v in weights[k].items()})
    return {"net": params["net"], "weights": weights[-1]}


def run_server(fed: Federation, cfg: dict, fl: dict, out: str | Path | None = None) -> dict[str, Any]:
    """The whole federated study from the server's side; returns (and with ``out`` writes) its summary."""
    t0 = time.perf_counter()
    prep = {s: payload for s, (payload, _) in fed.broadcast("prepare", {"cfg": cfg, "fl": fl}).items()}
    feats = [set(p.pop("radiomics_features")) for p in prep.values()]
    features = sorted(set.intersection(*feats)) if feats else []
    folds = list(range(int(fl["folds"])))
    transport = sums_transport(fed)
    fus = cfg.get("fusion", {})
    tab, _ = lockstep({
        "clinical": crossfit_protocol(lambda rows, cv, k: clinical_protocol(rows, PREOPERATIVE_VARIABLES), folds),
        "radiomics": crossfit_protocol(lambda rows, cv, k: radiomics_protocol(
            rows, features, cv, spearman=float(fus.get("spearman_threshold", 0.9))), folds)}, transport)
    for m in ("clinical", "radiomics"):
        fed.broadcast("score", {"model": m, "specs": json.loads(encode(tab[m]))})
    networks, dl_models = {}, []
    for arm in fl["arms"]:
        units = [None] if arm == "mc" else list(PHASES)
        for unit in units:
            networks[(arm, unit)] = _fedavg_unit(fed, cfg, fl, arm, unit, [-1, *folds])  # -1 first: it caches every crop
        net = networks[(arm, units[0])]["net"]
        if arm == "ff":
            cols = {p: [f"{p}_f{j}" for j in range(_feature_width(networks[("ff", p)]["weights"]))] for p in PHASES}
            res, _ = lockstep({"ff": crossfit_protocol(lambda rows, cv, k, cols=cols: ff_head_protocol(
                rows, cols, cv, source=feature_table_name(k)), folds)}, transport)
            tab["ff"] = res["ff"]
            fed.broadcast("score", {"model": f"ff_{net}", "specs": json.loads(encode(tab["ff"]))})
        dl_models.append(f"{arm}_{net}")
    train_eval = _evaluate(fed, ["clinical", "radiomics", *dl_models], "train", fl) if dl_models else {}
    ranked = [m for m in dl_models if np.isfinite(train_eval[m]["auc"])]  # a degenerate arm is never chosen
    chosen = max(ranked, key=lambda m: train_eval[m]["auc"]) if ranked else None
    inputs = ["clinical", "radiomics", *([chosen] if chosen else [])]
    comb, _ = lockstep({"c": crossfit_protocol(lambda rows, cv, k: combined_protocol(
        rows, inputs, nonnegative=bool(fl["nonnegative"])), folds)}, transport)
    fed.broadcast("score", {"model": "combined", "specs": json.loads(encode(comb["c"]))})
    models = ["clinical", "radiomics", *dl_models, "combined"]
    evaluation = _evaluate(fed, models, "validation", fl)
    fed.broadcast("finish", {})
    summary = {
        "sites": prep, "features": len(features), "folds": len(folds), "chosen_dl": chosen,
        "train_auc": {m: v["auc"] for m, v in train_eval.items()}, "validation": evaluation,
        "clinical": {k: tab["clinical"][-1][k] for k in ("selected", "screened", "p_values")},
        "radiomics": {k: tab["radiomics"][-1][k] for k in ("selected", "n_spearman", "n_features", "lasso_C")},
        "combined": {k: comb["c"][-1][k] for k in ("inputs", "coefficients", "intercept")},
        "rounds": fed.rounds, "bytes_per_site": _bytes_per_site(fed.ledger),
        "wall_s": time.perf_counter() - t0, "settings": dict(fl),
    }
    if out is not None:
        _write(Path(out), summary, fed, networks)
    return summary


def _feature_width(weights: dict[str, np.ndarray]) -> int:
    """Width of a network's penultimate features: the input size of its last linear layer."""
    return int([np.shape(v) for v in weights.values() if np.ndim(v) == 2][-1][1])


def _bytes_per_site(ledger: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in ledger:
        out[row["site"]] = out.get(row["site"], 0) + int(row["bytes"])
    return out


def _write(out: Path, summary: dict, fed: Federation, networks: dict) -> None:
    """summary.json, the ledger of what the server received, and the full-cohort global networks."""
    import torch

    from p53hcc.tools.io import atomic_path, atomic_write_json, atomic_write_text

    atomic_write_json(out / "summary.json", json.loads(encode(summary)))
    atomic_write_text(out / "ledger.jsonl", "\n".join(json.dumps(r, default=str) for r in fed.ledger) + "\n")
    for (arm, unit), res in networks.items():
        path = out / "models" / arm / (unit or "") / "model.pt"
        with atomic_path(path) as tmp:
            torch.save({k: torch.as_tensor(v) for k, v in res["weights"].items()}, tmp)
