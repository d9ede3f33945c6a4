"""Logging of the ``p53hcc`` command and of every study: console lines that coexist with progress bars, and
``STUDY_DIR/study.log``.

Modules log through ``logging.getLogger(__name__)`` (children of the ``p53hcc`` logger). The command line calls
:func:`configure_logging` once (``--verbose`` / ``--quiet``); :func:`study_log` adds a file handler for the
duration of one study, so a study folder always holds the full record of what ran, what was cached and what
failed, whatever the console showed.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = "p53hcc"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _ConsoleFormatter(logging.Formatter):
    """Plain message for INFO and below; ``p53hcc: warning: ...`` / ``p53hcc: error: ...`` above."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{ROOT}: {record.levelname.lower()}: {message}"
        return message


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so log lines do not tear progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbose: bool = False, quiet: bool = False) -> logging.Logger:
    """Console logging for the command line: INFO by default, DEBUG with ``verbose``, WARNING with ``quiet``."""
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _TqdmHandler)]:
        logger.removeHandler(handler)
    handler = _TqdmHandler()
    handler.setFormatter(_ConsoleFormatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    handler.setLevel(logger.level)
    logger.propagate = False
    return logger


@contextmanager
def study_log(path: str | os.PathLike) -> Iterator[Path]:
    """Append everything logged at INFO or above to ``path`` while the block runs (the study's own record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(ROOT)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.setLevel(logging.INFO)
    saved = logger.level
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
        for h in logger.handlers:  # the console keeps the verbosity it was configured with
            if h.level == logging.NOTSET:
                h.setLevel(saved or logging.WARNING)
    logger.addHandler(handler)
    try:
        yield path
    except Exception as err:  # recorded in the study's log; the caller reports it on the console
        handler.handle(logger.makeRecord(ROOT, logging.ERROR, __file__, 0, "%s: %s", (type(err).__name__, err),
                                         None))
        raise
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (parallel.Terminated)
        handler.handle(logger.makeRecord(ROOT, logging.ERROR, __file__, 0, "interrupted (%s)",
                                         (str(err) or "Ctrl-C",), None))
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(saved)
