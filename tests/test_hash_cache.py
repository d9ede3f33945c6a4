"""File hashes remembered across runs (:func:`p53hcc.tools.io.file_sha256`): a later process reads no unchanged file
again, a changed file is hashed anew, and a store that is off or cannot be written changes nothing but speed."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from p53hcc.tools import io


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "hashes" / "sha256.sqlite"
    monkeypatch.setenv(io.HASH_STORE_ENV, str(path))
    monkeypatch.setattr(io, "_HASHES", {})  # a fresh process's memory
    return path


def _no_reading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"file read again: {args[0]}")

    monkeypatch.setattr(io, "open", refuse, raising=False)


def test_a_later_process_reads_no_unchanged_file(tmp_path, store, monkeypatch):
    f = tmp_path / "volume.nii.gz"
    f.write_bytes(b"voxels" * 1000)
    code = f"from p53hcc.tools.io import file_sha256; print(file_sha256({str(f)!r}))"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**__import__("os").environ}).stdout.strip()
    assert first == hashlib.sha256(f.read_bytes()).hexdigest() and store.is_file()
    _no_reading(monkeypatch)
    assert io.file_sha256(f) == first  # from the store: open() would raise


def test_a_changed_file_is_hashed_again(tmp_path, store, monkeypatch):
    f = tmp_path / "mask.nii.gz"
    f.write_bytes(b"a" * 100)
    old = io.file_sha256(f)
    f.write_bytes(b"b" * 100)  # same size: the status-change time still moves
    monkeypatch.setattr(io, "_HASHES", {})
    assert io.file_sha256(f) == hashlib.sha256(b"b" * 100).hexdigest() != old


def test_folders_dicom_series_are_remembered_too(tmp_path, store, monkeypatch):
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        (series / f"{i}.dcm").write_bytes(bytes([i]) * 50)
    digest = io.file_sha256(series)
    monkeypatch.setattr(io, "_HASHES", {})
    _no_reading(monkeypatch)
    assert io.file_sha256(series) == digest


@pytest.mark.parametrize("setting", ["off", "unwritable"])
def test_without_a_store_hashing_is_unchanged(tmp_path, monkeypatch, setting):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv(io.HASH_STORE_ENV, "off" if setting == "off" else str(blocker / "sub" / "sha256.sqlite"))
    monkeypatch.setattr(io, "_HASHES", {})
    f = tmp_path / "image.nrrd"
    f.write_bytes(b"image")
    assert io.file_sha256(f) == hashlib.sha256(b"image").hexdigest()
    monkeypatch.setattr(io, "_HASHES", {})
    reads = []
    real_open = open
    monkeypatch.setattr(io, "open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k), raising=False)
    assert io.file_sha256(f) == hashlib.sha256(b"image").hexdigest()
    assert reads  # nothing remembered across processes: the file is read again


def test_threads_share_the_store(tmp_path, store, monkeypatch, caplog):
    """Preprocessing hashes its inputs on a thread pool: every thread's hash is stored, none turns the store off."""
    import logging
    from concurrent.futures import ThreadPoolExecutor

    files = []
    for i in range(8):
        files.append(tmp_path / f"{i}.nii.gz")
        files[-1].write_bytes(bytes([i]) * 1000)
    with caplog.at_level(logging.INFO, logger="p53hcc.tools.io"), ThreadPoolExecutor(4) as pool:
        digests = list(pool.map(io.file_sha256, files))
    assert "not used" not in caplog.text
    monkeypatch.setattr(io, "_HASHES", {})
    _no_reading(monkeypatch)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(io.file_sha256, files)) == digests


def test_a_forked_worker_uses_the_store_even_if_a_thread_held_it(tmp_path, store):
    """A process pool forked while another thread held the store's lock: the worker still hashes (and stores)."""
    import multiprocessing
    import threading

    f = tmp_path / "a.nii.gz"
    f.write_bytes(b"x" * 100)
    io.file_sha256(tmp_path / "a.nii.gz")  # the parent's connection exists
    held, release = threading.Event(), threading.Event()

    def hold():
        with io._STORE_LOCK:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        g = tmp_path / "b.nii.gz"
        g.write_bytes(b"y" * 100)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            assert pool.apply_async(io.file_sha256, (g,)).get(timeout=60) == hashlib.sha256(b"y" * 100).hexdigest()
    finally:
        release.set()
        t.join()
