"""The one typed definition of a study's settings: every key with its type, allowed values, default and meaning.

Every source of settings (``--a.b`` command-line flags, a ``--config`` YAML, the Python API, the ``demo`` profile)
is checked against these models before anything runs (:mod:`p53hcc.tools.pipeline.config`): an unknown key names
the closest valid one, a wrong type or value names what is allowed. Booleans are parsed here, by type, once
(``--dl.n4 false`` from the command line is the string ``'false'``).

Homes of the defaults: a study-level default is the ``default`` below; a default marked *stage default* (``None``
here) belongs to the stage that owns it and is filled in by the resolver: the folds
(``p53hcc.tools.cohort.splits.DEFAULT_FOLDS``), the preprocessing preset and the radiomics parameter set
(``p53hcc.tools.preprocessing.params.DEFAULT_PRESET``, ``p53hcc.tools.radiomics.features.DEFAULT_PARAMS``), and
every DL training value (the bundles' ``configs/train.json``: network, epochs, optimizer, loss, augmentation...).
The engine options' defaults (:class:`EngineOptions`) live here.

Why pydantic (v2): typed models with ``extra="forbid"``, ranges (``ge``/``gt``/``le``), ``Literal`` choices and
error locations (the key path) in one well-kept library that scikit-learn-style code and the MONAI ecosystem
already meet; jsonargparse would also parse the command line (fire is that here), and OmegaConf structured
configs check types but not ranges, with less precise errors.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from p53hcc.tools.schema import PAPER_NETS

#: Precision of training and scoring: bf16 autocast on CUDA (no effect on a CPU, which computes in fp32), or fp32.
PRECISIONS = ("bf16", "fp32")
#: Keys of earlier versions and what replaced them (an old YAML gets a pointed error, not "unknown key").
RENAMED = {"amp": "dl.precision", "dl.amp": "dl.precision"}
#: A model-level check's message starts with the key it is about (``"folds: ..."``), so its error names the key,
#: its value and where it came from like any other.
#: Keys the run records (written to ``study.yaml``); no source may set them.
RECORDED = ("profile", "cohort", "cohort_generated")


class Section(BaseModel):
    """A group of settings: unknown keys are errors; values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _names(value: Any) -> Any:
    """A comma-separated string (``--dl.nets resnet18,resnet34``) as a list of names."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, tuple):
        return list(value)
    return value


def _unique(value: list) -> list:
    if len(set(value)) != len(value):
        raise ValueError(f"each name once, got {value}")
    return value


def _component(value: dict[str, Any]) -> dict[str, Any]:
    target = value.get("_target_")
    if not isinstance(target, str) or not target.strip():
        raise ValueError("a component needs a _target_ naming the class or function to instantiate, e.g. "
                         "{_target_: torch.optim.SGD, params: $@network.parameters(), lr: '@learning_rate'}")
    return value


#: A MONAI bundle config component: ``{"_target_": "torch.optim.SGD", "lr": "@learning_rate", ...}``.
Component = Annotated[dict[str, Any], AfterValidator(_component)]
#: A list of distinct names, also given as one comma-separated string.
Names = Annotated[list[str], BeforeValidator(_names), AfterValidator(_unique)]


# ------------------------------------------------------------------------------------------------ sections
class Synth(Section):
    """The synthetic demo cohort generated when no cohort.csv is given."""

    n: int = Field(120, ge=2, description="patients (7:3 train/validation)")
    seed: int = Field(0, ge=0, description="seed of the synthetic cohort (same seed: byte-identical files)")
    size: Literal["demo", "paper"] = Field("demo", description="demo: small volumes; paper: whole abdomen")
    second_reader: bool = Field(True, description="second-reader masks for the ICC filter")
    profile: Literal["internal", "external"] = Field("internal", description="internal (7 scanners) or external "
                                                     "(3 other scanners) scanner profiles")


class Validate(Section):
    """Checks of what the study needs, run before any heavy stage (also ``p53hcc validate --study``)."""

    phase_order: bool = Field(True, description="warn when the liver around the tumour is not darkest in AP "
                              "(phase columns swapped?)")


class Preprocess(Section):
    """N4 -> 1 mm -> z-score of every image (docs/preprocessing.md)."""

    params: str | dict[str, Any] | None = Field(None, description="preset demo | paper, or a dict of overrides "
                                                "of the default preset (stage default: paper)")
    workers: int | None = Field(None, ge=1, description="local worker processes (null: all cores)")
    scheduler: str | None = Field(None, description="Dask scheduler address (tcp://host:port), optional")


class Radiomics(Section):
    """PyRadiomics features per phase (docs/radiomics.md)."""

    params: str | None = Field(None, description="demo | paper | path to a PyRadiomics YAML (stage default: paper, "
                               "1197 features per phase)")
    icc_threshold: float = Field(0.75, ge=0, le=1, description="features with ICC below this (second-reader "
                                 "masks) are dropped before selection")
    workers: int | None = Field(None, ge=1, description="local worker processes (null: all cores)")


class TrainingValues(Section):
    """The training values of the bundles' ``configs/train.json`` (the one home of their defaults: null here)."""

    net: str | None = Field(None, description="network (the study sweeps dl.nets instead)")
    epochs: int | None = Field(None, ge=1, description="training epochs")
    batch_size: int | None = Field(None, ge=2, description="images per batch")
    learning_rate: float | None = Field(None, gt=0, description="learning rate (the optimizer's @learning_rate)")
    weight_decay: float | None = Field(None, ge=0, description="weight decay (the optimizer's @weight_decay)")
    spatial_size: int | None = Field(None, ge=8, description="side of the 2D ROI crop fed to the network (px)")
    margin: int | None = Field(None, ge=0, description="ROI bounding box margin (px) around the tumour")
    patch_size: int | None = Field(None, ge=2, description="vit: side of a patch (px); spatial_size "
                                   "must be a multiple of it (checked per network; ignored by the others)")
    pixdim: float | None = Field(None, gt=0, description="voxel size (mm) the DL chain resamples to")
    n4: bool | None = Field(None, description="N4 in the bundle's own chain (off when it reads preprocessed "
                            "volumes)")
    precision: Literal["bf16", "fp32"] | None = Field(None, description="bf16 autocast on CUDA (a CPU computes in "
                                                      "fp32) or fp32")
    seed: int | None = Field(None, ge=0, description="seed of weights, batches and augmentation")
    min_scale: float | None = Field(None, gt=0, le=1, description="smallest random crop side of the augmentation")
    pretrained_path: str | None = Field(None, description="local torchvision-format state dict to start from "
                                        "(null: from scratch)")
    optimizer: Component | None = Field(None, description="optimizer component (MONAI config syntax, e.g. "
                                        "{_target_: torch.optim.SGD, momentum: 0.9})")
    loss: Component | None = Field(None, description="loss component (its class weighting included)")
    lr_scheduler: Component | None = Field(None, description="learning-rate schedule component, stepped once per "
                                           "epoch (null: constant)")
    warmup_epochs: int | None = Field(None, ge=0, description="epochs of linear learning-rate warm-up (from "
                                      "lr / (warmup_epochs + 1)) before lr_scheduler; 0: none")
    batch_augmentation: Component | None = Field(None, description="augmentation of each training batch "
                                                 "(null: none)")


#: Training values whose null is a value ("none"), not "the bundle's default".
NULLABLE_TRAINING = ("pretrained_path", "lr_scheduler", "batch_augmentation")
#: Training values the study sets itself (the network sweep, the master seed, N4: the arms read the study's
#: preprocessed volumes); not settable in a study's ``dl`` section.
STUDY_OWNED_TRAINING = ("net", "seed", "n4")


class EngineOptions(Section):
    """Options of the fast training engine (not in the bundle); the one home of their defaults."""

    source: Literal["raw", "preprocessed"] = Field("raw", description="raw: the bundle's own chain on the "
                                                   "manifest's images; preprocessed: the study's volumes")
    compile: bool = Field(False, description="wrap the network in torch.compile")
    cpu_threads: int = Field(1, ge=1, description="torch threads while training and scoring (fixed so the "
                             "networks never depend on the machine's core count; raise it for CPU speed)")


class Training(TrainingValues, EngineOptions):
    """Everything ``p53hcc train`` accepts: the bundle's training values and the engine options."""


class DL(TrainingValues):
    """The deep-learning arms (docs/dl_arms.md); training values default to the bundles' ``train.json``."""

    arms: Annotated[list[Literal["mc", "ff"]], BeforeValidator(_names), AfterValidator(_unique)] = Field(
        ["mc", "ff"], min_length=1, description="mc (multi-channel) and/or ff (feature fusion)")
    nets: Names = Field(list(PAPER_NETS), min_length=1, description="networks to sweep (default the paper's six; "
                        "also efficientnet_b0, vit, swin)")
    device: str | None = Field(None, pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="cpu | cuda | cuda:N "
                               "(null: cuda when available)")
    compile: bool = EngineOptions.model_fields["compile"]
    cpu_threads: int = EngineOptions.model_fields["cpu_threads"]

    @field_validator(*STUDY_OWNED_TRAINING)
    @classmethod
    def _study_owned(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("set by the study, not here (dl.nets is the network sweep, seed the master seed, and "
                             "the arms read the study's N4-corrected volumes)")
        return value


class Fusion(Section):
    """The clinical, radiomics, DL-choice and combined models (docs/study.md, docs/validation.md)."""

    spearman_threshold: float = Field(0.9, gt=0, le=1, description="radiomics: drop one of each feature pair "
                                      "with |rho| above this")
    lasso_cv_folds: int = Field(5, ge=2, description="radiomics: inner folds of the LASSO penalty search")
    selection_rule: Literal["train_oof_auc"] = Field("train_oof_auc", description="how the final DL model is "
                                                     "chosen (never on validation patients)")
    nesting: Literal["nested", "apparent"] = Field("nested", description="nested: DL choice and combined model "
                                                   "refit inside each training fold; apparent: on the reported "
                                                   "out-of-fold scores (optimistic)")
    stack_weights: Literal["nonnegative", "free"] = Field("nonnegative", description="weights of the combined "
                                                          "model")
    harmonise: Literal["none", "combat"] = Field("none", description="ComBat per scanner on the radiomics and FF "
                                                 "deep features, fitted inside every training fold")


class Statistics(Section):
    """metrics.csv, delong.csv, calibration and decision curves."""

    threshold: Literal["youden_train"] = Field("youden_train", description="operating point: Youden index on "
                                               "training out-of-fold scores")
    ci_level: float = Field(0.95, gt=0, lt=1, description="level of every confidence interval")
    calibration_bins: int = Field(10, ge=2, description="at most this many risk groups of the binned "
                                  "calibration points")
    dca_thresholds: tuple[float, float, float] = Field((0.01, 0.99, 0.01), description="start, stop, step of the "
                                                       "decision-curve threshold probabilities")

    @field_validator("dca_thresholds")
    @classmethod
    def _grid(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        start, stop, step = value
        if not (0 <= start < stop < 1 and step > 0):
            raise ValueError(f"expected [start, stop, step] with 0 <= start < stop < 1 and step > 0, got {list(value)}")
        return value


class Gradcam(Section):
    """The report's Grad-CAM gallery (docs/gradcam.md)."""

    n: int = Field(4, ge=0, description="validation patients in the gallery")
    layer: str | None = Field(None, description="target layer (null: the deepest stage with >= 7x7 cells at the "
                              "input size)")


class StudyConfig(Section):
    """Every setting of ``p53hcc study``; ``STUDY_DIR/study.yaml`` is this model, resolved."""

    seed: int = Field(0, ge=0, description="master seed: folds, training and model fitting derive from it")
    synth: Synth = Field(default_factory=Synth)
    folds: int | None = Field(None, ge=2, description="stratified folds of the training cohort (stage default: 5)")
    validation: Literal["kfold", "leave_one_scanner_out"] = Field("kfold", description="kfold: stratified folds; "
                                                                  "leave_one_scanner_out: one fold per scanner")
    batch_column: str = Field("scanner", min_length=1, description="cohort column with each patient's scanner / "
                              "centre (harmonisation, leave-one-scanner-out); never a model input")
    validate_: Validate = Field(default_factory=Validate, alias="validate")
    on_failure: Literal["fail", "record"] = Field("fail", description="a patient a stage cannot process: fail "
                                                  "(stop) or record (left out, listed in dropped.csv)")
    preprocess: Preprocess = Field(default_factory=Preprocess)
    radiomics: Radiomics = Field(default_factory=Radiomics)
    dl: DL = Field(default_factory=DL)
    fusion: Fusion = Field(default_factory=Fusion)
    statistics: Statistics = Field(default_factory=Statistics)
    gradcam: Gradcam = Field(default_factory=Gradcam)
    paper_selection: bool = Field(False, description="also show the paper's (optimistic) choice of network by "
                                  "validation AUC")
    profile: Literal["demo", "paper"] | None = Field(None, description="recorded: the profile applied")
    cohort: str | None = Field(None, description="recorded: the cohort.csv the study read")
    cohort_generated: bool | None = Field(None, description="recorded: the cohort is the generated synthetic one")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _nesting_needs_folds(self) -> StudyConfig:
        if (self.fusion.nesting == "nested" and self.folds is not None and self.folds < 3
                and self.validation == "kfold"):
            raise ValueError("folds: nested cross-fitting needs at least 3 folds (or set fusion.nesting: apparent)")
        return self


class Federated(Section):
    """``p53hcc federated`` (docs/federated.md): how the cohort's sites train and evaluate together."""

    site_column: str = Field("scanner", min_length=1, description="cohort.csv column whose values are the sites "
                             "(FLARE clients); never a model input")
    folds: int = Field(3, ge=3, description="site-local stratified folds of every site's training patients (fold k "
                       "of the federation = every site's fold k); >= 3: the LASSO penalty is cross-validated over "
                       "the other outer folds")
    rounds: int = Field(2, ge=1, description="FedAvg rounds of every DL network")
    local_epochs: int = Field(1, ge=1, description="local epochs of a site per FedAvg round (MonaiAlgo's "
                              "local_epochs)")
    arms: Annotated[list[Literal["mc", "ff"]], BeforeValidator(_names), AfterValidator(_unique)] = Field(
        ["mc", "ff"], description="DL arms trained federated (empty: clinical, radiomics and combined only)")
    net: str | None = Field(None, description="network of both arms (null: the bundles' net)")
    bins: int = Field(100, ge=10, description="score bins of the federated evaluation (ROC, DeLong, "
                      "calibration); a multiple of calibration_groups")
    calibration_groups: int = Field(10, ge=2, description="equal-width risk groups of the calibration curve")
    min_site_patients: int = Field(6, ge=1, description="a site with fewer training patients is refused (its "
                                   "sums would be nearly per-patient)")
    nonnegative: bool = Field(True, description="non-negative weights of the combined model (as "
                              "fusion.stack_weights: nonnegative)")
    seed: int = Field(0, ge=0, description="seed of the sites' folds and of the DL networks' initial weights")

    @model_validator(mode="after")
    def _bins_in_groups(self) -> Federated:
        if self.bins % self.calibration_groups:
            raise ValueError(f"bins: must be a multiple of calibration_groups ({self.calibration_groups})")
        return self


class FederatedStudyConfig(StudyConfig):
    """The settings of ``p53hcc federated``: a study's, and the federation's own (``fl``)."""

    fl: Federated = Field(default_factory=Federated)


# ------------------------------------------------------------------------------------------------ the key tree
def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def key_tree(model: type[BaseModel] = StudyConfig) -> dict[str, Any]:
    """``{key: sub-tree or None}`` of a model's settings (aliases as users write them), for key checks."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        sub = _model_of(field.annotation)
        out[field.alias or name] = key_tree(sub) if sub else None
    return out


def flat_keys(model: type[BaseModel] = StudyConfig, prefix: str = "") -> list[str]:
    """Every setting as a dotted key (``dl.epochs``), in declaration order."""
    keys = []
    for key, sub in key_tree(model).items():
        keys += flat_keys(_submodel(model, key), f"{prefix}{key}.") if sub is not None else [f"{prefix}{key}"]
    return keys


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel]:
    for name, field in model.model_fields.items():
        if (field.alias or name) == key:
            return _model_of(field.annotation)
    raise KeyError(key)


def field_info(key: str, model: type[BaseModel] = StudyConfig):
    """The pydantic ``FieldInfo`` of a dotted key."""
    *parents, leaf = key.split(".")
    for p in parents:
        model = _submodel(model, p)
    for name, field in model.model_fields.items():
        if (field.alias or name) == leaf:
            return field
    raise KeyError(key)
