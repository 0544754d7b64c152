"""Download a pinned archive: streaming, resumable, retried with back-off, checked by sha256."""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from cxr.atomic import write_json
from cxr.checksums import sha256_of
from cxr.errors import PipelineError
from cxr.progress import progress

TRANSFER_BLOCK = 1 << 20  # bytes read from the connection at a time


class DownloadError(PipelineError, RuntimeError):
    """A download failed, was truncated, or does not match its pinned sha256."""


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _validator(response) -> dict[str, str]:
    """What identifies the server's version of the file: ETag, Last-Modified, full length."""
    headers = response.headers
    length = headers.get("Content-Range", "").rpartition("/")[2] or headers.get("Content-Length") or ""
    return {"etag": headers.get("ETag") or "", "last_modified": headers.get("Last-Modified") or "", "length": length}


def _same_version(response, part: Path, have: int) -> bool:
    """Whether a 206 answer continues the very file `part` holds the start of: it starts at `have` and
    carries the recorded length and validators (ETag, Last-Modified). A server that ignores If-Range
    answers a replaced file with its new validators, or none: that is not proof, so it is refused."""
    recorded, got = json.loads(_validator_file(part).read_text()), _validator(response)
    starts_right = response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
    tags = [k for k in ("etag", "last_modified") if recorded.get(k)]
    same = bool(tags) and all(got[k] == recorded[k] for k in tags)
    return starts_right and got["length"] == recorded["length"] and same


def _resume_headers(part: Path) -> dict[str, str]:
    """Range headers to continue `part`, only when the version it came from is known (If-Range: the
    server sends the whole file again if it has changed since); {} means start over."""
    have = part.stat().st_size if part.exists() else 0
    recorded = _validator_file(part)
    if not have or not recorded.is_file():
        return {}
    known = json.loads(recorded.read_text())
    tag = known.get("etag") or known.get("last_modified")
    return {"Range": f"bytes={have}-", "If-Range": tag} if tag else {}


def _transfer(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part` (HTTP Range from its current size, if the server's file is
    the same version); raise on a short read."""
    headers = _resume_headers(part)
    have = part.stat().st_size if headers else 0
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) checked by config
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # range beyond the end: the partial file is already complete
            return
        raise
    with response:
        if have and response.status != 206:  # the server's file changed (or Range is ignored): start over
            print(f"download: {url} changed since {part.name} was started (or cannot resume); downloading it again")
            have = 0
        if have and not _same_version(response, part, have):  # do not splice two versions
            print(f"download: {url}: the server's answer does not prove it is the version {part.name} was started "
                  "from; downloading it again")
            response.close()
            return _transfer(url, _restart(part), timeout)
        if not have:
            write_json(_validator_file(part), _validator(response))
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length is not None else None
        with (
            part.open("ab" if have else "wb") as out,
            progress(total=expected, initial=have, unit="B", unit_scale=True, desc=f"download {Path(url).name}") as bar,
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
    _validator_file(part).unlink(missing_ok=True)
    return target


def _restart(part: Path) -> Path:
    part.unlink(missing_ok=True)
    _validator_file(part).unlink(missing_ok=True)
    return part


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
        _validator_file(path).unlink(missing_ok=True)
        raise DownloadError(
            f"{origin}: sha256 mismatch: expected data.sha256={sha256}, downloaded {got}. "
            "The file was deleted; check the source and the pinned hash."
        )
