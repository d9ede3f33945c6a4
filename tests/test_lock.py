"""One writer per study folder: a second run is refused naming the owner, a stale lock is taken over."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from p53hcc.tools.errors import P53hccError
from p53hcc.tools.lock import LOCK_NAME, folder_lock


def _write_lock(folder, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "start": None,
                                                "started": "2025-01-01T00:00:00", "command": "p53hcc study",
                                                "token": "other"}))


@pytest.fixture
def live_pid():
    """The pid of a process of this host that is still running (another p53hcc run, as far as the lock knows)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_second_run_is_refused_with_the_owner_named(tmp_path, live_pid, fake_image_stages):
    """Two studies into one folder: the second stops at once instead of mixing its results with the first's."""
    from p53hcc.tools.pipeline.study import run_study

    _write_lock(tmp_path / "study", live_pid)
    with pytest.raises(P53hccError, match=rf"in use by another p53hcc run \(pid {live_pid} on"):
        run_study(out=tmp_path / "study", nets="resnet18", folds=3, epochs=1, **{"synth.n": 40})
    assert fake_image_stages["calls"] == [] and not (tmp_path / "study" / "study.yaml").exists()
    assert json.loads((tmp_path / "study" / LOCK_NAME).read_text())["pid"] == live_pid  # not taken over


def test_cli_refuses_with_one_line(tmp_path, live_pid, capsys):
    from p53hcc.tools.cli import main

    _write_lock(tmp_path / "pp", live_pid)
    assert main(["preprocess", str(tmp_path / "cohort.csv"), "--out", str(tmp_path / "pp")]) == 1
    err = capsys.readouterr().err
    assert "in use by another p53hcc run" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    _write_lock(tmp_path, int(dead.stdout))
    with folder_lock(tmp_path) as path:
        owner = json.loads(path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with folder_lock(tmp_path):  # re-entrant within one process (evaluate runs predict inside)
            pass
        assert path.exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    _write_lock(tmp_path, 1, host="some-other-node")
    with pytest.raises(P53hccError, match=f"delete {tmp_path / LOCK_NAME}"), folder_lock(tmp_path):
        pass


def test_a_process_holding_the_lock_blocks_another_process(tmp_path):
    code = ("import sys, time; from p53hcc.tools.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(P53hccError, match=f"pid {holder.pid}"), folder_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    with folder_lock(tmp_path):  # the killed holder's lock is stale now
        pass
