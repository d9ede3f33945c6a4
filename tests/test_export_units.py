"""Fast checks of the export pieces that need no study: the generated ``scripts/`` run without p53hcc, and the
Deploy app's series selection rules give the named errors (the end-to-end runs are test_export_bundle.py and
test_deploy_app.py, both slow)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from p53hcc.tools.cohort.dicomseg import SEG_SOP_CLASS
from p53hcc.tools.deploy.dicom_study import DicomInputError, Series, select_series
from p53hcc.tools.dl.bundle import bundle_dir
from p53hcc.tools.export.scripts import generate_scripts, referenced_names

MR = "1.2.840.10008.5.1.4.1.1.4"


def test_generated_scripts_import_without_p53hcc(tmp_path):
    """Every name the shipped configs use is defined by the generated package, which never imports p53hcc."""
    texts = [(bundle_dir(a) / "configs" / f).read_text() for a in ("mc", "ff")
             for f in ("train.json", "inference.json", "deploy.json")]
    names = set().union(*(referenced_names(t) for t in texts))
    assert {"roi_transforms", "n4_transforms", "SeriesSpacingReader", "build_net"} <= names
    for rel, text in generate_scripts(names, "test").items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
        assert not re.search(r"^\s*(from|import) p53hcc", text, re.MULTILINE), rel
    probe = ("import sys; sys.modules['p53hcc'] = None; sys.path.insert(0, sys.argv[1]); "
             "import scripts.components as c; missing = set(sys.argv[2:]) - set(dir(c)); "
             "assert not missing, missing; print('ok')")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path), *sorted(names)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def _series(uid: str, description: str, modality: str = "MR", refs: tuple[str, ...] = ()) -> Series:
    sop = SEG_SOP_CLASS if modality == "SEG" else MR
    return Series(uid, modality, description, sop, "1.9", "P1", [f"/x/{uid}.dcm"], refs)


def _study() -> list[Series]:
    images = [_series("1.1", "AP arterial phase"), _series("1.2", "PVP portal venous phase"),
              _series("1.3", "DP delayed phase"), _series("1.4", "T2 HASTE")]
    segs = [_series(f"2.{i}", f"{p} tumour ROI", "SEG", (f"1.{i}",)) for i, p in enumerate(("AP", "PVP", "DP"), 1)]
    return images + segs


def test_selection_rules_pick_one_series_and_one_seg_per_phase():
    images, masks = select_series(_study())
    assert {p: s.uid for p, s in images.items()} == {"ap": "1.1", "pvp": "1.2", "dp": "1.3"}
    assert {p: s.uid for p, s in masks.items()} == {"ap": "2.1", "pvp": "2.2", "dp": "2.3"}


@pytest.mark.parametrize("edit, message", [
    (lambda s: [x for x in s if x.uid not in ("1.3", "2.3")], r"phase DP: no series description matches"),
    (lambda s: [*s, _series("1.5", "PVP portal venous phase (repeat)")],
     r"phase PVP: 2 candidate series, series 1.2 .*series 1.5"),
    (lambda s: [_series("1.1", "AP arterial phase", "CT") if x.uid == "1.1" else x for x in s],
     r"phase AP: series 1.1 \(CT, 'AP arterial phase'\) has modality CT, not MR"),
    (lambda s: [*s, _series("2.9", "old ROI", "SEG", ("7.7",))], r"mask series 2.9 .* references series 7.7, none"),
    (lambda s: [x for x in s if x.uid != "2.2"], r"phase PVP: 0 DICOM SEG masks reference series 1.2"),
])
def test_bad_studies_name_the_series(edit, message):
    with pytest.raises(DicomInputError, match=message):
        select_series(edit(_study()))


def test_deploy_folder_is_an_sdk_app():
    app = Path(__file__).resolve().parents[1] / "deploy"
    for name in ("app.py", "__main__.py", "app.yaml", "requirements.txt", "README.md"):
        assert (app / name).is_file(), name


def test_metadata_names_installable_distributions():
    """``itk`` is split over itk-core, itk-io...: the metadata must pin the meta-distribution that installs all."""
    from p53hcc.tools.export.metadata import distribution

    assert distribution("itk") == "itk"
    assert distribution("SimpleITK").lower() == "simpleitk"


def test_bundle_code_is_scoped(tmp_path):
    """The app imports the bundle's ``scripts`` package only while it scores: afterwards sys.path and another
    ``scripts`` package (the repository's own) are as before (they leaked into later tests)."""
    from p53hcc.tools.deploy.run import bundle_code

    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "__init__.py").write_text("WHO = 'bundle'\n")
    path, before = list(sys.path), sys.modules.get("scripts")
    with bundle_code(tmp_path):
        import scripts

        assert scripts.WHO == "bundle"
    assert sys.path == path and sys.modules.get("scripts") is before


def test_generated_code_passes_the_zoos_flake8(tmp_path):
    """Every generated file (scripts/ for both arms' exported configs, the sample-data script, both unit tests)
    passes the zoo's flake8 config: black leaves joined implicit concatenations that bugbear's B914 refuses."""
    pytest.importorskip("flake8", reason="the zoo's code checks are the zoo extra: pip install 'p53hcc[zoo]'")
    from p53hcc.tools.export.configs import exported_configs, script_names
    from p53hcc.tools.export.readme import sample_data_script, unit_test, unit_test_dist
    from p53hcc.tools.export.scripts import format_code

    params = {"net": "resnet18", "spatial_size": 32, "margin": 10, "pixdim": 1.0, "amp": False, "epochs": 1}
    needed: dict[str, set[str]] = {}
    for arm, shape in (("mc", None), ("ff", ([4, 4, 4], 2))):
        for cfg in exported_configs(arm, "x", params, {}, None, shape, {"arm": arm}).values():
            for module, names in script_names(cfg).items():
                needed.setdefault(module, set()).update(names)
    assert {"p53hcc.tools.dl.nets", "p53hcc.tools.dl.ffnet"} <= set(needed)
    files = {**generate_scripts(needed, "test"), "scripts/sample_data.py": format_code(sample_data_script()),
             "test_x.py": format_code(unit_test("x", "ff")), "test_x_dist.py": format_code(unit_test_dist("x", "mc"))}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    ffnet = files["scripts/ffnet.py"] + files["scripts/nets.py"]
    assert not re.search(r"^\s*(from|import) (pandas|itk|pydicom|SimpleITK|scripts\.components)", ffnet, re.MULTILINE)
    cfg = Path(__file__).parent / "data" / "model-zoo-ci" / "setup.cfg"
    done = subprocess.run([sys.executable, "-m", "flake8", "--config", str(cfg), "."], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:]


def test_adjacent_strings_are_joined_into_one_literal():
    from p53hcc.tools.export.scripts import join_adjacent_strings

    src = 'x = f("a {b} " "c", r"d" r"e")\ny = f"{a} " "{{lit}}"\nz = """doc"""\n'
    out = join_adjacent_strings(src)
    assert out == 'x = f("a {b} c", r"de")\ny = f"{a} {{{{lit}}}}"\nz = """doc"""\n'
    scope = {"a": 1}
    assert eval(out.splitlines()[1].split(" = ")[1], scope) == eval(src.splitlines()[1].split(" = ")[1], scope)


def test_weights_url_must_be_public_https():
    from p53hcc.tools.errors import P53hccError
    from p53hcc.tools.export.metadata import check_weights_url

    assert check_weights_url("https://example.org/w/v1") == "https://example.org/w/v1"
    for bad in ("http://example.org/w", "REPLACE-ME", "https://UNPUBLISHED.invalid/x"):
        with pytest.raises(P53hccError, match="not a public https:// URL"):
            check_weights_url(bad)


def test_large_files_without_url_say_how_to_publish(tmp_path):
    from p53hcc.tools.export.metadata import large_files_yaml

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"w")
    text = large_files_yaml(tmp_path, ["models/model.pt"], None, "b", "0.1.0")
    assert "not published yet" in text and "--weights_url" in text and ".invalid/b_v0.1.0/models/model.pt" in text
    assert "# " not in large_files_yaml(tmp_path, ["models/model.pt"], "https://h/p", "b", "0.1.0")
