"""The study's settings: schema defaults <- profile <- user YAML <- overrides, checked before anything runs.

Every source is checked against the typed schema (:mod:`p53hcc.tools.config.schema`): an unknown key is an error
naming its source and the closest valid key, a wrong type or value an error naming what is allowed. Defaults
that belong to a stage (the folds, the preprocessing preset, the radiomics parameter set, every DL training value
of the bundles' ``train.json``) are filled in from their homes, so the resolved ``study.yaml`` shows every value
that was used.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from p53hcc.tools.config.check import check_keys, leaf_keys, unknown_key, validated
from p53hcc.tools.config.schema import (
    NULLABLE_TRAINING,
    STUDY_OWNED_TRAINING,
    StudyConfig,
    TrainingValues,
    key_tree,
)
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.schema import NETS

PROFILES_FILE = "config/profiles.yaml"
#: Where overrides come from, as error messages name it.
COMMAND_LINE, ARGUMENT = "command line", "argument"


def study_profiles() -> dict[str, dict]:
    """The named profiles (``paper``, ``demo``) of ``tools/config/profiles.yaml``."""
    text = resources.files("p53hcc.tools").joinpath(PROFILES_FILE).read_text(encoding="utf-8")
    return {name: value or {} for name, value in (yaml.safe_load(text) or {}).items()}


def merge(base: dict, extra: dict | None) -> dict:
    """Recursive dict merge: values of ``extra`` win; nested dicts are merged, not replaced."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def overrides_tree(overrides: dict[str, Any], source: str, model: type[StudyConfig] = StudyConfig) -> dict:
    """``{"dl.epochs": 3, "epochs": 3, "seed": 1}`` as a nested dict; a bare name must be a top-level setting or
    belong to exactly one section."""
    tree, out = key_tree(model), {}
    for key, value in overrides.items():
        if "." in key:
            path = key.split(".")
        elif key in tree:
            path = [key]
        else:
            owners = [s for s, sub in tree.items() if sub is not None and key in sub]
            if len(owners) > 1:
                raise P53hccError(f"{source}: study setting {'--' if source == COMMAND_LINE else ''}{key} is in "
                                  f"sections {', '.join(owners)}: write section.{key}")
            if not owners:
                raise unknown_key(key, source, model)
            path = [owners[0], key]
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise P53hccError(f"{source}: study setting {key} is set twice")
        node[path[-1]] = value
    return out


def _stage_defaults() -> dict:
    """The defaults that live with the stages (filled where a value is null)."""
    from p53hcc.tools.cohort.splits import DEFAULT_FOLDS
    from p53hcc.tools.dl.bundle import training_defaults
    from p53hcc.tools.preprocessing.params import DEFAULT_PRESET
    from p53hcc.tools.radiomics.features import DEFAULT_PARAMS

    dl = {k: v for k, v in training_defaults("mc").items() if k not in STUDY_OWNED_TRAINING}
    return {"folds": DEFAULT_FOLDS, "preprocess": {"params": DEFAULT_PRESET},
            "radiomics": {"params": DEFAULT_PARAMS}, "dl": dl}


def _fill(cfg: dict, defaults: dict, skip: tuple[str, ...] = (), tree: dict | None = None) -> None:
    """Replace nulls (and absent keys) of ``cfg`` by ``defaults`` section by section; ``skip`` keeps those nulls.
    A dict-valued setting (``dl.optimizer``, ``preprocess.params``) is one value, never filled key by key."""
    tree = key_tree() if tree is None else tree
    for key, value in defaults.items():
        if tree.get(key) is not None and isinstance(cfg.get(key), dict):
            _fill(cfg[key], value, skip, tree[key])
        elif cfg.get(key) is None and key not in skip:
            cfg[key] = copy.deepcopy(value)


def _read_yaml(config: str | Path) -> dict:
    path = Path(config)
    if not path.is_file():
        raise P53hccError(f"study config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise P53hccError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise P53hccError(f"--config {path}: expected a mapping of settings, got {type(raw).__name__}")
    return raw


def resolve_config(config: str | Path | None = None, nets: Any = None, paper_selection: bool | None = None,
                   profile: str = "paper", source: str = ARGUMENT, model: type[StudyConfig] = StudyConfig,
                   **overrides: Any) -> dict:
    """Defaults <- profile <- user YAML <- overrides; returns every setting of the study, checked and resolved.

    Args:
        config: user YAML merged over the defaults.
        nets: networks to sweep (comma string or list).
        paper_selection: also report the paper's optimistic choice of network by validation AUC.
        profile: ``paper`` (the defaults, faithful to the paper) or ``demo`` (fast settings for the synthetic demo).
        source: where ``overrides`` come from, for error messages (``command line`` or ``argument``).
        model: the schema (``StudyConfig``; ``FederatedStudyConfig`` adds the federation's ``fl`` section).
        overrides: any setting, ``epochs=3`` or ``**{"dl.epochs": 3}``.

    Raises:
        P53hccError: an unknown key, a wrong type or value, an unknown network; one line each, naming the source.
    """
    profiles = study_profiles()
    if profile not in profiles:
        raise P53hccError(f"unknown profile {profile!r}; choose one of {', '.join(profiles)}")
    layers = [(profiles[profile], f"profile {profile}")]
    if config:
        layers.append((_read_yaml(config), f"--config {config}"))
    extra = dict(overrides)
    if nets is not None:
        extra["dl.nets"] = nets
    if paper_selection:
        extra["paper_selection"] = True
    layers.append((overrides_tree(extra, source, model), source))

    cfg = model().model_dump(by_alias=True)
    _fill(cfg, _stage_defaults())  # the bundle's components first: an explicit null in a source then means "none"
    sources: dict[str, str] = {}
    for raw, where in layers:
        check_keys(raw, where, model)
        cfg = merge(cfg, raw)
        sources.update(dict.fromkeys(leaf_keys(raw, key_tree(model)), where))
    _fill(cfg, _stage_defaults(), skip=NULLABLE_TRAINING)  # a null meaning "the stage's default"
    cfg["profile"] = profile
    resolved = validated(model, cfg, sources).model_dump(by_alias=True, mode="json")
    _check_names(resolved, sources)
    return resolved


def _check_names(cfg: dict, sources: dict[str, str]) -> None:
    """Names the schema cannot know: the networks, and that each DL component's ``_target_`` exists."""
    from p53hcc.tools.dl.bundle import check_component

    unknown = [n for n in cfg["dl"]["nets"] if n not in NETS]
    if unknown:
        raise P53hccError(f"{sources.get('dl.nets', 'settings')}: study setting dl.nets: unknown network(s) "
                          f"{', '.join(unknown)}; choose from {', '.join(NETS)}")
    for key in ("optimizer", "loss", "lr_scheduler", "batch_augmentation"):
        check_component(cfg["dl"][key], f"{sources.get(f'dl.{key}', 'train.json')}: study setting dl.{key}")
    from p53hcc.tools.dl.nets import check_net_settings

    for net in cfg["dl"]["nets"]:  # what a network needs of the crop (a ViT's patches must tile it)
        try:
            check_net_settings(net, cfg["dl"]["spatial_size"], cfg["dl"]["patch_size"])
        except P53hccError as err:
            where = sources.get("dl.patch_size") or sources.get("dl.spatial_size") or "train.json"
            raise P53hccError(f"{where}: study settings dl.spatial_size / dl.patch_size: {err}") from None


def fold_groups(cfg: dict) -> str | None:
    """The cohort column whose values are the folds (leave-one-scanner-out), or None for stratified K folds."""
    if cfg.get("validation") != "leave_one_scanner_out":
        return None
    return cfg.get("batch_column") or "scanner"


def dl_training_values(cfg: dict) -> dict[str, Any]:
    """The bundle training values and engine options the study sets (``dl`` minus arms/nets/device), plus the
    master seed."""
    keys = set(TrainingValues.model_fields) - set(STUDY_OWNED_TRAINING) | {"compile", "cpu_threads"}
    return {**{k: v for k, v in cfg["dl"].items() if k in keys}, "seed": cfg["seed"]}
