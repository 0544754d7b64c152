"""Download a pinned archive: streaming, resumable, retried with back-off, checked by sha256."""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cxr.checksums import sha256_of
from cxr.errors import PipelineError

TRANSFER_BLOCK = 1 << 20  # bytes read from the connection at a time


class DownloadError(PipelineError, RuntimeError):
    """A download failed, was truncated, or does not match its pinned sha256."""


def _transfer(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part` (HTTP Range from its current size); raise on a short read."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) checked by config
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range beyond the end: the partial file is already complete
            return
        raise
    with response:
        if have and response.status != 206:  # the server ignored Range: start over
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with (
            part.open("ab" if have else "wb") as out,
            tqdm(total=expected, initial=have, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar,
        ):
            for block in iter(lambda: response.read(TRANSFER_BLOCK), b""):
                out.write(block)
                bar.update(len(block))
    if expected is not None and part.stat().st_size < expected:
        raise http.client.IncompleteRead(b"", expected - part.stat().st_size)


def download(
    url: str, target: Path, sha256: str, retries: int = 4, backoff_s: float = 1.0, timeout: float = 60
) -> Path:
    """Fetch `url` to `target` unless a file with the pinned hash is already there.

    The transfer goes to `target.part`, resumed across retries and runs; only a complete file
    whose sha256 matches `sha256` is renamed to `target`. With no pinned hash, the file is kept
    as `.part` and the error prints its hash for the user to pin.
    """
    if target.is_file() and sha256 and sha256_of(target) == sha256:
        print(f"download: {target} already holds sha256 {sha256[:12]}..., not downloading again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout)
            break
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500:
                raise DownloadError(f"data.url={url}: HTTP {exc.code} {exc.reason}") from exc
            if attempt == retries:
                raise DownloadError(
                    f"data.url={url}: download failed after {retries + 1} attempts ({type(exc).__name__}: {exc}); "
                    f"the partial file {part} is kept and the next run resumes it"
                ) from exc
            wait = backoff_s * 2**attempt
            print(f"download: attempt {attempt + 1} failed ({type(exc).__name__}); retrying in {wait:g} s")
            time.sleep(wait)
    check_pinned(part, sha256, url)
    os.replace(part, target)
    return target


def check_pinned(path: Path, sha256: str, origin: str) -> None:
    """Raise unless `path` has the pinned sha256: a mismatch deletes it; no pin prints its hash."""
    got = sha256_of(path)
    if not sha256:
        raise DownloadError(
            f"data.sha256 is not set: {origin} downloaded with sha256 {got}. "
            f"Pin it for reproducibility: `data.sha256: {got}` "
            "(the file is kept; the next run does not download it again)"
        )
    if got != sha256:
        path.unlink()
        raise DownloadError(
            f"{origin}: sha256 mismatch: expected data.sha256={sha256}, downloaded {got}. "
            "The file was deleted; check the source and the pinned hash."
        )
