"""How the Deploy app says no: one line on stderr, exit code 1, no traceback, and no output folder left behind.

The convention chosen (``deploy/README.md``): a refused or failed run leaves the output folder as it found it -
removed again when the run created it, untouched (none of the app's files in it) when it existed before, as a
MAP's mounted output folder does. A hospital's orchestrator reads the exit code and stderr; there is no
``failed.json`` to mistake for a result. Everything the app can check (input folder, models, output folder,
every series and file, clinical values) is checked before the SDK's graph runs, so a refusal comes before any
scoring and before the SDK prints anything; an error inside the graph is caught by the operator, stops the graph
and is reported the same way after it (:func:`guarded`).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from p53hcc.tools.errors import P53hccError

PROG = "p53hcc-deploy"
#: The SDK's own defaults and environment variables (monai.deploy.core.runtime_env), read the same way here.
DEFAULTS = {"input": ("HOLOSCAN_INPUT_PATH", "input"), "output": ("HOLOSCAN_OUTPUT_PATH", "output"),
            "model": ("HOLOSCAN_MODEL_PATH", "models")}


class AppInputError(P53hccError):
    """A folder the app was given that it cannot use: missing input or models, an output it cannot write."""


@dataclass(frozen=True)
class AppPaths:
    """The app's three folders, as the SDK will resolve them."""

    input: Path
    model: Path
    output: Path


def app_paths(argv: Sequence[str] | None = None) -> AppPaths:
    """``-i/--input``, ``-m/--model``, ``-o/--output`` from ``argv`` (``sys.argv`` layout: the program first), else
    the SDK's environment variables, else its defaults; other arguments are the SDK's and left to it."""
    parser = argparse.ArgumentParser(add_help=False)
    for name, short in (("input", "-i"), ("model", "-m"), ("output", "-o")):
        parser.add_argument(short, f"--{name}")
    args, _ = parser.parse_known_args(list(sys.argv if argv is None else argv)[1:])
    got = {k: getattr(args, k) or os.environ.get(env) or default for k, (env, default) in DEFAULTS.items()}
    return AppPaths(Path(got["input"]), Path(got["model"]), Path(got["output"]))


def check_output(output: Path) -> None:
    """The output folder exists or can be made, and a file can be written in it (a probe file, removed)."""
    if output.exists() and not output.is_dir():
        raise AppInputError(f"output folder {output} is a file, not a folder")
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".p53hcc-probe-", dir=output)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise AppInputError(f"output folder {output} is not writable ({err.strerror or err})") from err


def check_paths(paths: AppPaths) -> None:
    """The input and models folders exist and the output folder is writable, before anything is read."""
    if not paths.input.is_dir():
        raise AppInputError(f"input folder {paths.input} not found")
    if not paths.model.exists():
        raise AppInputError(f"models folder {paths.model} not found")
    check_output(paths.output)


def _clean(output: Path, existed: bool, before: set[str]) -> None:
    """Leave ``output`` as it was: removed when the run made it, else without what the run added."""
    if not output.is_dir():
        return
    if not existed:
        shutil.rmtree(output, ignore_errors=True)
        return
    for entry in output.iterdir():
        if entry.name not in before:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@contextlib.contextmanager
def refusals(output: Path) -> Iterator[None]:
    """Inside: a :class:`~p53hcc.tools.errors.P53hccError` ends the program with one line and exit code 1; any
    failure leaves the output folder as it was (an unexpected error keeps its traceback: it is a bug)."""
    output = Path(output)
    existed = output.is_dir()
    before = {p.name for p in output.iterdir()} if existed else set()
    try:
        yield
    except P53hccError as err:
        _clean(output, existed, before)
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except BaseException:
        _clean(output, existed, before)
        raise


def guarded(compute: Callable) -> Callable:
    """An SDK operator's ``compute`` that keeps its error instead of raising it into the SDK's scheduler (which
    would print its failure block): the error is stored on the operator's application (its ``app``, else its
    ``fragment``) as ``failure``, nothing is emitted, so the operators after it never run, and the app raises it after the graph
    has stopped (:func:`raise_failure`)."""
    @functools.wraps(compute)
    def run(self, *args, **kwargs):
        app = getattr(self, "app", None) or getattr(self, "fragment", None)
        if getattr(app, "failure", None) is not None:
            return None
        try:
            return compute(self, *args, **kwargs)
        except Exception as err:  # the app reports it after the graph: one line for a refusal
            if app is None:
                raise
            app.failure = err
            return None
    return run


def raise_failure(app) -> None:
    """Raise the error an operator kept (:func:`guarded`), if any."""
    err = getattr(app, "failure", None)
    if err is not None:
        raise err
