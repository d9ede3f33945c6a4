"""SIGTERM (a batch scheduler's stop, ``kill``) ends a command like Ctrl-C: its pool workers stopped (no orphans),
the folder's lock released, exit code 143, and the same command resumes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from p53hcc.tools.cli import main
from p53hcc.tools.lock import LOCK_NAME
from tests.conftest import make_tiny_cohort


def _children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return {c for c in out if _alive(c)}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from Linux /proc")
@pytest.mark.parametrize("target", ["parent", pytest.param("group", marks=pytest.mark.slow)])
def test_sigterm_stops_the_workers_releases_the_lock_and_resumes(tmp_path, target):
    """``target``: SIGTERM to the parent only (``kill PID``), or to the whole process group (a scheduler)."""
    csv = make_tiny_cohort(tmp_path / "c", n=8, shape=(48, 48, 16))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUTF8": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "p53hcc.tools.cli", "preprocess", str(csv), str(out),
                             "--workers", "2", "--params", "paper"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) >= 2, "the pool never started"
        time.sleep(0.5)  # mid-task
        if target == "group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    time.sleep(0.2)
    assert not [w for w in workers if _alive(w)], "pool workers left running"
    assert not (out / LOCK_NAME).exists()
    done = len(pd.read_csv(out / "preprocessed" / "index.csv")) if (out / "preprocessed" / "index.csv").exists() else 0
    assert done < 24  # stopped mid-run
    assert main(["preprocess", str(csv), str(out), "--workers", "1", "--params", "paper"]) == 0
    assert len(pd.read_csv(out / "preprocessed" / "index.csv")) == 24
    assert not [p for p in (out / "preprocessed").rglob(".*") if p.is_file()], "half-written files left"
