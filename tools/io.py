"""Small I/O helpers shared by every stage: atomic writes, hashing, JSON.

Every output is written to a temporary file beside its destination and renamed into place, so a run that is
killed or fails never leaves a half-written file that a later (resumed) run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``dest``'s folder; on success rename it onto ``dest``, on error delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or "".join(dest.suffixes), dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give outputs the usual permissions (umask applied)
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(dest: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(dest)


def atomic_write_json(dest: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``dest`` atomically."""
    return atomic_write_text(dest, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_table(dest: str | os.PathLike, df: pd.DataFrame) -> Path:
    """Write a DataFrame as parquet or CSV (by extension) atomically."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        if dest.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
    return dest


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a parquet or CSV table written by :func:`atomic_write_table`.

    ``patient_id`` is always read as text, so ids such as ``007`` keep their leading zeros.
    """
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
        if "patient_id" in df.columns:
            df["patient_id"] = df["patient_id"].astype(str)
        return df
    return pd.read_csv(path, dtype={"patient_id": str})


#: sha256 of files already hashed by this process, keyed by their stat signature (see :func:`file_sha256`).
_HASHES: dict[tuple, str] = {}


def _signature(files: list[Path]) -> tuple:
    """What changes whenever a file's content may have changed: size, modification and status-change times, inode.

    The status-change time (``st_ctime_ns``) cannot be set by the user and moves on every write, rename or copy
    over the file, so an unchanged signature means unchanged content.
    """
    return tuple((str(f), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for f in files
                 for st in [f.stat()])


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file, or of every file below a folder (DICOM series), in sorted order.

    Each file is read once per process: a second call on an unchanged file (same :func:`_signature`) returns the
    remembered hash, so the stage runner, preprocessing and the crop caches can all key on content cheaply.
    """
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    sig = (str(path), _signature(files))
    if sig in _HASHES:
        return _HASHES[sig]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    if _signature(files) == sig[1]:  # not rewritten while it was read
        _HASHES[sig] = h.hexdigest()
    return h.hexdigest()


def params_hash(params: Any) -> str:
    """Stable short hash of a JSON-serialisable parameter set (used as a cache key)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
