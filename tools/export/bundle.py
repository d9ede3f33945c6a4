"""``p53hcc export-bundle``: a study's trained arm as a self-contained MONAI model-zoo bundle.

The bundle is laid out as the zoo's repository holds it, so ``OUT`` can be copied over a zoo checkout::

    OUT/models/<name>/                 the bundle: configs/, scripts/, models/model.pt + model.ts, docs/README.md,
                                       docs/data_license.txt, LICENSE, large_files.yml
    OUT/ci/unit_tests/test_<name>.py   the zoo-style unit test of its configs
    OUT/<name>_v<version>.zip          the bundle folder zipped (what a release ships)

The weights are the study's full-training-cohort networks of one arm and network (the study's choice for that arm,
or ``net``): MC the three-channel CNN; FF the three phase CNNs and the fitted head as one network
(:class:`p53hcc.tools.dl.ffnet.FFNet`). Before anything is written the exported network scores the study's
non-training patients from the study's own crops and must give the study's scores (relative 1e-4). The bundle is
built beside its destination and renamed into place, so a failed export leaves no half bundle.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml

from p53hcc.tools.dl.bundle import bundle_dir, check_arm
from p53hcc.tools.dl.nets import RUNTIME_PACKAGES, family
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.export.configs import exported_configs, script_names, to_bundle_module, weights_digest
from p53hcc.tools.export.metadata import (
    check_weights_url,
    cohort_description,
    eval_metrics,
    large_files_yaml,
    metadata,
    release,
    required_packages,
)
from p53hcc.tools.export.readme import data_license, readme, sample_data_script, unit_test, unit_test_dist
from p53hcc.tools.export.scripts import format_code, generate_scripts
from p53hcc.tools.io import atomic_path, file_sha256, read_table
from p53hcc.tools.schema import PHASES

log = logging.getLogger(__name__)
#: Relative tolerance of the exported network's scores against the study's.
RTOL = 1e-4
WEIGHTS = ("models/model.pt", "models/model.ts")


def choose_net(study_dir: Path, arm: str, net: str | None = None) -> str:
    """The network to export: ``net``, else the study's choice for ``arm`` (its best network by training-cohort
    out-of-fold AUC); a clear error when the study chose none (every candidate degenerate) or never trained it."""
    path = study_dir / "selection.json"
    if not path.is_file():
        raise P53hccError(f"{path} not found: {study_dir} is not a finished p53hcc study (run `p53hcc study`)")
    selection = json.loads(path.read_text())
    if net is None:
        best = (selection.get("best_per_arm") or {}).get(arm)
        if not best:
            excluded = selection.get("excluded") or {}
            why = "; ".join(f"{m}: {r}" for m, r in excluded.items() if m.startswith(f"{arm}_")) or "no candidate"
            raise P53hccError(f"the study chose no {arm.upper()} network to export (chosen: "
                              f"{(selection.get('chosen') or {}).get('model')}; excluded as degenerate: {why}); "
                              "pass --net to export one of its networks anyway")
        net = best["net"]
    if not (study_dir / "dl" / arm / net / "full").is_dir():
        raise P53hccError(f"{study_dir / 'dl' / arm / net / 'full'} not found: the study trained no {arm}_{net}")
    return net


def _network(full: Path, arm: str, net: str) -> tuple[torch.nn.Module, tuple[list[int], int] | None]:
    """The full-cohort network of the arm (FF: phase networks + head), and the FF head's shape."""
    if arm == "mc":
        from p53hcc.tools.dl.nets import load_net

        if not (full / "model.pt").is_file():
            raise P53hccError(f"{full / 'model.pt'} not found: the study kept no full-cohort MC network")
        return load_net(full / "model.pt", net).eval(), None
    import joblib

    from p53hcc.tools.dl.ffnet import ff_network

    if not (full / "head.joblib").is_file():
        raise P53hccError(f"{full / 'head.joblib'} not found: rerun the FF arm (`p53hcc train --arm ff`)")
    model = ff_network(full, net, joblib.load(full / "head.joblib"))
    return model, ([p.pca_components.shape[0] for p in model.projections], int(model.selected.numel()))


def check_study_scores(study_dir: Path, arm: str, net: str, params: dict, model: torch.nn.Module) -> float | None:
    """Score the study's non-training patients with ``model`` from the study's own crops; the largest relative
    difference to the study's scores (None when the study has no such patient). Raises beyond :data:`RTOL`."""
    from p53hcc.tools.cohort.splits import select_items
    from p53hcc.tools.dl.arms import get_arm
    from p53hcc.tools.dl.engine import source_items
    from p53hcc.tools.parallel import fixed_threads

    scores = read_table(study_dir / "dl" / arm / net / "scores.parquet")
    full = scores[scores["fold"] == -1]
    if full.empty:
        return None
    items = source_items(select_items(study_dir / "datalist.json", "all"), study_dir, params)
    spec = get_arm(arm)
    with fixed_threads(int(params.get("cpu_threads", 1))):
        x = (spec.crops(study_dir, items, params, None) if arm == "mc"
             else torch.cat([spec.crops(study_dir, items, params, p) for p in PHASES], dim=1))
        pos = {d["patient_id"]: i for i, d in enumerate(items)}
        with torch.no_grad():
            got = torch.softmax(model(x[[pos[p] for p in full["patient_id"]]]).float(), dim=1)[:, 1].numpy()
    want = full["score"].to_numpy(float)
    diff = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
    if diff > RTOL:
        raise P53hccError(f"the exported {arm}_{net} network does not reproduce the study's scores (largest relative "
                          f"difference {diff:.2e} > {RTOL:g}); nothing was written")
    return diff


def torchscript(model: torch.nn.Module, params: dict):
    """``model`` as TorchScript: scripted (any input shape), or, for a network TorchScript cannot compile (MONAI's
    Swin encoder rearranges tensors with einops), traced on one input of the bundle's shape (the deploy and
    inference configs always resize the crops to it)."""
    try:
        return torch.jit.script(model)
    except Exception as err:  # noqa: BLE001 - TorchScript's compile errors have several types
        side = int(params["spatial_size"])
        log.info("%s is not scriptable (%s: %s); traced for inputs [B, %d, %d, %d]", type(model).__name__,
                 type(err).__name__, str(err).splitlines()[0][:80], len(PHASES), side, side)
        example = torch.zeros(1, len(PHASES), side, side)
        with torch.no_grad():
            return torch.jit.trace(model.eval(), example, check_trace=False)


def _study_values(study_dir: Path) -> tuple[dict, dict]:
    """The study's resolved parameters and its preprocessing chain parameters (N4, voxel size)."""
    from p53hcc.tools.preprocessing.params import resolve_params

    cfg = yaml.safe_load((study_dir / "study.yaml").read_text())
    return cfg, resolve_params(cfg["preprocess"]["params"])


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _zip(folder: Path, dest: Path) -> Path:
    """``dest`` holding ``folder`` (as ``<name>/...``), entries sorted and time-stamped alike: same bundle, same zip."""
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}", (2024, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, path.read_bytes())
    return dest


def export_bundle(study: str | os.PathLike, arm: str = "mc", out: str | os.PathLike = "bundle-export",
                  net: str | None = None, name: str | None = None, version: str = "0.1.0",
                  weights_url: str | None = None) -> Path:
    """Export one arm of a finished study as a model-zoo bundle under ``out`` (see the module docstring).

    Args:
        study: the study folder.
        arm: ``mc`` or ``ff``.
        out: output folder (``models/<name>/``, ``ci/unit_tests/``, the zip).
        net: the network (default: the study's choice for the arm).
        name: the bundle's name (default ``hcc_p53_<arm>_<net>_mri_classification``).
        version: the bundle's version; the changelog of an earlier export of the same name in ``out`` is kept.
        weights_url: where the weights will be published (``large_files.yml``); default a placeholder to fill in.

    Returns:
        The bundle folder ``out/models/<name>``.
    """
    study_dir, arm, out = Path(study), check_arm(arm), Path(out)
    weights_url = check_weights_url(weights_url) if weights_url else None
    net = choose_net(study_dir, arm, net)
    name = name or f"hcc_p53_{arm}_{net}_mri_classification"
    full = study_dir / "dl" / arm / net / "full"
    params = json.loads((full / "config.json").read_text())
    cfg, chain = _study_values(study_dir)
    if [float(v) for v in chain["pixdim"]] != [float(params["pixdim"])] * 3:
        raise P53hccError(f"the study resampled its volumes to {chain['pixdim']} mm and cropped at {params['pixdim']} "
                          "mm; an exported bundle applies one voxel size")
    model, ff_shape = _network(full, arm, net)
    diff = check_study_scores(study_dir, arm, net, params, model)
    log.info("exported %s_%s reproduces the study's scores (largest relative difference %s)", arm, net, diff)
    ev, threshold = eval_metrics(study_dir, f"{arm}_{net}")
    source = {"arm": arm, "net": net, "weights_sha256": weights_digest(
        {f.relative_to(full).as_posix(): file_sha256(f) for f in sorted(full.rglob("*")) if f.is_file()})}
    configs = exported_configs(arm, name, params, chain["n4"], threshold, ff_shape, source)
    texts = {f"configs/{k}": to_bundle_module(v) for k, v in configs.items()}
    p53hcc_version = release("p53hcc")
    needed: dict[str, set[str]] = {}
    for cfg in configs.values():
        for module, names in script_names(cfg).items():
            needed.setdefault(module, set()).update(names)
    scripts = generate_scripts(needed, p53hcc_version)
    dest = out / "models" / name
    changelog = {}
    if (dest / "configs" / "metadata.json").is_file():
        changelog = json.loads((dest / "configs" / "metadata.json").read_text()).get("changelog", {})
    today = datetime.date.today().isoformat()
    changelog = {version: f"{today}: exported by p53hcc {p53hcc_version} from the study {study_dir.name} "
                          f"({arm}_{net}, validation AUC {ev['val_auc']})", **{k: v for k, v in changelog.items()
                                                                             if k != version}}
    meta = metadata(arm, net, version, changelog, int(params["spatial_size"]), ev,
                    cohort_description(study_dir, cfg), required_packages(scripts.values(), RUNTIME_PACKAGES.get(family(net), ())), p53hcc_version)
    texts["configs/metadata.json"] = json.dumps(meta, indent=4) + "\n"
    texts["configs/logging.conf"] = (bundle_dir("mc") / "configs" / "logging.conf").read_text(encoding="utf-8")
    texts.update(scripts)
    texts["scripts/sample_data.py"] = format_code(sample_data_script())
    texts["LICENSE"] = (bundle_dir("mc") / "LICENSE").read_text(encoding="utf-8")
    synthetic = "SYNTHETIC" in meta["data_source"]
    texts["docs/README.md"] = readme(name, arm, net, version, meta, params, chain["n4"], study_dir.name,
                                     "multi_gpu_evaluate.json" in configs)
    texts["docs/data_license.txt"] = data_license(meta["data_source"], synthetic)

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        for rel, text in texts.items():
            _write(tmp / rel, text)
        (tmp / "models").mkdir()
        torch.save(model.state_dict(), tmp / "models" / "model.pt")
        scripted = torchscript(model, params)
        extra = {"metadata.json": texts["configs/metadata.json"], "inference.json": texts["configs/inference.json"],
                 "deploy.json": texts["configs/deploy.json"]}
        torch.jit.save(scripted, str(tmp / "models" / "model.ts"), _extra_files=extra)
        _write(tmp / "large_files.yml", large_files_yaml(tmp, WEIGHTS, weights_url, name, version))
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write(out / "ci" / "unit_tests" / f"test_{name}.py", format_code(unit_test(name, arm)))
    _write(out / "ci" / "unit_tests" / f"test_{name}_dist.py", format_code(unit_test_dist(name, arm)))
    _zip(dest, out / f"{name}_v{version}.zip")
    if not weights_url:
        log.warning("large_files.yml names no public URL yet (it says how to publish): pass --weights_url with the "
                    "weights' public location "
                    "before submitting the bundle to the model zoo")
    return dest
