"""Do the DL arms learn the image signal, and how close do they get to the imaging ceiling? (issue 15)

A synthetic cohort at the paper's size (n = 320, the paper's 224 / 96 split) goes through the study's own chain:
preprocessing (N4 -> 1 mm -> z-score), radiomics, the folds, both DL arms cross-fitted by the study's engine
(:func:`p53hcc.tools.dl.crossfit.train_arm`), then the study's fusion and statistics stages (clinical and radiomics
models on the same folds). The synthetic cohort knows what the images carry: ``truth.csv``'s image-only posterior
(tumour size + enhancement findings + latent heterogeneity) bounds, in the population, the AUC of any image model,
and ``llr_latent`` is the image signal the clinical table does not hold. The same arms are trained again on a null
cohort (labels permuted within each split), where they must stay at 0.5.

Writes ``benchmarks/results/dl_learning_<device>.json`` and ``.png`` (see ``benchmarks/dl_learning_report.py``).
Every step is resumable (cached preprocessing, radiomics and crops, one ``done.json`` per trained network, the
fusion stages skipped when their inputs are unchanged): rerun the same command after an interruption. Network
weights are deleted once an arm is scored (``--keep-weights`` keeps them); scores, features and training
histories stay. ``--part real`` and ``--part null`` train one cohort each (two processes at once on a shared
machine); ``--null-epochs`` trains the null cohort for fewer epochs where time is short.

    python benchmarks/dl_learning.py --measure          # time the candidate settings on this machine first
    nice -n 10 python benchmarks/dl_learning.py --epochs 12 --null-epochs 6   # the CPU run of docs/dl_arms.md
    python benchmarks/dl_learning.py --device cuda --profile paper   # 256 px, 100 epochs, six nets (GPU)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WORK = REPO / "benchmarks" / "work" / "dl_learning"
ALL_NETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121")
#: Settings of each profile. ``cpu``: chosen by ``--measure`` on the shared 2-core machine (docs/dl_arms.md);
#: ``paper``: the paper's input size, 100 epochs and six networks, for a GPU.
PROFILES = {
    "cpu": {"n": 320, "seed": 0, "size": "demo", "folds": 5, "nets": ["resnet18"], "arms": ["mc", "ff"],
            "epochs": 30, "spatial_size": 64, "batch_size": 16, "preprocess": "paper", "radiomics": "demo",
            "cpu_threads": 1, "null": True, "null_epochs": None},
    "paper": {"n": 320, "seed": 0, "size": "paper", "folds": 5, "nets": list(ALL_NETS), "arms": ["mc", "ff"],
              "epochs": 100, "spatial_size": 256, "batch_size": 16, "preprocess": "paper", "radiomics": "paper",
              "cpu_threads": 1, "null": True, "null_epochs": None},
}
#: Training values a run may override (``--train key=value``), passed to ``train_arm``.
TRAIN_KEYS = ("learning_rate", "weight_decay", "min_scale", "batch_size", "margin", "pretrained_path")


class LoadMonitor:
    """Samples the 1-minute load average every ``every`` seconds in a thread (the machine is shared)."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def summary(self) -> dict:
        s = np.asarray(self.samples or [np.nan])
        return {"samples": len(self.samples), "every_s": self.every, "mean": float(np.nanmean(s)),
                "max": float(np.nanmax(s)), "min": float(np.nanmin(s)), "cpu_count": os.cpu_count()}


def prepare(work: Path, cfg: dict, workers: int = 1) -> tuple[Path, Path, dict]:
    """Cohort, preprocessing, radiomics, folds and the arms' ROI crops in ``work/study`` (each step cached);
    returns ``(cohort.csv, study folder, seconds per step)``.

    ``prepared.json`` records what was made (and its seconds), so a rerun skips these steps. The preprocessed
    volumes (~5 GB at n = 320, paper size) stay: the FF arm's crop cache keys hash them on every run; delete the
    work folder when done.
    """
    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.cohort.synth.cohort import make_cohort
    from p53hcc.tools.io import atomic_write_json
    from p53hcc.tools.preprocessing.run import preprocess_cohort
    from p53hcc.tools.radiomics.extract import extract_cohort

    seconds = {}
    csv, study = work / "cohort" / "cohort.csv", work / "study"
    marker = study / "prepared.json"
    key = {k: cfg[k] for k in ("n", "seed", "size", "folds", "preprocess", "radiomics")}
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if done.get("key") != key:
        done = {}
    if done and cfg["spatial_size"] in done.get("crop_sizes", []):
        return csv, study, dict(done.get("seconds", {}))  # made already (resumed, or a second process)
    t = time.perf_counter()
    if not csv.is_file():  # written last by make_cohort
        make_cohort(n=cfg["n"], out=csv.parent, seed=cfg["seed"], size=cfg["size"], second_reader=True)
    seconds["synth"] = time.perf_counter() - t
    t = time.perf_counter()
    preprocess_cohort(csv, study, workers=workers, params=cfg["preprocess"], progress=False)
    seconds["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    extract_cohort(csv, study, params=cfg["radiomics"], workers=workers)
    seconds["radiomics"] = time.perf_counter() - t
    if not (study / "splits.json").is_file():
        write_datalist(csv, study, folds=cfg["folds"], seed=cfg["seed"])
    t = time.perf_counter()
    make_crops(study, cfg)
    seconds["crops"] = time.perf_counter() - t
    sizes = sorted({*done.get("crop_sizes", []), cfg["spatial_size"]})
    atomic_write_json(marker, {"key": key, "crop_sizes": sizes, "seconds": seconds})
    return csv, study, seconds


def make_crops(study: Path, cfg: dict) -> None:
    """Each arm's cached ROI crops of every patient at the run's input size (what training reads)."""
    from p53hcc.tools.cohort.splits import select_items
    from p53hcc.tools.dl.arms import get_arm
    from p53hcc.tools.dl.bundle import training_params
    from p53hcc.tools.dl.engine import source_items

    for arm in cfg["arms"]:
        params = training_params(arm, source="preprocessed", spatial_size=cfg["spatial_size"])
        items = source_items(select_items(study / "datalist.json", "all"), study, params)
        for unit in get_arm(arm).units:
            get_arm(arm).crops(study, items, params, unit)


def null_study(work: Path, csv: Path, study: Path, seed: int) -> tuple[Path, Path]:
    """The null cohort: the same patients and images, labels permuted within each split (class counts kept).

    Its study folder shares the real one's preprocessed volumes, radiomics features and ROI crops (links:
    they depend on the images only), so only the networks are trained again.
    """
    from p53hcc.tools.cohort.manifest import read_cohort
    from p53hcc.tools.cohort.splits import write_datalist
    from p53hcc.tools.io import atomic_write_table

    ncsv, nstudy = work / "null" / "cohort" / "cohort.csv", work / "null" / "study"
    if not ncsv.is_file():
        cohort = read_cohort(csv)  # absolute image paths: the copy points at the real cohort's files
        rng = np.random.default_rng([seed, 15])
        for part in sorted(cohort["split"].unique()):
            rows = cohort["split"] == part
            cohort.loc[rows, "p53"] = rng.permutation(cohort.loc[rows, "p53"].to_numpy())
        atomic_write_table(ncsv, cohort)
    shared = ["preprocessed", "radiomics.parquet", "radiomics_icc.csv", "radiomics_provenance.parquet",
              "dl/slices", "dl/ff/slices"]
    for rel in shared:
        link, target = nstudy / rel, study / rel
        if target.exists() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target.resolve(), target_is_directory=target.is_dir())
    if not (nstudy / "splits.json").is_file():
        write_datalist(ncsv, nstudy, folds=5, seed=seed)
    return ncsv, nstudy


def train(csv: Path, study: Path, cfg: dict, device: str, keep_weights: bool) -> dict:
    """Both arms for every network (resumable); returns the wall seconds per arm and network.

    The seconds are kept in ``<study>/timings.json`` and summed over the invocations that trained some of the
    arm's networks (a resumed run adds only the networks it trained; one that finds every network done adds 0).
    """
    from p53hcc.tools.dl.crossfit import train_arm
    from p53hcc.tools.io import atomic_write_json

    log = study / "timings.json"
    seconds = json.loads(log.read_text()) if log.is_file() else {}
    extra = {k: v for k, v in cfg.get("train", {}).items() if k in TRAIN_KEYS}
    for net in cfg["nets"]:
        for arm in cfg["arms"]:
            before = len(list((study / "dl" / arm / net).rglob("done.json")))
            t = time.perf_counter()
            train_arm(csv, study, arm=arm, net=net, epochs=cfg["epochs"], device=device, source="preprocessed",
                      spatial_size=cfg["spatial_size"], batch_size=cfg["batch_size"],
                      cpu_threads=cfg["cpu_threads"], seed=cfg["seed"], **extra)
            trained = len(list((study / "dl" / arm / net).rglob("done.json"))) - before
            if trained > 0:
                seconds[f"{arm}_{net}"] = seconds.get(f"{arm}_{net}", 0.0) + time.perf_counter() - t
                atomic_write_json(log, seconds)
            if not keep_weights:
                for weights in (study / "dl" / arm / net).rglob("model.pt"):
                    weights.unlink()
    return seconds


def fuse(csv: Path, study: Path, cfg: dict) -> None:
    """The study's fusion and statistics stages on this study folder (clinical, radiomics, the arms); skipped when
    ``fused.json`` says they already ran on the same cohort, radiomics features and arm scores."""
    from p53hcc.tools.io import atomic_write_json, file_sha256, params_hash
    from p53hcc.tools.pipeline.config import resolve_config
    from p53hcc.tools.pipeline.fit import run_fusion
    from p53hcc.tools.pipeline.statistics import run_statistics

    inputs = [csv, study / "radiomics.parquet",
              *[study / "dl" / a / n / "scores.parquet" for n in cfg["nets"] for a in cfg["arms"]]]
    key = params_hash({"folds": cfg["folds"], "files": [file_sha256(f) for f in inputs]})
    marker = study / "fused.json"
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return
    scfg = resolve_config(profile="paper", folds=cfg["folds"], **{"fusion.nesting": "apparent",
                                                                  "dl.arms": cfg["arms"], "dl.nets": cfg["nets"]})
    run_fusion(study, csv, scfg)
    run_statistics(study, csv, scfg)
    atomic_write_json(marker, {"key": key})


def measure(work: Path, cfg: dict, sizes=(64, 96, 128), nets=("resnet18", "resnet34"), steps: int = 6) -> dict:
    """Training images per second of each candidate input size and network on this machine (one thread, batch
    16, 3- and 1-channel), and the hours a whole run (both arms, real + null cohort) would take per 10 epochs."""
    import torch

    from p53hcc.tools.dl.nets import build_net
    from p53hcc.tools.parallel import fixed_threads

    n_train = round(0.7 * cfg["n"])
    per_epoch = (cfg["folds"] - 1) * n_train + n_train  # images of the K fold networks + the full-cohort one
    rows = []
    with fixed_threads(cfg["cpu_threads"]):
        for net_name in nets:
            for size in sizes:
                rate = {}
                for ch in (3, 1):
                    torch.manual_seed(0)
                    net = build_net(net_name, in_channels=ch).to(memory_format=torch.channels_last)
                    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
                    x = torch.randn(16, ch, size, size).contiguous(memory_format=torch.channels_last)
                    y = torch.randint(0, 2, (16,))
                    for i in range(steps + 1):
                        if i == 1:
                            t = time.perf_counter()
                        loss = torch.nn.functional.cross_entropy(net(x), y)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                    rate[ch] = 16 * steps / (time.perf_counter() - t)
                seconds = per_epoch * (1 / rate[3] + 3 / rate[1])  # MC + FF (3 phase networks), one epoch
                rows.append({"net": net_name, "spatial_size": size, "images_per_s_3ch": rate[3],
                             "images_per_s_1ch": rate[1], "epoch_s_both_arms": seconds,
                             "hours_per_10_epochs_real_and_null": 2 * 10 * seconds / 3600})
                print(f"{net_name} {size}px: {rate[3]:.0f} / {rate[1]:.0f} img/s (3ch / 1ch), both arms "
                      f"{seconds:.0f} s per epoch, real + null {rows[-1]['hours_per_10_epochs_real_and_null']:.2f} "
                      "h per 10 epochs", flush=True)
    return {"rows": rows, "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(),
            "images_per_epoch_per_arm_unit": per_epoch}


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> Path | None:
    """Parse options and run (see the module docstring); returns the JSON written (None when nothing ran)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda (cuda without a GPU: says so and exits 0)")
    ap.add_argument("--profile", default=None, help="cpu (default on cpu) | paper (default on cuda)")
    ap.add_argument("--nets", default=None, help="comma-separated networks (default: the profile's)")
    for key in ("n", "epochs", "null_epochs", "spatial_size", "batch_size", "cpu_threads"):
        ap.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None)
    ap.add_argument("--size", default=None, help="synthetic image size: demo | paper")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help=f"training value for both arms ({', '.join(TRAIN_KEYS)})")
    ap.add_argument("--no-null", dest="null", action="store_false", default=None, help="skip the null cohort")
    ap.add_argument("--workers", type=int, default=1, help="processes of preprocessing and radiomics")
    ap.add_argument("--keep-weights", action="store_true", help="keep every network's model.pt")
    ap.add_argument("--part", default="all", choices=("all", "real", "null"),
                    help="real / null: one cohort only (two processes may run them at once), all: both + record")
    ap.add_argument("--note", default="", help="free text stored in the record (how and where it was run)")
    ap.add_argument("--measure", action="store_true", help="only time the candidate settings (short)")
    ap.add_argument("--work", default=str(WORK), help="working folder (resumable; delete it when done)")
    ap.add_argument("--results", default=str(RESULTS), help="folder of the JSON and figure")
    args = ap.parse_args(argv)
    gpu = args.device.startswith("cuda")
    if gpu and not gpu_available():
        print("dl_learning: --device cuda asked for, but no GPU is available on this machine: nothing run, "
              "no dl_learning_gpu.json written (run it where a GPU is, or use --device cpu).")
        return None
    cfg = json.loads(json.dumps(PROFILES[args.profile or ("paper" if gpu else "cpu")]))
    cfg["profile"] = args.profile or ("paper" if gpu else "cpu")
    cfg.update({k: getattr(args, k) for k in ("n", "epochs", "null_epochs", "spatial_size", "batch_size",
                                               "cpu_threads", "size", "null") if getattr(args, k) is not None})
    if args.nets:
        cfg["nets"] = [n.strip() for n in args.nets.split(",") if n.strip()]
    cfg["train"] = dict(kv.split("=", 1) for kv in args.train)
    cfg["note"] = args.note
    for key, value in cfg["train"].items():
        if key not in TRAIN_KEYS:
            ap.error(f"--train {key}: not one of {', '.join(TRAIN_KEYS)}")
        cfg["train"][key] = value if key == "pretrained_path" else float(value)
    work, tag = Path(args.work), "gpu" if gpu else "cpu"
    work.mkdir(parents=True, exist_ok=True)
    if args.measure:
        from p53hcc.tools.io import atomic_write_json

        rec = {"benchmark": "dl_learning_measure", "config": cfg, **measure(work, cfg)}
        return atomic_write_json(Path(args.results) / f"dl_learning_measure_{tag}.json", rec)
    return run(cfg, work, Path(args.results), tag, "cuda" if gpu else "cpu", args.workers, args.keep_weights,
               args.part)


def run(cfg: dict, work: Path, results: Path, tag: str, device: str, workers: int, keep_weights: bool,
        part: str = "all") -> Path | None:
    """Prepare, train (real and null cohorts), fuse, analyse, write the JSON and the figure.

    ``part``: ``all``; ``real`` (the real cohort only, its JSON without the null cohort); ``null`` (train and
    fuse the null cohort only, no JSON). ``real`` and ``null`` may run at the same time as two processes (they
    share only the prepared crops); ``all`` afterwards finds every network done and writes the whole record.
    """
    from benchmarks.dl_learning_report import analyse, draw_figure
    from p53hcc.tools.io import atomic_write_json

    t0, cpu0 = time.perf_counter(), time.process_time()
    with LoadMonitor() as load:
        csv, study, seconds = prepare(work, cfg, workers)
        studies = {"real": (csv, study)}
        if part in ("all", "real"):
            seconds["train"] = train(csv, study, cfg, device, keep_weights)
            fuse(csv, study, cfg)
        if cfg["null"] and part in ("all", "null"):
            ncsv, nstudy = null_study(work, csv, study, cfg["seed"])
            ncfg = {**cfg, "epochs": cfg.get("null_epochs") or cfg["epochs"]}  # fewer epochs where time is short
            seconds["train_null"] = train(ncsv, nstudy, ncfg, device, keep_weights)
            fuse(ncsv, nstudy, cfg)
            studies["null"] = (ncsv, nstudy)
        if part == "null":
            return None
        record = analyse(studies, cfg)
    record.update(device=tag, gpu_measured=device == "cuda", config=cfg, seconds=seconds,
                  wall_s_this_invocation=time.perf_counter() - t0, cpu_s_main_process=time.process_time() - cpu0,
                  machine_load=load.summary(), versions=_versions())
    dest = atomic_write_json(results / f"dl_learning_{tag}.json", record)
    draw_figure(record, results / f"dl_learning_{tag}.png")
    print(f"wrote {dest} and {dest.with_suffix('.png')}")
    return dest


def _versions() -> dict:
    import platform

    import monai
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__}


def clean(work: Path) -> None:
    """Delete the working folder (cohort, preprocessed volumes, crops, networks)."""
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    # run as a script, Python puts benchmarks/ first on the path, where benchmarks/radiomics.py would shadow
    # the pyradiomics package: the repository root instead
    sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    main()
