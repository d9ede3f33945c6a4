"""The DL arms, federated: each bundle's own ``configs/train.json`` trained by MONAI FL's ``MonaiAlgo`` at every
site, the updates averaged by the server (FedAvg, weighted by each site's training patients).

Site side (:class:`SiteDL`): one ``MonaiAlgo`` per (arm, phase, fold) network, created on first use from the
bundle's train config with the study's training values as overrides and the site's own datalist (its patients on
its preprocessed volumes, as ``p53hcc study`` trains with ``source: preprocessed``). A round loads the global
weights, trains ``local_epochs`` epochs and returns the weight difference (``send_weight_diff``). After the last
round the site computes, with the global networks, the MC scores or the FF penultimate features of its own
patients and keeps them (:meth:`SiteDL.outputs`): nothing per patient goes back.

One override of the bundle's values keeps a batch of one tensor type (MONAI's collate refuses a batch that mixes
MetaTensors and plain tensors, which its PersistentDataset cache produces once several networks share a site's
cache): :data:`PLAIN_TENSORS` as ``final_transforms``. The augmentation is the bundle's ``batch_augmentation``, on
whole batches, as in the study's fast engine.

Server side (:func:`initial_weights`, :func:`fedavg`): the same seeded initial weights for every site, and the
weighted mean of the updates.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from p53hcc.fusion.models.federated_fits import feature_table_name
from p53hcc.tools.dl.arms import features_frame, get_arm
from p53hcc.tools.dl.bundle import COMPONENT_KEYS, bundle_dir, training_params
from p53hcc.tools.dl.engine import penultimate_features, predict_scores, source_items
from p53hcc.tools.dl.nets import build_net
from p53hcc.tools.io import atomic_write_json

log = logging.getLogger(__name__)
#: Values of the study's ``dl`` section passed to the bundle as config overrides.
BUNDLE_KEYS = ("batch_size", "learning_rate", "weight_decay", "spatial_size", "margin", "pixdim", "min_scale", "seed")


#: The bundle's ``final_transforms`` plus every image/mask key as a plain tensor: a batch must not mix a freshly
#: transformed item (MetaTensors) with one read back from the PersistentDataset cache (plain tensors), which
#: MONAI's collate refuses (seen from a site's third network on).
PLAIN_TENSORS = [
    {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32", "track_meta": False},
    {"_target_": "EnsureTyped", "keys": "$@image_keys + @mask_keys", "track_meta": False, "allow_missing_keys": True},
]


def unit_key(arm: str, unit: str | None, fold: int) -> str:
    return f"{arm}/{unit or 'all'}/{fold}"


def dl_params(cfg: dict, fl: dict, arm: str) -> dict:
    """The arm's training values: the bundle's, the study's ``dl`` overrides, the federation's network."""
    dl = {k: v for k, v in cfg.get("dl", {}).items() if k in (*BUNDLE_KEYS, *COMPONENT_KEYS, "net", "pretrained_path",
                                                               "precision")}
    return training_params(arm, **{**dl, "net": fl.get("net") or dl.get("net"), "source": "preprocessed"})


def initial_weights(arm: str, params: dict) -> dict[str, np.ndarray]:
    """The seeded initial weights of an arm's network (every site starts from these)."""
    torch.manual_seed(int(params["seed"]))
    net = build_net(params["net"], in_channels=3 if arm == "mc" else 1, pretrained_path=params.get("pretrained_path"))
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def fedavg(weights: dict[str, np.ndarray], updates: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Global weights plus the mean of the sites' weight differences, weighted by their training patients."""
    total = sum(n for _, n in updates)
    out = {}
    for k, w in weights.items():
        step = sum(np.asarray(d[k], np.float64) * n for d, n in updates) / total
        out[k] = (np.asarray(w, np.float64) + step).astype(w.dtype)
    return out


class SiteDL:
    """A site's MonaiAlgo networks and their outputs."""

    def __init__(self, site):
        self.site = site
        self.algos: dict[str, Any] = {}
        self.n_train: dict[str, int] = {}

    def _datalist(self) -> Path:
        """The site's datalist on its preprocessed volumes (what the bundle's train config reads)."""
        from p53hcc.tools.preprocessing.run import preprocessed_items

        path = self.site.dir / "fl" / "datalist.json"
        if not path.is_file():
            dl = json.loads((self.site.dir / "datalist.json").read_text())
            dl = {section: preprocessed_items(items, self.site.dir) if items else [] for section, items in dl.items()}
            atomic_write_json(path, dl)
        return path

    def _algo(self, arm: str, unit: str | None, fold: int, params: dict):
        from monai.fl.client import MonaiAlgo
        from monai.fl.utils.constants import ExtraItems

        key = unit_key(arm, unit, fold)
        if key not in self.algos:
            from p53hcc.tools.cohort.splits import select_items

            work = self.site.dir / "fl" / key.replace("/", "_")
            over = {"dataset_dir": str(self.site.dir), "datalist": str(self._datalist()), "fold": int(fold),
                    "net": params["net"], "n4": False, "precision": "fp32", "device": "cpu", "num_workers": 0,
                    "val_interval": 10 ** 6, "final_transforms": PLAIN_TENSORS, "ckpt_dir": str(work / "models"),
                    "output_dir": str(work / "logs"),
                    "cache_dir": str(self.site.dir / "fl" / "cache" / arm),
                    "pretrained_path": params.get("pretrained_path"),
                    **{k: params[k] for k in (*BUNDLE_KEYS, *COMPONENT_KEYS)}, **({"phase": unit} if unit else {})}
            algo = MonaiAlgo(bundle_root=str(bundle_dir(arm)), local_epochs=int(self.site.fl["local_epochs"]),
                             config_evaluate_filename=None, train_kwargs=over, send_weight_diff=True)
            algo.initialize(extra={ExtraItems.CLIENT_NAME: self.site.name, ExtraItems.APP_ROOT: ""})
            self.algos[key] = algo
            self.n_train[key] = len(select_items(self._datalist(), "train", fold, unit))
        return self.algos[key]

    def handle(self, task: str, payload: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
        from monai.fl.utils.exchange_object import ExchangeObject

        arm, unit = payload["arm"], payload.get("unit")
        params = dl_params(self.site.cfg, self.site.fl, arm)
        out: dict[str, np.ndarray] = {}
        sizes = {}
        for fold in payload["folds"]:
            prefix = f"{fold}/"
            weights = {k[len(prefix):]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith(prefix)}
            if task == "dl_train" and not self.site.trains:  # an evaluating-only site (benchmark: site alone)
                continue
            if task == "dl_train":
                algo = self._algo(arm, unit, int(fold), params)
                algo.train(ExchangeObject(weights=weights))
                diff = algo.get_weights().weights
                out.update({f"{fold}/{k}": v.detach().cpu().numpy() for k, v in diff.items()})
                sizes[str(fold)] = self.n_train[unit_key(arm, unit, int(fold))]
            else:
                self.outputs(arm, unit, int(fold), weights, params)
        return {"n_train": sizes}, out

    def outputs(self, arm: str, unit: str | None, fold: int, weights: dict, params: dict) -> None:
        """MC: scores of this site's patients that the fold's network may score (its held-out fold, or every
        non-training patient for the full-cohort network). FF: penultimate features of every patient of the site,
        kept as the fold's feature table for the FF head."""
        from p53hcc.tools.cohort.splits import select_items

        spec = get_arm(arm)
        net = build_net(params["net"], in_channels=3 if arm == "mc" else 1)
        net.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
        net.eval()
        items = source_items(select_items(self.site.dir / "datalist.json", "all"), self.site.dir, params)
        x = spec.crops(self.site.dir / "fl", items, params, unit)
        ids = [d["patient_id"] for d in items]
        t = self.site.tables
        if arm == "mc":
            s = pd.Series(predict_scores(net, x, "cpu", precision="fp32"), index=ids)
            rows = t.split.index[(t.split == "train") & (t.fold == fold)] if fold >= 0 else t.split.index[
                t.split != "train"]
            col = f"mc_{params['net']}"
            if col not in t.tables["scores"]:
                t.tables["scores"][col] = np.nan
            t.tables["scores"].loc[rows, col] = s.reindex(rows).to_numpy()
            return
        feats = features_frame(ids, unit, fold, penultimate_features(net, x, "cpu", precision="fp32"))
        wide = feats.set_index("patient_id").drop(columns=["phase", "fold"]).add_prefix(f"{unit}_")
        name = feature_table_name(fold)
        t.tables[name] = wide if name not in t.tables else t.tables[name].join(wide)
