"""One trainer at a time per workspace: a lock file held for the whole run."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cxr.errors import PipelineError


class TrainingLockError(PipelineError, RuntimeError):
    """Another training run holds the workspace's lock: two writers would interleave the curves."""


@contextlib.contextmanager
def training_lock(path: Path | str) -> Iterator[None]:
    """Hold an exclusive lock on `path` while training; refuse at once, naming the holder's pid,
    when another process holds it. The kernel drops the lock when its holder dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path)
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


def _open_lock(path: Path) -> int:
    """Open (creating) the lock file without following a link: a symlink planted at `path` would have
    training truncate whatever it points to. A link, a folder or anything but a plain file is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENOTDIR) or path.is_symlink() or path.is_dir():
            raise TrainingLockError(
                f"{path}: the training lock must be a plain file, found a "
                f"{'symbolic link' if path.is_symlink() else 'folder' if path.is_dir() else 'non-file'}; "
                f"remove it (`rm -r {path}`) and run again"
            ) from None
        raise TrainingLockError(
            f"{path}: cannot open the training lock ({exc.strerror}); check the folder's permissions"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TrainingLockError(f"{path}: the training lock must be a plain file; remove it and run again")
    return fd
