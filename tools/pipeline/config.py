"""The study's parameters: ``tools/config/study_defaults.yaml`` <- profile <- user YAML <- CLI flags.

The YAML's nulls mean "the default of the stage that owns the setting" and are filled from there (preprocessing
preset, radiomics parameter set, the bundles' training values), so every default has one home and the resolved
``study.yaml`` still shows every value that was used.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from p53hcc.tools.errors import P53hccError, as_bool

DEFAULTS_FILE = "config/study_defaults.yaml"
#: Bundle training values the study sweeps or sets itself (the network list, the master seed, N4: the DL arms
#: read the study's preprocessed volumes).
STUDY_OWNED_DL_KEYS = ("net", "seed", "n4")


def study_defaults() -> dict:
    """The packaged ``study_defaults.yaml`` as a dict (profiles included)."""
    text = resources.files("p53hcc.tools").joinpath(DEFAULTS_FILE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def merge(base: dict, extra: dict | None) -> dict:
    """Recursive dict merge: values of ``extra`` win; nested dicts are merged, not replaced."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_override(cfg: dict, key: str, value: Any) -> None:
    """Set ``key`` (``section.name``, a top-level name, or a name unique within one section) in ``cfg``.

    A setting whose default is a boolean parses the flag with :func:`p53hcc.tools.errors.as_bool` (python-fire
    passes ``--amp false`` as the truthy string ``'false'``).
    """
    if "." in key:
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
    elif key in cfg:
        node, leaf = cfg, key
    else:
        owners = [s for s, v in cfg.items() if isinstance(v, dict) and key in v]
        if len(owners) != 1:
            where = "no section" if not owners else f"sections {owners}; write section.{key}"
            raise P53hccError(f"unknown or ambiguous study parameter --{key} ({where}); see {DEFAULTS_FILE}")
        node, leaf = cfg[owners[0]], key
    node[leaf] = as_bool(value, key) if isinstance(node.get(leaf), bool) else value


def as_list(value: Any) -> list[str]:
    """A comma-separated string or a sequence as a list of strings."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _fill_stage_defaults(cfg: dict) -> None:
    """Replace nulls (and absent DL training values) by the defaults of the stages that own them."""
    from p53hcc.tools.cohort.splits import DEFAULT_FOLDS
    from p53hcc.tools.dl.bundle import ENGINE_DEFAULTS, training_defaults
    from p53hcc.tools.preprocessing.params import DEFAULT_PRESET
    from p53hcc.tools.radiomics.features import DEFAULT_PARAMS

    if cfg.get("folds") is None:
        cfg["folds"] = DEFAULT_FOLDS
    if cfg["preprocess"].get("params") is None:
        cfg["preprocess"]["params"] = DEFAULT_PRESET
    if cfg["radiomics"].get("params") is None:
        cfg["radiomics"]["params"] = DEFAULT_PARAMS
    for key, value in {**training_defaults("mc"), "cpu_threads": ENGINE_DEFAULTS["cpu_threads"]}.items():
        if key not in STUDY_OWNED_DL_KEYS and cfg["dl"].get(key) is None:
            cfg["dl"][key] = value


def resolve_config(config: str | Path | None = None, nets: Any = None, paper_selection: bool | None = None,
                   profile: str = "paper", **overrides: Any) -> dict:
    """Defaults <- profile <- user YAML <- CLI overrides; returns the full parameter set of the study.

    Args:
        config: user YAML merged over the defaults.
        nets: networks to sweep (comma string or list).
        paper_selection: also report the paper's optimistic choice of network by validation AUC.
        profile: ``paper`` (the defaults, faithful to the paper) or ``demo`` (fast settings for the synthetic demo).
        overrides: any parameter, ``epochs=3`` or ``**{"dl.epochs": 3}``.
    """
    cfg = study_defaults()
    profiles = cfg.pop("profiles", {})
    if profile not in profiles:
        raise P53hccError(f"unknown profile {profile!r}; choose one of {', '.join(profiles)}")
    cfg = merge(cfg, profiles[profile] or {})
    cfg["profile"] = profile
    if config:
        path = Path(config)
        if not path.is_file():
            raise P53hccError(f"study config not found: {path}")
        cfg = merge(cfg, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    _fill_stage_defaults(cfg)
    for key, value in overrides.items():
        _set_override(cfg, key, value)
    if nets is not None:
        cfg["dl"]["nets"] = nets
    cfg["dl"]["nets"] = as_list(cfg["dl"]["nets"])
    cfg["dl"]["arms"] = as_list(cfg["dl"]["arms"])
    if paper_selection:
        cfg["paper_selection"] = True
    _check_choices(cfg)
    return cfg


#: Settings that take one of a few named values (each one implemented; anything else is an error, not ignored).
CHOICES = {("fusion", "selection_rule"): ("train_oof_auc",), ("fusion", "nesting"): ("nested", "apparent"),
           ("fusion", "stack_weights"): ("nonnegative", "free"), ("statistics", "threshold"): ("youden_train",),
           ("fusion", "harmonise"): ("none", "combat")}
#: ``validation``: stratified folds, or one fold per scanner (``batch_column``); see docs/harmonisation.md.
VALIDATIONS = ("kfold", "leave_one_scanner_out")


def fold_groups(cfg: dict) -> str | None:
    """The cohort column whose values are the folds (leave-one-scanner-out), or None for stratified K folds."""
    if cfg.get("validation") != "leave_one_scanner_out":
        return None
    return cfg.get("batch_column") or "scanner"


def _check_choices(cfg: dict) -> None:
    for (section, key), allowed in CHOICES.items():
        value = cfg.get(section, {}).get(key)
        if value not in allowed:
            raise P53hccError(f"study parameter {section}.{key}: {value!r} is not one of {', '.join(allowed)}")
    if cfg.get("validation", "kfold") not in VALIDATIONS:
        raise P53hccError(f"study parameter validation: {cfg['validation']!r} is not one of {', '.join(VALIDATIONS)}")
    if cfg["fusion"]["nesting"] == "nested" and int(cfg["folds"]) < 3 and not fold_groups(cfg):
        raise P53hccError(f"study parameter folds: nested cross-fitting needs at least 3 folds, got {cfg['folds']} "
                          "(or set fusion.nesting: apparent)")
    level = float(cfg["statistics"]["ci_level"])
    if not 0 < level < 1:
        raise P53hccError(f"study parameter statistics.ci_level: {level} is not between 0 and 1")
    start, stop, step = (float(v) for v in cfg["statistics"]["dca_thresholds"])
    if not (0 <= start < stop < 1 and 0 < step):
        raise P53hccError("study parameter statistics.dca_thresholds: expected [start, stop, step] with "
                          f"0 <= start < stop < 1 and step > 0, got {cfg['statistics']['dca_thresholds']}")


def dl_training_values(cfg: dict) -> dict[str, Any]:
    """The bundle training values the study sets (``dl`` section minus arms/nets/device, plus the master seed and
    the CPU thread count)."""
    from p53hcc.tools.dl.bundle import TRAINING_KEYS

    keys = (*TRAINING_KEYS, "cpu_threads")
    values = {k: v for k, v in cfg["dl"].items() if k in keys and k not in STUDY_OWNED_DL_KEYS}
    return {**values, "seed": cfg["seed"]}
