"""Thread counts and worker pools shared by the image stages (preprocessing, radiomics, DL crops).

Results must not depend on where they were computed: ITK's and torch's multi-threaded reductions (N4's fit,
resampling, z-scoring, resizing) change the last bits of their output with the thread count, and every cache of
the study keys on file contents, so a resumed or re-parallelised run would otherwise differ from an uninterrupted
one. :func:`fixed_threads` pins both thread counts for a block, in a pool worker, inline or in a threaded Dask
worker alike; parallelism comes from running patients in separate processes.

:func:`run_tasks` is the one executor of the image stages: it runs a function over tasks inline, in a pool of
single-threaded local processes or on a Dask cluster, and yields the results as they finish. An interrupted run
(Ctrl-C, or any error while results are awaited) stops the same way wherever it runs (:func:`_stopped_when_interrupted`):
queued tasks are dropped and running local workers terminated (outputs are written atomically, so the folder stays
resumable); the workers ignore SIGINT and SIGTERM themselves (:func:`worker_init`), so the console shows one line
from the parent instead of a traceback per worker, and the parent decides when they stop.

SIGTERM (what a batch scheduler or ``kill`` sends) is an interrupt like Ctrl-C: inside :func:`terminated_as_interrupt`
(the command line's ``main``) it raises :class:`Terminated`, a ``KeyboardInterrupt``, in the main thread, so every
block that cleans up after Ctrl-C (workers stopped, the folder's lock released, nothing half-written) does so after
SIGTERM too, and the command exits with 143 (128 + 15), resumable. Those three functions are the only places that
handle signals.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

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


class Terminated(KeyboardInterrupt):
    """SIGTERM received: raised in the main thread so that the run unwinds exactly as after Ctrl-C."""

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM)")


#: Exit code of a command stopped by SIGTERM (128 + the signal's number, as a shell reports it).
EXIT_TERMINATED = 128 + int(signal.SIGTERM)


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Terminated` in the main thread (outside the main thread, where
    Python cannot install handlers, the block runs unchanged); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_init() -> None:
    """Initializer of worker processes: one ITK / torch thread; Ctrl-C and SIGTERM left to the parent, which
    stops the workers itself (the workers' one place of signal handling). A scheduler that signals the whole
    process group thus gets one orderly stop, never workers dying under a parent that still waits on them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _set_threads(1)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel queued tasks and kill the running workers (they ignore SIGTERM)."""
    kill = getattr(pool, "kill_workers", None)  # Python >= 3.14
    if kill is not None:
        kill()
        return
    # before 3.14 there is no public way; shutdown() forgets the processes, so take them first
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in workers:
        proc.kill()
    for proc in workers:
        proc.join(timeout=5)


@contextmanager
def _stopped_when_interrupted(stop: Callable[[], None]) -> Iterator[None]:
    """The parent's one place of interrupt handling: Ctrl-C, SIGTERM (:class:`Terminated`) or any error inside the
    block calls ``stop`` (drop the queued tasks, end the running ones), then the exception goes on to the caller,
    which reports it once."""
    try:
        yield
    except BaseException:
        stop()
        raise


@contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool of single-threaded workers that is stopped at once when the block raises (Ctrl-C)."""
    pool = ProcessPoolExecutor(max_workers=int(workers), initializer=worker_init)
    with _stopped_when_interrupted(lambda: stop_pool(pool)):
        yield pool
    pool.shutdown(wait=True)


def _on_cluster(fn: Callable[[T], R], tasks: Sequence[T], scheduler: Any) -> Iterator[R]:
    from distributed import Client
    from distributed import as_completed as completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    futures: list = []
    try:
        with _stopped_when_interrupted(lambda: client.cancel(futures)):  # the cluster's queue goes too
            futures = [client.submit(fn, t, pure=False) for t in tasks]
            for fut in completed(futures):
                yield fut.result()
    finally:
        if client is not scheduler:
            client.close()


def _on_processes(fn: Callable[[T], R], tasks: Sequence[T], workers: int) -> Iterator[R]:
    with process_pool(workers) as pool:
        for fut in as_completed([pool.submit(fn, t) for t in tasks]):
            yield fut.result()


def run_tasks(fn: Callable[[T], R], tasks: Sequence[T], workers: int | None = None, scheduler: Any = None,
              progress: bool = True, desc: str | None = None, unit: str = "task") -> Iterator[R]:
    """``fn(task)`` for every task, yielded as each finishes, with a progress bar.

    Where: on a Dask cluster when ``scheduler`` is given (an address ``tcp://host:port`` or a
    ``distributed.Client``; its workers should run one thread each: ``dask worker --nthreads 1``), else in
    ``min(workers, len(tasks))`` local processes (``workers`` None: every core), else inline when one worker or one
    task is left. ``fn`` must be picklable and should not raise for one bad task (return an error record instead).
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress or not tasks)
    if scheduler is not None:
        results = _on_cluster(fn, tasks, scheduler)
    else:
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        results = (map(fn, tasks) if workers <= 1 or len(tasks) <= 1
                   else _on_processes(fn, tasks, min(workers, len(tasks))))
    try:
        for result in results:
            bar.update()
            yield result
    finally:
        bar.close()
