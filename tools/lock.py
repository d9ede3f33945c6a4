"""One writer per output folder: ``<folder>/.p53hcc.lock`` names the run that owns it (pid, host, start, command).

Two runs writing one study folder (say with different settings) would leave a report, a ``study.yaml`` and
networks from different runs, and a resumable cache that marks the mixture complete. So every command that writes a
folder (``p53hcc study``, ``predict``, ``evaluate``, the stage commands) holds this lock for its duration; a
second run stops at once with a message naming the owner. A lock left by a killed run is taken over when its
owner is provably gone (same host, process no longer running); from another host it cannot be checked, so the
message says which file to delete.

Why not the ``filelock`` package (installed with torch): its ``FileLock`` (``flock``) records no owner to name,
and ``flock`` is unreliable on the network file systems many clusters use; owner records and stale-lock
recovery in its ``SoftFileLock`` exist only from version 4, newer than many environments pin. An ``O_EXCL`` file
with a JSON owner record works on NFS and needs no dependency.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from p53hcc.tools.errors import P53hccError

LOCK_NAME = ".p53hcc.lock"
log = logging.getLogger(__name__)
_HELD: dict[str, int] = {}  # folders this process holds, with nesting depth (evaluate runs predict inside)


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot), to tell a reused pid from the owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_ticks(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300],
            "token": uuid.uuid4().hex}


def _read_owner(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _owner_gone(owner: dict) -> bool:
    """True when the owner is provably not running: same host and its process gone (or the pid reused)."""
    if owner.get("host") != socket.gethostname() or os.name == "nt":  # os.kill(pid, 0) would kill on Windows
        return False
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    start = owner.get("start")
    return start is not None and _start_ticks(pid) not in (None, start)


def _take_over(path: Path, owner: dict) -> None:
    """Move a stale lock aside; if another process replaced it meanwhile, put that one back."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_owner(aside)
    if moved is not None and moved.get("token") != owner.get("token"):  # a fresh lock of a third process
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)
    log.warning("took over the lock %s left by pid %s on %s (no longer running)", path, owner.get("pid"),
                owner.get("host"))


def _acquire(folder: Path) -> dict:
    path = folder / LOCK_NAME
    record = _owner_record()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_owner(path)
            if owner is None:  # being written by its owner right now, or damaged: look again shortly
                time.sleep(0.2)
                owner = _read_owner(path)
                if owner is None and path.exists() and time.time() - path.stat().st_mtime > 10:
                    owner = {"token": None, "pid": "?", "host": "?"}
                    _take_over(path, owner)
                continue
            if _owner_gone(owner):
                _take_over(path, owner)
                continue
            raise P53hccError(
                f"{folder} is in use by another p53hcc run (pid {owner.get('pid')} on {owner.get('host')}, started "
                f"{owner.get('started')}: {owner.get('command')}); wait for it to finish, or, if it is no longer "
                f"running, delete {path}") from None
        except OSError as err:
            raise P53hccError(f"cannot write in {folder}: {err.strerror} (read-only folder?)") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        return record
    raise P53hccError(f"could not lock {folder}: {path} keeps changing; is another run starting?")


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder``'s lock while the block runs (created with the folder if needed; re-entrant in a process).

    Raises:
        P53hccError: another live run holds it, or the folder cannot be written.
    """
    folder = Path(folder).resolve()
    key = str(folder)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder / LOCK_NAME
        finally:
            _HELD[key] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise P53hccError(f"cannot create {folder}: {err.strerror} (read-only location?)") from None
    record = _acquire(folder)
    _HELD[key] = 1
    try:
        yield folder / LOCK_NAME
    finally:
        del _HELD[key]
        owner = _read_owner(folder / LOCK_NAME)
        if owner is not None and owner.get("token") == record["token"]:
            (folder / LOCK_NAME).unlink(missing_ok=True)
