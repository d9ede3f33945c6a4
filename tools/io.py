"""Small I/O helpers shared by every stage: atomic writes, hashing, JSON.

Every output is written to a temporary file beside its destination and renamed into place, so a run that is
killed or fails never leaves a half-written file that a later (resumed) run would trust.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
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


# ------------------------------------------------------------------------------------- file hashes across runs
# An SQLite table ``stat signature -> sha256`` lets a later run (a resumed study, ``predict`` on the same images,
# each FF phase network's crop cache) skip reading unchanged files again: minutes per run on a cohort of
# thousands of DICOM series. The key is the signature the in-process memo trusts (:func:`_signature`), so a hit
# is as safe as a memo hit. SQLite (standard library) because several worker processes use it at once. Any
# problem with the store (read-only home, locked or corrupt file) turns it off for the process with one log
# line: hashing never fails because of it. On a network home folder, point $P53HCC_HASH_CACHE at a local disk
# (SQLite's locking is not reliable over NFS) or set it to ``off``.

#: Environment variable naming the file-hash store (a path, or ``off``); see :func:`hash_store_path`.
HASH_STORE_ENV = "P53HCC_HASH_CACHE"
_store: dict = {"pid": None, "conn": None, "path": None}
_STORE_LOCK = threading.RLock()


def _forget_store_in_child() -> None:
    """A forked worker starts with a fresh lock (the parent's may be held by a thread that does not exist in the
    child) and opens its own connection."""
    global _STORE_LOCK
    _STORE_LOCK = threading.RLock()
    _store.update(pid=None, conn=None, path=None)


os.register_at_fork(after_in_child=_forget_store_in_child)


def hash_store_path() -> Path | None:
    """The file-hash store: ``$P53HCC_HASH_CACHE`` (None when ``off``), else
    ``$XDG_CACHE_HOME/p53hcc/sha256.sqlite`` (default ``~/.cache``)."""
    value = os.environ.get(HASH_STORE_ENV, "").strip()
    if value.lower() in ("off", "0", "false", "no", "none"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "p53hcc" / "sha256.sqlite"


def _connection() -> sqlite3.Connection | None:
    with _STORE_LOCK:
        return _open_store()


def _open_store() -> sqlite3.Connection | None:
    path = hash_store_path()
    if _store["pid"] == os.getpid() and _store["path"] == path:
        return _store["conn"]
    _store.update(pid=os.getpid(), path=path, conn=None)  # a forked worker opens its own connection
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # one connection per process, shared by its threads (preprocessing hashes inputs on a thread pool)
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a cache: no disk flush per stored hash (one per file)
        conn.execute("CREATE TABLE IF NOT EXISTS sha256 (signature TEXT PRIMARY KEY, digest TEXT NOT NULL)")
        _store["conn"] = conn
    except (sqlite3.Error, OSError) as err:
        _disable(path, err)
    return _store["conn"]


def _disable(path, err: Exception) -> None:
    logging.getLogger(__name__).info("file-hash store %s not used (%s): unchanged files are hashed again on each "
                                     "run", path, err)
    _store["conn"] = None


def _key(signature: tuple) -> str:
    return hashlib.sha256(repr(signature).encode()).hexdigest()


def _stored_hash(signature: tuple) -> str | None:
    """The remembered sha256 of files with this stat signature, or None."""
    conn = _connection()
    if conn is None:
        return None
    try:
        with _STORE_LOCK:
            row = conn.execute("SELECT digest FROM sha256 WHERE signature = ?", (_key(signature),)).fetchone()
    except sqlite3.Error as err:
        _disable(_store["path"], err)
        return None
    digest = row[0] if row else None
    return digest if isinstance(digest, str) and len(digest) == 64 else None  # anything else: hash the file


def _store_hash(signature: tuple, digest: str) -> None:
    """Store the sha256 of files with this stat signature (nothing happens when the store is off)."""
    conn = _connection()
    if conn is None:
        return
    try:
        with _STORE_LOCK:
            conn.execute("INSERT OR REPLACE INTO sha256 (signature, digest) VALUES (?, ?)",
                         (_key(signature), digest))
    except sqlite3.Error as err:
        _disable(_store["path"], err)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Content hash of a file, or of every file below a folder (DICOM series), in sorted order.

    An unchanged file (same :func:`_signature`) is read once: within a process from memory, across runs from the
    file-hash store (:func:`hash_store_path`), so the stage runner, preprocessing and the crop caches can all key
    on content cheaply, also when a study is resumed or a cohort predicted again.
    """
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    sig = (str(path), _signature(files))
    if sig in _HASHES:
        return _HASHES[sig]
    known = _stored_hash(sig)
    if known:
        _HASHES[sig] = known
        return known
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    if _signature(files) == sig[1]:  # not rewritten while it was read
        _HASHES[sig] = h.hexdigest()
        _store_hash(sig, h.hexdigest())
    return h.hexdigest()


def params_hash(params: Any) -> str:
    """Stable short hash of a JSON-serialisable parameter set (used as a cache key)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]
