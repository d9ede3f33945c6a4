"""Each phase preprocessed once for both of the app's models: the bundle's crops and the combined model's predict.

The bundle's ``deploy.json`` runs, on its six-channel input, RAS orientation, N4 on each phase, resampling to its
voxel size (images trilinear, masks nearest) and z-scoring over the body, then cuts the ROI crops; ``p53hcc
predict`` (the combined model) runs the same MONAI transforms with the same settings on each phase on its own grid
(:func:`p53hcc.tools.preprocessing.chain.preprocessing_chain`; ``tests/test_bundle_chain.py`` checks they agree).
At the synthetic paper size these steps are most of a patient's time, so the app runs them once
(:func:`preprocess_once`), before the SDK's graph: the bundle then gets the preprocessed volume and runs only its
ROI steps (config values :func:`bundle_overrides`), and each phase that lies on its own grid (not resampled onto
the AP grid) is stored as ``predict``'s cached preprocessing result
(:func:`p53hcc.tools.preprocessing.run.seed_preprocessed`) when the frozen study preprocesses as the bundle does.
The three phases run in three threads, each step single-threaded (ITK and torch work outside Python's lock; the
bits do not depend on the thread count, as in the study's own preprocessing): on two cores three equal tasks end
after 1.5 task times instead of the 2 that two threads take.
"""
from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from p53hcc.tools.schema import PHASES

#: What the bundle skips when it gets a preprocessed volume (RAS orientation stays: a no-op on RAS input).
BUNDLE_OVERRIDES = {"n4": False, "spatial_transforms": []}


def bundle_chain_params(deploy_config: Mapping[str, Any]) -> dict:
    """The chain parameters (:data:`p53hcc.tools.preprocessing.params.CHAIN_DEFAULTS` layout) the bundle's deploy
    config applies: RAS, its N4 (None when off), its voxel size, z-score over non-zero voxels."""
    from p53hcc.tools.dl.components import as_bool
    from p53hcc.tools.preprocessing.params import N4Params

    n4 = N4Params.from_dict(deploy_config.get("n4_params") or {}).to_dict() if as_bool(
        deploy_config.get("n4", True), "n4") else None
    return {"orientation": "RAS", "n4": n4, "pixdim": [float(deploy_config.get("pixdim", 1.0))] * 3,
            "normalize_nonzero": True}


def same_chain(bundle: Mapping[str, Any], study: Mapping[str, Any]) -> bool:
    """Whether the frozen study's preprocessing (resolved chain parameters) is the bundle's, so one result serves
    both models."""
    if bundle["n4"] is None:
        return False
    n4 = {k: v for k, v in study["n4"].items() if k != "n_threads"}
    return (study.get("orientation") == "RAS" and n4 == bundle["n4"] and bool(study["normalize_nonzero"])
            and [float(v) for v in study["pixdim"]] == bundle["pixdim"])


def _one_phase(image, mask, params: Mapping[str, Any]) -> dict:
    """One phase's N4 (when ``params`` has one) -> resampling -> z-score, its mask resampled: the chain's steps."""
    from p53hcc.tools.parallel import single_threaded
    from p53hcc.tools.preprocessing.chain import preprocessing_chain

    chain = {k: v for k, v in params.items() if k != "n4" or v is not None}
    with single_threaded():
        data = {"image": image, "mask": mask}
        if params["n4"] is not None:
            data = preprocessing_chain(chain, ["image"], [], load=False, n4=True, resample=False)(data)
        return preprocessing_chain(chain, ["image"], ["mask"], load=False, n4=False)(data)


def preprocess_once(volume, params: Mapping[str, Any], workers: int = len(PHASES)) -> tuple[Any, dict[str, dict]]:
    """``(volume, phases)``: the six-channel volume (AP, PVP, DP, masks) oriented to RAS, N4-corrected, resampled
    and z-scored with the chain ``params`` (:func:`bundle_chain_params`), and each phase's ``{"image", "mask"}``
    one-channel result (what ``predict``'s preprocessing writes for it)."""
    import torch
    from monai.transforms import Orientation

    from p53hcc.tools.preprocessing.params import RAS_LABELS

    oriented = Orientation(axcodes="RAS", labels=RAS_LABELS)(volume)
    n = len(PHASES)
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        done = list(pool.map(lambda i: _one_phase(oriented[i: i + 1], oriented[n + i: n + i + 1], params),
                             range(n)))
    out = torch.cat([*(d["image"] for d in done), *(d["mask"] for d in done)])
    out.meta.update(done[0]["image"].meta)
    return out, dict(zip(PHASES, done))
