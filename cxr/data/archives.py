"""Safe archive extraction: every member checked before anything is written."""

from __future__ import annotations

import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from cxr.errors import PipelineError


class ArchiveError(PipelineError, ValueError):
    """An archive is unreadable, has an unsafe member, or does not hold the expected layout."""


def _check_member(archive: Path, name: str, is_link: bool, is_special: bool) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the target folder; refusing it")
    if is_link:
        raise ArchiveError(f"{archive}: member {name!r} is a link; links are refused (they can point anywhere)")
    if is_special:
        raise ArchiveError(f"{archive}: member {name!r} is not a regular file or folder; refusing it")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a .zip, .tar, .tar.gz or .tgz into `target`, after checking every member first."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    _check_member(archive, info.filename, stat.S_ISLNK(mode), False)
                zf.extractall(target)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(archive, m.name, m.issym() or m.islnk(), not (m.isfile() or m.isdir()))
                tf.extractall(target, members=members, filter="data")
        else:
            raise ArchiveError(f"{archive}: unsupported archive type; use .zip, .tar, .tar.gz or .tgz")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{archive}: not a readable archive ({exc})") from exc
