"""The wheel users install: only ``p53hcc/...`` (and its dist-info), both bundles as package data, and a working
``p53hcc`` command in a fresh environment outside the checkout, where the shipped bundles pass MONAI's
``verify_net_in_out``."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds a wheel and a fresh environment (~1 min)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True, text=True, cwd=out)
    (path,) = out.glob("p53hcc-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no editable checkout on its path); third-party dependencies come from
    the test environment through a plain path entry, so nothing is downloaded."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True)
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([str(env / "bin" / "python"), "-c", code], check=True, capture_output=True,
                             text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]  # this environment's, however it was built
    Path(purelib, "test-deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True)
    return env


def test_wheel_holds_only_the_one_import_name_and_both_bundles(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "p53hcc" in tops and len(tops) == 2 and all(t == "p53hcc" or t.endswith(".dist-info") for t in tops), tops
    for arm in ("mc", "ff"):
        for rel in ("configs/train.json", "configs/inference.json", "configs/metadata.json", "configs/logging.conf",
                    "docs/README.md", "LICENSE"):
            assert f"p53hcc/bundles/p53_{arm}/{rel}" in names, rel
    assert {"p53hcc/tools/config/profiles.yaml", "p53hcc/tools/config/schema.py",
            "p53hcc/fusion/report/templates/methods.html.j2", "p53hcc/fusion/report/templates/page.html.j2"} <= set(names)
    assert {"p53hcc/tools/radiomics/params/demo.yaml", "p53hcc/tools/radiomics/params/paper.yaml"} <= set(names)
    assert not [n for n in names if n.startswith("p53hcc/") and n.endswith("__init__.py") and n.count("/") == 1]


def test_installed_command_runs_outside_the_checkout(installed, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}

    def run(*args):
        return subprocess.run([str(installed / "bin" / "p53hcc"), *args], check=False, cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    code = ("import p53hcc.tools, p53hcc.bundles, importlib.util as u; print(p53hcc.tools.__file__); "
            "print(u.find_spec('tools'), u.find_spec('fusion'))")
    where = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert str(installed) in where.splitlines()[0] and str(REPO) not in where
    assert where.splitlines()[1] == "None None"  # no generic top-level packages
    synth = run("synth", "--n", "4", "--out", "cohort", "--second_reader", "false")
    assert synth.returncode == 0, synth.stderr[-2000:]
    assert not list((tmp_path / "cohort" / "masks").glob("*_r2.nii.gz"))  # 'false' means false
    valid = run("validate", "cohort/cohort.csv")
    assert valid.returncode == 0 and "no problems found" in valid.stdout, valid.stdout + valid.stderr[-2000:]
    bad = run("validate", "missing.csv")
    assert bad.returncode == 1 and "p53hcc: error:" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("arm", ["mc", "ff"])
def test_shipped_bundles_pass_verify_net_in_out(installed, tmp_path, arm):
    code = ("from p53hcc.tools.dl.bundle import bundle_dir; "
            f"print(bundle_dir('{arm}'))")
    root = Path(subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, check=True,
                               capture_output=True, text=True).stdout.strip())
    assert str(installed) in str(root)
    res = subprocess.run([str(installed / "bin" / "python"), "-m", "monai.bundle", "verify_net_in_out", "network_def",
                          "--meta_file", str(root / "configs" / "metadata.json"),
                          "--config_file", str(root / "configs" / "inference.json"), "--device", "cpu"],
                         check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
