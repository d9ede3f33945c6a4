"""The study's cached, resumable stage runner (``p53hcc.tools.pipeline.stages``): what reruns after a change, a
kill or a deleted output, and which settings the stage keys hold."""
from __future__ import annotations

import pytest

from p53hcc.tools.pipeline.config import resolve_config
from p53hcc.tools.pipeline.stages import Stage, read_marker, run_stages
from p53hcc.tools.pipeline.study import build_stages


def _pipeline(calls: list, params_b: dict | None = None, fail_b: bool = False, sleep_mark: list | None = None):
    """a -> b -> c, plus d depending on a only; each writes a file from its input so outputs chain."""
    def a(ctx):
        calls.append("a")
        (ctx.study_dir / "a.txt").write_text("A")

    def b(ctx):
        calls.append("b")
        (ctx.study_dir / "b.part").write_text("half")  # a partial output, then a crash
        if fail_b:
            raise RuntimeError("killed mid-way")
        (ctx.study_dir / "b.txt").write_text((ctx.study_dir / "a.txt").read_text(encoding="utf-8") + str(ctx.params["x"]))

    def c(ctx):
        calls.append("c")
        (ctx.study_dir / "c.txt").write_text((ctx.study_dir / "b.txt").read_text(encoding="utf-8") + "C")

    def d(ctx):
        calls.append("d")

    return [Stage("a", a), Stage("b", b, params=params_b or {"x": 1}, deps=["a"]),
            Stage("c", c, deps=["b"]), Stage("d", d, deps=["a"])]


def test_second_run_executes_nothing(tmp_path):
    calls: list = []
    first = run_stages(_pipeline(calls), tmp_path)
    assert calls == ["a", "b", "c", "d"] and all(r.status == "ran" for r in first)
    calls.clear()
    second = run_stages(_pipeline(calls), tmp_path)
    assert calls == [] and all(r.status == "cached" for r in second)
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "A1C"


def test_param_change_reruns_only_that_stage_and_dependants(tmp_path):
    calls: list = []
    run_stages(_pipeline(calls), tmp_path)
    calls.clear()
    run_stages(_pipeline(calls, params_b={"x": 2}), tmp_path)
    assert calls == ["b", "c"]  # a and d (not downstream of b) stay cached
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == "A2C"
    assert read_marker(tmp_path, "b")["params"] == {"x": 2}


def test_killed_stage_leaves_no_marker_and_reruns(tmp_path):
    calls: list = []
    with pytest.raises(RuntimeError):
        run_stages(_pipeline(calls, fail_b=True), tmp_path)
    assert read_marker(tmp_path, "a") is not None and read_marker(tmp_path, "b") is None
    assert read_marker(tmp_path, "c") is None
    calls.clear()
    run_stages(_pipeline(calls), tmp_path)
    assert calls == ["b", "c", "d"]
    # identical outputs to an uninterrupted run
    fresh = tmp_path / "fresh"
    run_stages(_pipeline([]), fresh)
    assert (tmp_path / "c.txt").read_text(encoding="utf-8") == (fresh / "c.txt").read_text(encoding="utf-8")


def test_deleted_output_reruns_that_stage(tmp_path):
    calls: list = []

    def make():
        return [Stage("w", lambda ctx: (calls.append("w"), (ctx.study_dir / "w.txt").write_text("w")),
                      outputs=["w.txt"])]
    run_stages(make(), tmp_path)
    run_stages(make(), tmp_path)
    (tmp_path / "w.txt").unlink()
    run_stages(make(), tmp_path)
    assert calls == ["w", "w"] and (tmp_path / "w.txt").exists()


def test_changed_input_file_reruns(tmp_path):
    src = tmp_path / "cohort.csv"
    src.write_text("v1")
    calls: list = []

    def make():
        return [Stage("v", lambda ctx: calls.append("v"), inputs=[src])]
    run_stages(make(), tmp_path / "s")
    run_stages(make(), tmp_path / "s")
    src.write_text("v2")
    run_stages(make(), tmp_path / "s")
    assert calls == ["v", "v"]


def test_pipeline_keys_ignore_runtime_knobs():
    """Workers / device do not invalidate finished work; epochs invalidates the DL stages only."""
    def keys(**kw):
        from p53hcc.tools.pipeline.stages import stage_key
        out, upstream = {}, {}
        for s in build_stages(resolve_config(nets="resnet18", **kw), cohort_given=True):
            upstream[s.name] = out[s.name] = stage_key(s, upstream)
        return out
    base = keys()
    assert keys(device="cuda", **{"preprocess.workers": 8}) == base
    changed = {k for k, v in keys(epochs=9).items() if v != base[k]}
    assert changed == {"dl_mc_resnet18", "dl_ff_resnet18", "fusion", "statistics", "gradcam", "figures",
                       "report", "model"}
