"""Thread counts and worker pools shared by the image stages (preprocessing, radiomics, DL crops).

Results must not depend on where they were computed: ITK's and torch's multi-threaded reductions (N4's fit,
resampling, z-scoring, resizing) change the last bits of their output with the thread count, and every cache of
the study keys on file contents, so a resumed or re-parallelised run would otherwise differ from an uninterrupted
one. :func:`fixed_threads` pins both thread counts for a block, in a pool worker, inline or in a threaded Dask
worker alike; parallelism comes from running patients in separate processes.

:func:`process_pool` is a ``ProcessPoolExecutor`` that stops at once on Ctrl-C: queued tasks are cancelled and
running workers terminated (their outputs are written atomically, so the folder stays resumable), and the workers
ignore SIGINT themselves, so the console shows one line from the parent instead of a traceback per worker.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

_LOCK = threading.Lock()
_STACK: list[int] = []  # thread counts of the blocks now inside fixed_threads (innermost last)
_SAVED: dict = {}


def _set_threads(n: int) -> tuple[int, int]:
    """Set ITK's global default and torch's intra-op thread counts; return the previous ones."""
    import SimpleITK as sitk
    import torch

    saved = (sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), torch.get_num_threads())
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
    if torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))
    return saved


@contextmanager
def fixed_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ITK (SimpleITK) and torch using ``n`` threads, restoring the previous counts after.

    Nested blocks set their own count and give the enclosing one's back when they end; concurrent blocks in
    threads (a threaded Dask worker, DL units trained in threads) share the count, so they must ask for the same
    one (the study's do); the counts the process had before are restored when the last block ends.
    """
    with _LOCK:
        if not _STACK:
            _SAVED["counts"] = _set_threads(n)
        else:
            _set_threads(n)
        _STACK.append(int(n))
    try:
        yield
    finally:
        with _LOCK:
            _STACK.remove(int(n))
            if _STACK:
                _set_threads(_STACK[-1])
            else:
                import SimpleITK as sitk
                import torch

                itk_threads, torch_threads = _SAVED.pop("counts")
                sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
                if torch.get_num_threads() != torch_threads:
                    torch.set_num_threads(torch_threads)


def single_threaded():
    """:func:`fixed_threads` with one thread: the count every image step of the study runs with."""
    return fixed_threads(1)


def worker_init() -> None:
    """Initializer of worker processes: one ITK / torch thread, and Ctrl-C left to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_threads(1)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel queued tasks and terminate the running workers."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    # before 3.14 there is no public way; shutdown() forgets the processes, so take them first
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        proc.terminate()


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool of single-threaded workers that is stopped at once when the block raises (Ctrl-C)."""
    pool = ProcessPoolExecutor(max_workers=int(workers), initializer=worker_init)
    try:
        yield pool
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)
