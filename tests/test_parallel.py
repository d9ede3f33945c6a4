"""The one executor of the image stages (``p53hcc.tools.parallel.run_tasks``): the same results inline, on local
processes and on a Dask cluster, and one behaviour when a run is interrupted: the queued work is dropped."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from p53hcc.tools.parallel import run_tasks


def square(task: dict) -> dict:
    """A task that leaves a marker file (so the test sees which tasks ran) and stops the run at ``stop``."""
    if task.get("sleep"):
        time.sleep(task["sleep"])
    Path(task["dir"], f"{task['i']}.done").write_text("")
    if task["i"] == task.get("stop"):  # Ctrl-C raises KeyboardInterrupt where the parent waits; any error stops too
        raise KeyboardInterrupt if task.get("interrupt") else RuntimeError("stop")
    return {"i": task["i"], "square": task["i"] ** 2}


@pytest.mark.parametrize("workers", [1, 2])
def test_every_result_once_whatever_the_worker_count(tmp_path, workers):
    tasks = [{"i": i, "dir": str(tmp_path)} for i in range(6)]
    out = list(run_tasks(square, tasks, workers=workers, progress=False))
    assert sorted((r["i"], r["square"]) for r in out) == [(i, i * i) for i in range(6)]


def test_an_interrupted_local_run_drops_the_queue(tmp_path):
    """Task 0 is interrupted at once; the slow others that were only queued never run (before, a pool finished
    its whole queue after Ctrl-C)."""
    tasks = [{"i": i, "dir": str(tmp_path), "stop": 0, "interrupt": True, "sleep": 0 if i == 0 else 0.3}
             for i in range(12)]
    with pytest.raises(KeyboardInterrupt):
        list(run_tasks(square, tasks, workers=2, progress=False))
    time.sleep(3)  # the whole queue would have run by now (11 x 0.3 s on 2 workers)
    assert len(list(tmp_path.glob("*.done"))) < 12 - 2


def test_an_interrupted_cluster_run_cancels_the_cluster_queue(tmp_path):
    distributed = pytest.importorskip("distributed")
    tasks = [{"i": i, "dir": str(tmp_path), "stop": 0, "sleep": 0 if i == 0 else 0.2} for i in range(12)]
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    with cluster, distributed.Client(cluster) as client:
        with pytest.raises(RuntimeError, match="stop"):
            list(run_tasks(square, tasks, scheduler=client, progress=False))
        time.sleep(3)  # the whole queue would have run by now (11 x 0.2 s on 1 thread)
        assert len(list(tmp_path.glob("*.done"))) < 12 - 2
        ok = [{"i": i, "dir": str(tmp_path)} for i in range(4)]  # the same client still runs new work
        assert sorted(r["i"] for r in run_tasks(square, ok, scheduler=client, progress=False)) == [0, 1, 2, 3]
