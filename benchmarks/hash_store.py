"""Benchmark of the file-hash store: how long a new process takes to hash a cohort's image files it has seen.

Why: every run keys its caches on image contents (``p53hcc.tools.io.file_sha256``). Within one process a file is
read once; the store (SQLite, ``$P53HCC_HASH_CACHE``) carries the hashes to later runs, so a resumed study, a
second ``predict`` or the FF arm's three phase crop caches do not read unchanged images again.

What: ``--files`` files of ``--mb`` MB (random bytes; the size of preprocessed or raw volumes), hashed in a fresh
Python process three times: store off, store cold (first run: hashes and stores), store warm (a later run). The
page cache is warm in all three (the files were just written), so the "off" time is the CPU cost of sha256 alone;
on a cohort read from a network disk it is larger.

Usage: ``python benchmarks/hash_store.py [--files 200] [--mb 16] [--work DIR]``; prints a table and writes
``benchmarks/results/hash_store.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from p53hcc.tools.io import HASH_STORE_ENV, atomic_write_json

HASH_ALL = """
import json, sys, time
from pathlib import Path
from p53hcc.tools.io import file_sha256
files = sorted(Path(sys.argv[1]).glob("*.bin"))
t = time.perf_counter()
digests = [file_sha256(f) for f in files]
print(json.dumps({"seconds": time.perf_counter() - t, "first": digests[0]}))
"""


def _run(folder: Path, store: str) -> dict:
    env = {**os.environ, HASH_STORE_ENV: store}
    done = subprocess.run([sys.executable, "-c", HASH_ALL, str(folder)], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--mb", type=float, default=16.0)
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="p53hcc-hash-bench-"))
    folder = work / "files"
    folder.mkdir(parents=True, exist_ok=True)
    size = int(args.mb * 2**20)
    for i in range(args.files):
        with open(folder / f"{i:05d}.bin", "wb") as f:
            f.write(os.urandom(size))
    store = str(work / "sha256.sqlite")
    try:
        off, cold, warm = _run(folder, "off"), _run(folder, store), _run(folder, store)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    assert off["first"] == cold["first"] == warm["first"]
    result = {"files": args.files, "mb_per_file": args.mb, "gb_total": round(args.files * args.mb / 1024, 3),
              "seconds_store_off": round(off["seconds"], 3), "seconds_store_cold": round(cold["seconds"], 3),
              "seconds_store_warm": round(warm["seconds"], 3),
              "speedup_warm_vs_off": round(off["seconds"] / max(warm["seconds"], 1e-9), 1),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.system()},
              "command": "python benchmarks/hash_store.py " + " ".join(sys.argv[1:])}
    for k, v in result.items():
        if k != "machine":
            print(f"{k:>22}: {v}")
    atomic_write_json(Path(__file__).parent / "results" / "hash_store.json", result)


if __name__ == "__main__":
    main()
