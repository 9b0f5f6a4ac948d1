"""One qsmflow run per output (and work) folder at a time: a lock file holding the run's PID.

``<folder>/.qsmflow.lock`` is created atomically (``O_CREAT | O_EXCL``) with the PID, host and
start time; a second run on the same folder is refused with a line naming the lock and its
owner. A lock whose process is gone (same host, PID not running) is stale and taken over with a
warning. The lock is removed when the run ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

from ..bids import InputError

LOG = logging.getLogger("qsmflow")
LOCK_NAME = ".qsmflow.lock"
#: lock files whose folder this process created (removed again on release when left empty)
_CREATED: set = set()


class LockError(InputError):
    """Another qsmflow run holds the folder: one line naming the lock, its owner and the fix."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def acquire(folder) -> Path:
    """Create ``folder/.qsmflow.lock`` for this process (``folder`` is created if needed, and
    removed by :func:`release` if still empty then); :class:`LockError` when a live run holds
    it. Returns the lock file."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    if created:
        _CREATED.add(lock)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text())
            except (OSError, ValueError):
                owner = {}
            pid, host = int(owner.get("pid", -1)), owner.get("host")
            if host == me["host"] and pid > 0 and not _alive(pid):
                LOG.warning("qsmflow: warning: %s: removing the stale lock of run PID %d "
                            "(no longer running)", lock, pid)
                lock.unlink(missing_ok=True)
                continue
            raise LockError(f"{folder}: another qsmflow run (PID {owner.get('pid', '?')} on "
                            f"{host or '?'}, started {owner.get('started', '?')}) is using this "
                            f"folder; wait for it to finish or choose another folder (if that "
                            f"run is gone, delete {lock})") from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return lock
    raise LockError(f"{lock}: cannot take the lock; delete it if no qsmflow run is using "
                    f"{folder}")


def release(lock: Path) -> None:
    """Remove ``lock`` if this process holds it (and its folder if this process made it and
    nothing else was written there, e.g. a run refused after the lock was taken)."""
    lock = Path(lock)
    try:
        if int(json.loads(lock.read_text()).get("pid", -1)) == os.getpid():
            lock.unlink()
            if lock in _CREATED:
                _CREATED.discard(lock)
                lock.parent.rmdir()
    except (OSError, ValueError):
        pass


def acquire_all(*folders) -> list[Path]:
    """:func:`acquire` every folder (output, work; duplicates once); on a refusal the locks
    already taken are released before :class:`LockError` propagates."""
    held = []
    try:
        for f in dict.fromkeys(Path(x).resolve() for x in folders):
            held.append(acquire(f))
    except BaseException:
        release_all(held)
        raise
    return held


def release_all(held) -> None:
    """:func:`release` every lock of ``held``."""
    for lock in reversed(list(held or ())):
        release(lock)


@contextlib.contextmanager
def run_lock(*folders):
    """Hold the lock of every folder for the ``with`` block."""
    held = acquire_all(*folders)
    try:
        yield held
    finally:
        release_all(held)
