"""Safe archive extraction: every member checked before anything is written."""

from __future__ import annotations

import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
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


MAX_RATIO = 1000  # a member expanding more than this from its compressed size is a bomb (images barely compress)
COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """`data.max_extracted_bytes` and `data.max_members`: what an archive may expand to."""

    max_bytes: int = 20_000_000_000
    max_members: int = 1_000_000


def _check_sizes(archive: Path, sizes: list[tuple[str, int, int]], limits: Limits) -> None:
    """Refuse, before extracting anything, too many members, too many bytes, or a bomb-like member."""
    if len(sizes) > limits.max_members:
        raise ArchiveError(f"{archive}: {len(sizes):,} members, over data.max_members={limits.max_members:,}")
    total = sum(size for _, size, _ in sizes)
    if total > limits.max_bytes:
        raise ArchiveError(
            f"{archive}: expands to {total:,} bytes, over data.max_extracted_bytes={limits.max_bytes:,}; "
            "raise the limit if the dataset really is that large"
        )
    for name, size, packed in sizes:
        if size > (1 << 20) and size > MAX_RATIO * max(packed, 1):
            raise ArchiveError(
                f"{archive}: member {name!r} expands {size // max(packed, 1):,}-fold; refusing a zip bomb"
            )


def _check_stream(archive: Path, total: int) -> None:
    """Refuse a compressed tar whose members expand more than MAX_RATIO-fold from the file's size: a
    1.2 MB tar.gz holding a 1 GiB member is a bomb, whatever data.max_extracted_bytes allows."""
    packed = max(archive.stat().st_size, 1)
    if total > (1 << 20) and total > MAX_RATIO * packed:
        raise ArchiveError(
            f"{archive}: {packed:,} bytes expand to {total:,} ({total // packed:,}-fold); refusing a compression bomb"
        )


def _extract_zip(archive: Path, zf: zipfile.ZipFile, target: Path, limits: Limits) -> None:
    """Extract member by member, counting the bytes actually written (declared sizes can lie)."""
    written = 0
    for info in zf.infolist():
        dest = target / info.filename
        if info.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, dest.open("wb") as out:
            for block in iter(lambda s=src: s.read(COPY_BLOCK), b""):
                written += len(block)
                if written > limits.max_bytes:
                    raise ArchiveError(f"{archive}: expands past data.max_extracted_bytes={limits.max_bytes:,}")
                out.write(block)


def safe_extract(archive: Path, target: Path, limits: Limits = Limits()) -> None:
    """Extract a .zip, .tar, .tar.gz or .tgz into `target`, after checking every member (paths,
    links, sizes) first; extraction stops at `limits` whatever the headers say."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    mode = info.external_attr >> 16
                    _check_member(archive, info.filename, stat.S_ISLNK(mode), False)
                _check_sizes(archive, [(i.filename, i.file_size, i.compress_size) for i in zf.infolist()], limits)
                _extract_zip(archive, zf, target, limits)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for m in members:
                    _check_member(archive, m.name, m.issym() or m.islnk(), not (m.isfile() or m.isdir()))
                # a tar member's size is exact; compression is over the whole stream, so the ratio is the stream's
                _check_sizes(archive, [(m.name, m.size, m.size) for m in members], limits)
                _check_stream(archive, sum(m.size for m in members))
                tf.extractall(target, members=members, filter="data")
        else:
            raise ArchiveError(f"{archive}: unsupported archive type; use .zip, .tar, .tar.gz or .tgz")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"{archive}: not a readable archive ({type(exc).__name__}: {exc})") from exc
