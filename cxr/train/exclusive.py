"""One trainer at a time per workspace: a lock file held for the whole run, and a trainer that
dies with the process that started it (a killed `dvc` takes its stage with it on Linux)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from cxr.errors import PipelineError

PR_SET_PDEATHSIG = 1  # prctl option: a signal sent to this process when its parent dies


class TrainingLockError(PipelineError, RuntimeError):
    """Another training run holds the workspace's lock: two writers would interleave the curves."""


def die_with_parent() -> bool:
    """Ask Linux to send SIGTERM to this process when its parent exits (e.g. `dvc` killed with -9),
    so no orphaned trainer keeps writing; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0
    except OSError:
        return False


@contextlib.contextmanager
def training_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on `path` while training; refuse at once, naming the holder's pid,
    when another process holds it. The kernel drops the lock when its holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise TrainingLockError(
                f"{path}: another training run (pid {holder}) is writing to {path.parent}/; wait for it to finish "
                f"or stop it (kill {holder}) before starting another"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
