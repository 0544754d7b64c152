"""Write files and folders so an interrupted stage leaves the last good result, never half of one."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import: os.umask is process-wide, not safe to poke from threads later


def as_umask_allows(path: Path, folder: bool = False) -> None:
    """Give a file made by mkstemp (0600) or a folder made by mkdtemp (0700) the permissions a plain
    open()/mkdir() would have: readable by the group and others as the umask allows (a container user,
    a second account, a web server)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~UMASK)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`.

    The temporary name carries this process's pid (git-ignored as `.*.pid*.tmp`), so what a killed
    writer left is recognised and removed by the next write of `target`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(prefix=scratch_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file() and not tmp_path.is_symlink():
            as_umask_allows(tmp_path)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: Path | str, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: Path | str, data: object) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_prefix(name: str) -> str:
    """Prefix of a temporary file or folder that names its owner: `.{name}.pid{pid}.`."""
    return f".{name}.pid{os.getpid()}."


def remove_stale(parent: Path | str, name: str | None = None) -> list[Path]:
    """Remove temporary folders and files in `parent` (of the file or folder `name`; any by default)
    whose owning process has died (a killed stage); return what was removed. Those of living
    processes are left alone."""
    removed = []
    for entry in Path(parent).glob(f".{'*' if name is None else glob.escape(name)}.pid*.*"):
        pid = entry.name.split(".pid", 1)[1].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it replaces `target`.

    The old folder is moved aside first and removed only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent)  # what a killed run left behind
    tmp = Path(tempfile.mkdtemp(prefix=scratch_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        as_umask_allows(tmp, folder=True)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=scratch_prefix(target.name), suffix=".old", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(source: Path | str, target: Path | str) -> None:
    """A second name for `source` at `target` (replaced if present): a hard link, which costs no disk
    and survives DVC deleting the first name; a copy on a file system without hard links. Safe because
    every writer here replaces files by rename, never in place."""
    with atomic_path(target) as tmp:  # never a moment without `target`: a kill leaves the old one
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
