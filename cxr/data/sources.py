"""Where `download` gets the dataset from: a table from `data.source` to a writer of data/raw."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from cxr.atomic import remove_stale, scratch_prefix
from cxr.config import DataConfig
from cxr.data.archives import Limits, safe_extract
from cxr.data.demo import write_demo_dataset
from cxr.data.grouping import Grouping
from cxr.data.images import is_image
from cxr.data.layout import arrange_splits
from cxr.data.presets import PRESETS
from cxr.data.public_layouts import read_public_layout
from cxr.data.splits import DatasetError
from cxr.paths import DOWNLOAD_DIR, user_path


def _from_demo(data: DataConfig, seed: int, out_dir: Path, grouping: Grouping) -> str:
    counts = write_demo_dataset(out_dir, data, seed)
    return f"{sum(sum(c.values()) for c in counts.values())} synthetic {data.task} demo images"


def _unpack(archive: Path, data: DataConfig, seed: int, out_dir: Path, grouping: Grouping) -> str:
    remove_stale(out_dir.parent)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=scratch_prefix("extract")) as tmp:
        safe_extract(archive, Path(tmp), Limits(data.max_extracted_bytes, data.max_members))
        return arrange_splits(Path(tmp), out_dir, data.split.val, data.split.test, seed, grouping, move=True)


def _from_url(data: DataConfig, seed: int, out_dir: Path, grouping: Grouping) -> str:
    from cxr.data.download import download  # network code only where it is used

    archive = download(data.url, DOWNLOAD_DIR / PurePosixPath(urlparse(data.url).path).name, data.sha256)
    return f"{archive.name} (sha256 {data.sha256[:12]}...), {_unpack(archive, data, seed, out_dir, grouping)}"


def _from_gdrive(data: DataConfig, seed: int, out_dir: Path, grouping: Grouping) -> str:
    import gdown  # well-kept Google Drive client: confirmation pages, cookies, resumable downloads

    from cxr.checksums import sha256_of
    from cxr.data.download import DownloadError, check_pinned

    preset = PRESETS.get(data.preset)
    ids = preset.gdrive_ids if preset else (data.gdrive_id,)
    folder = DOWNLOAD_DIR / "gdrive"
    folder.mkdir(parents=True, exist_ok=True)
    archive, failures = None, []
    for file_id in ids:
        cached = [p for p in folder.glob(f"{file_id}.*") if not p.name.endswith(".part")]
        if cached and data.sha256 and sha256_of(cached[0]) == data.sha256:
            archive = cached[0]
            break
        try:
            got = gdown.download(id=file_id, output=str(folder) + "/", resume=True, retries=3, quiet=False)
        except Exception as exc:  # noqa: BLE001 - gdown raises many types for network and Drive errors
            failures.append(f"{file_id}: {type(exc).__name__}: {exc}")
            continue
        if got:
            archive = Path(got).rename(folder / f"{file_id}{''.join(Path(got).suffixes) or '.zip'}")
            break
        failures.append(f"{file_id}: gdown returned nothing")
    if archive is None:
        raise DownloadError(f"data.source=gdrive: no Google Drive id could be downloaded ({'; '.join(failures)})")
    check_pinned(archive, data.sha256, f"Google Drive file {archive.stem}")
    layout = _unpack(archive, data, seed, out_dir, grouping)
    if preset and preset.expected:
        got = {s: sum(1 for p in (out_dir / s).rglob("*") if is_image(p)) for s in preset.expected}
        if got != preset.expected:
            raise DatasetError(f"data.preset={data.preset}: expected {preset.expected} images per split, found {got}")
    return f"{archive.name} from Google Drive, {layout}"


def _from_folder(data: DataConfig, seed: int, out_dir: Path, grouping: Grouping) -> str:
    folder = user_path(data.folder)
    if not folder.is_dir():
        raise DatasetError(
            f"data.folder={data.folder}: not a folder (a relative path is read from the repository root, and by a "
            "queued experiment from the repository it was queued in)"
        )
    links = [Path(top) / name for top, dirs, files in os.walk(folder) for name in dirs + files
             if (Path(top) / name).is_symlink()]  # fmt: skip
    if links:  # a link can point anywhere on the host (or at itself); its target would land in data/raw
        named = ", ".join(str(p) for p in links[:5]) + (" ..." if len(links) > 5 else "")
        raise DatasetError(
            f"data.folder={data.folder}: {len(links)} symbolic links refused ({named}); copy the files they point "
            "to into the folder instead"
        )
    if data.layout != "auto":
        return f"a copy of {folder}, {read_public_layout(data, folder, out_dir, seed)}"
    layout = arrange_splits(folder, out_dir, data.split.val, data.split.test, seed, grouping)
    return f"a copy of {folder}, {layout}"


SOURCES = {"demo": _from_demo, "url": _from_url, "folder": _from_folder, "gdrive": _from_gdrive}


def write_dataset(data: DataConfig, seed: int, out_dir: Path, grouping: Grouping | None = None) -> str:
    """Fill the empty folder `out_dir` with {train,val,test}/{class}/images; describe what came in.
    A `data.preset` names a Google Drive dataset and takes precedence over `data.source`."""
    return SOURCES["gdrive" if data.preset else data.source](data, seed, out_dir, grouping or Grouping())
