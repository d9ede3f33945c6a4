"""One typed schema of the study's settings: every source (command line, --config YAML, Python API) is checked
against it before any stage runs; an unknown key names its source and the closest valid key, a wrong value what is
allowed; booleans are parsed by type; ``p53hcc config`` prints the schema and its YAML round-trips."""
from __future__ import annotations

import logging

import pytest
import yaml

from p53hcc.tools.cli import main
from p53hcc.tools.config.schema import StudyConfig, flat_keys
from p53hcc.tools.errors import P53hccError
from p53hcc.tools.pipeline.config import resolve_config
from p53hcc.tools.pipeline.study import run_study


@pytest.fixture(autouse=True)
def no_stage_runs(monkeypatch):
    """A setting these tests expect to be refused must never start the study."""
    def refuse(*args, **kwargs):
        raise AssertionError("a stage ran: the setting was not refused up front")

    monkeypatch.setattr("p53hcc.tools.pipeline.study.run_stages", refuse)


def _cli_error(capsys, caplog, argv: list[str]) -> str:
    caplog.set_level(logging.ERROR, logger="p53hcc")
    assert main(argv) == 1
    return caplog.text + capsys.readouterr().err


@pytest.mark.parametrize("flag,value,said", [
    ("--dl.epoch", "3", "command line: unknown study setting --dl.epoch; did you mean --dl.epochs?"),
    ("--epoch", "3", "command line: unknown study setting --epoch; did you mean --dl.epochs?"),
    ("--fusion.nestng", "nested", "did you mean --fusion.nesting?"),
    ("--dl.amp", "false", "it was renamed: use --dl.precision"),
    ("--dl.epochs", "three", "command line: study setting dl.epochs = 'three': Input should be a valid integer"),
    ("--dl.epochs", "0", "study setting dl.epochs = 0: Input should be greater than or equal to 1"),
    ("--fusion.nesting", "sometimes", "fusion.nesting = 'sometimes': Input should be 'nested' or 'apparent'"),
    ("--dl.nets", "resnet18,vgg16", "study setting dl.nets: unknown network(s) vgg16; choose from resnet18"),
    ("--statistics.ci_level", "95", "statistics.ci_level = 95: Input should be less than 1"),
    ("--validate.phase_order", "maybe", "validate.phase_order = 'maybe': Input should be a valid boolean"),
])
def test_a_bad_command_line_setting_fails_before_any_stage(tmp_path, capsys, caplog, flag, value, said):
    out = tmp_path / "study"
    assert said in _cli_error(capsys, caplog, ["study", "--out", str(out), flag, value])
    assert not out.exists()  # nothing ran: no folder, no lock, no synthetic cohort


@pytest.mark.parametrize("settings,said", [
    ({"dl": {"epoch": 3}}, "unknown study setting dl.epoch; did you mean dl.epochs?"),
    ({"fusion": {"harmonize": "combat"}}, "unknown study setting fusion.harmonize; did you mean fusion.harmonise?"),
    ({"dl": {"epochs": "many"}}, "study setting dl.epochs = 'many': Input should be a valid integer"),
    ({"statistics": {"dca_thresholds": [0.5, 0.1, 0.1]}}, "expected [start, stop, step]"),
    ({"dl": {"optimizer": {"_target_": " "}}}, "a component needs a _target_"),
    ({"dl": {"loss": {"_target_": "torch.nn.NoSuchLoss"}}}, "_target_ 'torch.nn.NoSuchLoss' is neither"),
    ({"cohort": "elsewhere.csv"}, "cohort is recorded by the run, not a setting"),
    ({"dl": 3}, "study setting dl = 3"),
])
def test_a_bad_yaml_setting_fails_naming_the_file(tmp_path, capsys, caplog, settings, said):
    user = tmp_path / "my.yaml"
    user.write_text(yaml.safe_dump(settings), encoding="utf-8")
    out = tmp_path / "study"
    text = _cli_error(capsys, caplog, ["study", "--out", str(out), "--config", str(user)])
    assert f"--config {user}: " in text and said in text
    assert not out.exists()


@pytest.mark.parametrize("settings,said", [
    ({"dl.epoch": 3}, "argument: unknown study setting dl.epoch; did you mean dl.epochs?"),
    ({"epochs": -1}, "argument: study setting dl.epochs = -1"),
    ({"folds": 2}, "argument: study setting folds = 2: nested cross-fitting needs at least 3 folds"),
    ({"dl.seed": 3}, "study setting dl.seed = 3: set by the study"),
    ({"workers": 3}, "in sections preprocess, radiomics: write section.workers"),
])
def test_a_bad_python_setting_fails_before_any_stage(tmp_path, settings, said):
    with pytest.raises(P53hccError) as err:
        run_study(out=tmp_path / "study", **settings)
    assert said in str(err.value)
    assert not (tmp_path / "study").exists()


def test_a_profile_is_checked_like_any_source(monkeypatch):
    from p53hcc.tools.pipeline import config

    monkeypatch.setattr(config, "study_profiles", lambda: {"paper": {}, "demo": {"dl": {"epoch": 2}}})
    with pytest.raises(P53hccError, match="profile demo: unknown study setting dl.epoch; did you mean dl.epochs"):
        resolve_config(profile="demo")


def test_every_source_is_merged_in_order_with_its_values_typed(tmp_path):
    user = tmp_path / "my.yaml"
    user.write_text(yaml.safe_dump({"dl": {"epochs": 7, "lr_scheduler": {
        "_target_": "torch.optim.lr_scheduler.StepLR", "optimizer": "@optimizer", "step_size": 2}},
        "synth": {"n": 60}, "validate": {"phase_order": False}}), encoding="utf-8")
    cfg = resolve_config(user, profile="demo", source="command line", **{"dl.epochs": "3", "paper_selection": "yes",
                                                                         "dl.optimizer": {"_target_": "torch.optim.SGD"}})
    assert cfg["dl"]["epochs"] == 3 and cfg["synth"]["n"] == 60 and cfg["dl"]["spatial_size"] == 32  # flag > YAML >
    assert cfg["paper_selection"] is True and cfg["validate"]["phase_order"] is False  # profile > schema
    assert cfg["dl"]["optimizer"] == {"_target_": "torch.optim.SGD", "params": "$@network.parameters()", "lr": "@learning_rate",
                                      "weight_decay": "@weight_decay"}  # merged key by key into train.json's
    assert cfg["dl"]["lr_scheduler"]["_target_"] == "torch.optim.lr_scheduler.StepLR"
    assert StudyConfig.model_validate(cfg).model_dump(by_alias=True, mode="json") == cfg  # study.yaml re-validates
    none = resolve_config(**{"dl.batch_augmentation": None})  # null is "none" here, not "the bundle's"
    assert none["dl"]["batch_augmentation"] is None and none["dl"]["optimizer"]["_target_"] == "torch.optim.AdamW"


def test_command_line_booleans_and_numbers_are_parsed_by_type(monkeypatch, tmp_path):
    from p53hcc.tools.cohort.synth import cohort as synth
    from p53hcc.tools.pipeline import study

    seen = {}
    monkeypatch.setattr(study, "run_study", lambda **kw: seen.update(kw) or tmp_path / "report.html")
    assert main(["study", "--out", str(tmp_path), "--paper_selection", "false"]) == 0
    assert seen["paper_selection"] is False  # python-fire alone passes the truthy string 'false'
    monkeypatch.setattr(synth, "make_cohort", lambda **kw: seen.update(kw) or tmp_path)
    assert main(["synth", "--n", "4", "--second_reader", "off", "--out", str(tmp_path)]) == 0
    assert seen["second_reader"] is False and seen["n"] == 4
    assert main(["synth", "--n", "four", "--out", str(tmp_path)]) == 1


def test_train_command_checks_its_training_settings(tmp_path, capsys, caplog, tiny_cohort):
    text = _cli_error(capsys, caplog, ["train", str(tiny_cohort), "--out", str(tmp_path / "s"), "--epoch", "2"])
    assert "unknown training setting epoch; did you mean epochs?" in text
    text = _cli_error(capsys, caplog, ["train", str(tiny_cohort), "--out", str(tmp_path / "s"), "--precision", "fp8"])
    assert "training setting precision = 'fp8': Input should be 'bf16' or 'fp32'" in text
    assert not (tmp_path / "s" / "dl").exists()


def test_p53hcc_config_lists_every_setting_and_its_yaml_round_trips(tmp_path, capsys):
    assert main(["config"]) == 0
    table = capsys.readouterr().out
    for key in flat_keys(StudyConfig):
        assert f"\n{key} " in table, key
    assert "dl.epochs" in table and "default 100" in table and "one of: nested, apparent" in table
    assert main(["config", "--format", "yaml", "--profile", "demo"]) == 0
    template = tmp_path / "defaults.yaml"
    template.write_text(capsys.readouterr().out, encoding="utf-8")
    assert resolve_config(template, profile="demo") == resolve_config(profile="demo")
    assert main(["config", "--federated", "true"]) == 0
    assert "\nfl.rounds " in capsys.readouterr().out


def test_study_help_is_the_commands_help_not_a_setting(capsys):
    assert main(["study", "--help"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "Run the whole study" in out and "p53hcc config" in out
