"""Where `download` gets the dataset from: a table from `data.source` to a writer of data/raw."""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from cxr.archives import arrange_splits, safe_extract
from cxr.config import DataConfig
from cxr.demo_data import write_demo_dataset
from cxr.images import DatasetError
from cxr.paths import DOWNLOAD_DIR


def _from_demo(data: DataConfig, seed: int, out_dir: Path) -> str:
    counts = write_demo_dataset(out_dir, data, seed)
    return f"{sum(sum(c.values()) for c in counts.values())} synthetic {data.task} demo images"


def _from_url(data: DataConfig, seed: int, out_dir: Path) -> str:
    from cxr.fetch import download  # network code only where it is used

    archive = download(data.url, DOWNLOAD_DIR / PurePosixPath(urlparse(data.url).path).name, data.sha256)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".extract.") as tmp:
        safe_extract(archive, Path(tmp))
        layout = arrange_splits(Path(tmp), out_dir, data.split.val, data.split.test, seed, move=True)
    return f"{archive.name} (sha256 {data.sha256[:12]}...), {layout}"


def _from_folder(data: DataConfig, seed: int, out_dir: Path) -> str:
    folder = Path(data.folder)
    if not folder.is_dir():
        raise DatasetError(f"data.folder={data.folder}: not a folder")
    layout = arrange_splits(folder, out_dir, data.split.val, data.split.test, seed)
    return f"a copy of {folder}, {layout}"


SOURCES = {"demo": _from_demo, "url": _from_url, "folder": _from_folder}


def write_dataset(data: DataConfig, seed: int, out_dir: Path) -> str:
    """Fill the empty folder `out_dir` with {train,val,test}/{class}/images; describe what came in."""
    return SOURCES[data.source](data, seed, out_dir)
