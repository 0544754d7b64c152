"""Real datasets in: archives over HTTP on 127.0.0.1, local folders, unsafe archives refused."""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from cxr.config import ConfigError, parse_params
from cxr.data import sources as sources
from cxr.data.archives import ArchiveError, safe_extract
from cxr.data.download import DownloadError, download
from cxr.data.splits import DatasetError
from cxr.data.verify import verify_splits
from tests.conftest import tiny_params_dict


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves named byte strings with HTTP Range support; `cut_first` truncates the first N responses."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_first = 0
        self.ignore_if_range = False  # a careless server: answers Range from the current file whatever If-Range says

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        server: ArchiveServer = self.server  # type: ignore[assignment]
        body = server.files.get(self.path.lstrip("/"))
        server.requests.append((self.path, self.headers.get("Range")))
        if body is None:
            self.send_error(404)
            return
        start = 0
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        still_same = server.ignore_if_range or self.headers.get("If-Range") in (None, etag)  # else sent whole
        if self.headers.get("Range") and still_same:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if server.cut_first > 0:
            server.cut_first -= 1
            chunk = chunk[: len(chunk) // 2]  # a dropped connection half way
        self.wfile.write(chunk)


@pytest.fixture
def server():
    srv = ArchiveServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _zip_of(folder: Path, wrap: str = "xrays", rename_val: str = "Valid") -> bytes:
    """A zip of a demo dataset, wrapped in one folder, with `val` spelled another way."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*.png")):
            rel = path.relative_to(folder).as_posix()
            rel = rel.replace("val/", f"{rename_val}/", 1) if rel.startswith("val/") else rel
            zf.write(path, f"{wrap}/{rel}")
    return buffer.getvalue()


def _url_params(url: str, sha: str):
    raw = tiny_params_dict()
    raw["data"].update(source="url", url=url, sha256=sha)
    return parse_params(raw)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "DOWNLOAD_DIR", tmp_path / "downloads")
    return tmp_path


def test_good_archive_becomes_the_split_layout(server, demo_root, in_tmp):
    body = _zip_of(demo_root)
    server.files["set.zip"] = body
    sha = hashlib.sha256(body).hexdigest()
    out = in_tmp / "extracted"
    out.mkdir()
    sources.write_dataset(_url_params(server.url("set.zip"), sha).data, 0, out)
    assert sorted(p.name for p in out.iterdir()) == ["test", "train", "val"]
    assert verify_splits(out) == verify_splits(demo_root)
    # a second run finds the verified archive on disk and sends no request
    before = len(server.requests)
    out2 = in_tmp / "extracted2"
    out2.mkdir()
    sources.write_dataset(_url_params(server.url("set.zip"), sha).data, 0, out2)
    assert len(server.requests) == before


def test_checksum_mismatch_fails_and_keeps_nothing(server, in_tmp):
    server.files["set.zip"] = b"not what was pinned"
    with pytest.raises(DownloadError, match=r"set.zip: sha256 mismatch: expected data.sha256=0{64}"):
        download(server.url("set.zip"), in_tmp / "dl" / "set.zip", "0" * 64, backoff_s=0)
    assert list((in_tmp / "dl").iterdir()) == []


def test_truncated_transfer_is_resumed_with_range(server, in_tmp):
    body = bytes(range(256)) * 4000
    server.files["big.tar"] = body
    server.cut_first = 1
    target = download(server.url("big.tar"), in_tmp / "dl" / "big.tar", hashlib.sha256(body).hexdigest(), backoff_s=0)
    assert target.read_bytes() == body
    assert server.requests[1][1] == f"bytes={len(body) // 2}-"  # resumed, not restarted


def test_a_partial_file_of_a_changed_upstream_is_not_resumed(server, in_tmp):
    old, new = b"a" * 100_000, b"b" * 120_000
    server.files["big.tar"] = old
    server.cut_first = 100
    with pytest.raises(DownloadError):
        download(server.url("big.tar"), in_tmp / "dl" / "big.tar", "0" * 64, retries=0, backoff_s=0)
    assert (in_tmp / "dl" / "big.tar.part").stat().st_size == 50_000  # half of the old version kept
    server.files["big.tar"], server.cut_first = new, 0  # upstream replaced meanwhile
    target = download(server.url("big.tar"), in_tmp / "dl" / "big.tar", hashlib.sha256(new).hexdigest(), backoff_s=0)
    assert target.read_bytes() == new  # not half old, half new
    assert not (in_tmp / "dl" / "big.tar.part.json").exists()
    # a partial file with no record of its version is not resumed either
    (in_tmp / "dl" / "other.tar.part").write_bytes(b"z" * 10)
    server.files["other.tar"] = new
    download(server.url("other.tar"), in_tmp / "dl" / "other.tar", hashlib.sha256(new).hexdigest(), backoff_s=0)
    assert server.requests[-1] == ("/other.tar", None)


def test_a_server_ignoring_if_range_cannot_splice_a_same_length_replacement(server, in_tmp):
    """Issue 24: a server that ignores If-Range answered the resume with the second half of a same-length
    replacement; the spliced file's hash was offered for pinning. The 206's ETag is checked now."""
    old, new = b"a" * 100_000, b"b" * 100_000
    server.files["big.tar"], server.cut_first, server.ignore_if_range = old, 100, True
    with pytest.raises(DownloadError):
        download(server.url("big.tar"), in_tmp / "dl" / "big.tar", "", retries=0, backoff_s=0)
    server.files["big.tar"], server.cut_first = new, 0
    with pytest.raises(DownloadError, match=f"data.sha256 is not set.*{hashlib.sha256(new).hexdigest()}"):
        download(server.url("big.tar"), in_tmp / "dl" / "big.tar", "", backoff_s=0)
    assert (in_tmp / "dl" / "big.tar.part").read_bytes() == new  # the new version whole, not half and half


def test_always_truncated_transfer_fails_after_retries(server, in_tmp):
    server.files["big.tar"] = b"x" * 100_000
    server.cut_first = 100
    with pytest.raises(DownloadError, match="failed after 3 attempts.*partial file"):
        download(server.url("big.tar"), in_tmp / "dl" / "big.tar", "0" * 64, retries=2, backoff_s=0)


def test_unpinned_download_prints_the_hash_and_asks_to_pin(server, in_tmp):
    body = b"some archive bytes"
    server.files["set.zip"] = body
    sha = hashlib.sha256(body).hexdigest()
    with pytest.raises(DownloadError, match=f"data.sha256 is not set.*`data.sha256: {sha}`"):
        download(server.url("set.zip"), in_tmp / "dl" / "set.zip", "", backoff_s=0)
    count = len(server.requests)
    download(server.url("set.zip"), in_tmp / "dl" / "set.zip", sha, backoff_s=0)
    assert [r for r in server.requests[count:] if r[1] is None] == []  # only a range probe, no new download


def test_http_errors_and_bad_params_are_named(server, in_tmp):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url("missing.zip"), in_tmp / "dl" / "missing.zip", "0" * 64, backoff_s=0)
    raw = tiny_params_dict()
    raw["data"].update(source="url", url="ftp://example.org/x.zip")
    with pytest.raises(ConfigError, match="data.url to be an http"):
        parse_params(raw)
    raw["data"].update(url="https://example.org/download?id=7")
    with pytest.raises(ConfigError, match=r"\.tgz file, got 'https://example.org/download\?id=7'"):
        parse_params(raw)
    raw["data"].update(url="http://example.org/x.zip", sha256="abc")
    with pytest.raises(ConfigError, match="data.sha256"):
        parse_params(raw)


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 3
    return info


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("../evil.png"), "outside the target folder"),
        (_file("/abs/evil.png"), "outside the target folder"),
        (_link("train/covid/link.png"), "is a link"),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_unsafe_tar_members_are_refused_before_extraction(tmp_path, member, message):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar_with(member, b"abc" if member.isfile() else b""))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveError, match=message):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil.png").exists()


def test_zip_escape_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../evil.png", b"x")
    with pytest.raises(ArchiveError, match=r"'../../evil.png' would be written outside"):
        safe_extract(archive, tmp_path / "out")


def test_folder_source_and_layout_errors(tmp_path, demo_root):
    raw = tiny_params_dict()
    raw["data"].update(source="folder", folder=str(demo_root))
    out = tmp_path / "copy"
    out.mkdir()
    sources.write_dataset(parse_params(raw).data, 0, out)
    assert verify_splits(out) == verify_splits(demo_root)
    shutil.rmtree(demo_root / "train")
    with pytest.raises(ArchiveError, match="no labelled train split"):
        sources.write_dataset(parse_params(raw).data, 0, tmp_path / "copy2")


def test_class_only_layout_is_split_stratified_seeded_and_leak_free(tmp_path, demo_root):
    flat = tmp_path / "flat" / "dataset"  # wrapped in one folder, as archives often are
    for split in ("train", "val", "test"):
        for cls in ("infected", "normal"):
            (flat / cls).mkdir(parents=True, exist_ok=True)
            for path in (demo_root / split / cls).glob("*.png"):
                shutil.copy(path, flat / cls / f"{split}_{path.name}")
    dup = sorted((flat / "normal").glob("*.png"))[0]
    shutil.copy(dup, flat / "normal" / "zz_copy_of_first.png")  # the same image twice
    raw = tiny_params_dict()
    raw["data"].update(source="folder", folder=str(tmp_path / "flat"), split={"val": 0.25, "test": 0.25})
    params = parse_params(raw)

    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        out.mkdir()
        description = sources.write_dataset(params.data, params.seed, out)
        assert "{class}/file layout" in description
        outs.append(out)
    report = verify_splits(outs[0])  # would raise on a leak across splits
    # 24 unique images per class: 6 test, 6 val, 12 train; the duplicate follows its twin
    assert [report.counts[s]["infected"] for s in ("train", "val", "test")] == [12, 6, 6]
    normal = [report.counts[s]["normal"] for s in ("train", "val", "test")]
    assert normal in ([13, 6, 6], [12, 7, 6], [12, 6, 7])
    (twins,) = report.duplicates_within
    assert len({name.split("/")[0] for name in twins}) == 1 and report.duplicates_across == []
    listing = [sorted(str(p.relative_to(o)) for p in o.rglob("*.png")) for o in outs]
    assert listing[0] == listing[1]  # same seed, same split

    raw["seed"] = params.seed + 1
    other = tmp_path / "c"
    other.mkdir()
    sources.write_dataset(parse_params(raw).data, params.seed + 1, other)
    assert sorted(str(p.relative_to(other)) for p in other.rglob("*.png")) != listing[0]


class FakeGdown:
    """Stands in for gdown's network layer: serves archives by Drive id into the output folder."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.calls = files, []

    def download(self, id, output, **kwargs):  # noqa: A002 - gdown's parameter name
        self.calls.append(id)
        if id not in self.files:
            raise RuntimeError(f"Cannot retrieve the public link of the file {id}")
        path = Path(output) / "course_dataset.zip"
        path.write_bytes(self.files[id])
        return str(path)


def _gdrive_params(**data):
    raw = tiny_params_dict()
    raw["data"].update(data)
    return parse_params(raw)


def test_gdrive_source_through_a_replaced_network_layer(monkeypatch, in_tmp, demo_root):
    import gdown

    body = _zip_of(demo_root)
    sha = hashlib.sha256(body).hexdigest()
    fake = FakeGdown({"FILE_ID": body})
    monkeypatch.setattr(gdown, "download", fake.download)
    out = in_tmp / "extracted"
    out.mkdir()
    what = sources.write_dataset(_gdrive_params(source="gdrive", gdrive_id="FILE_ID", sha256=sha).data, 0, out)
    assert "from Google Drive" in what and verify_splits(out) == verify_splits(demo_root)
    again = in_tmp / "again"
    again.mkdir()
    sources.write_dataset(_gdrive_params(source="gdrive", gdrive_id="FILE_ID", sha256=sha).data, 0, again)
    assert fake.calls == ["FILE_ID"]  # the verified archive on disk is reused
    with pytest.raises(DownloadError, match="data.sha256 is not set"):
        sources.write_dataset(_gdrive_params(source="gdrive", gdrive_id="FILE_ID").data, 0, in_tmp / "x")


def test_preset_tries_its_ids_in_order_and_checks_expected_counts(monkeypatch, in_tmp, demo_root):
    import gdown

    from cxr.data.presets import PRESETS

    first, second = PRESETS["covid-binary"].gdrive_ids
    body = _zip_of(demo_root)
    fake = FakeGdown({second: body})  # the first id fails: the mirror is used
    monkeypatch.setattr(gdown, "download", fake.download)
    params = _gdrive_params(preset="covid-binary", sha256=hashlib.sha256(body).hexdigest())
    out = in_tmp / "extracted"
    out.mkdir()
    with pytest.raises(DatasetError, match=r"data.preset=covid-binary: expected \{'train': 12000.*found \{'train': 24"):
        sources.write_dataset(params.data, 0, out)
    assert fake.calls == [first, second]
    with pytest.raises(ConfigError, match="preset 'covid-9class' is not known"):
        _gdrive_params(preset="covid-9class")
    monkeypatch.setattr(gdown, "download", FakeGdown({}).download)
    with pytest.raises(DownloadError, match="no Google Drive id could be downloaded"):
        sources.write_dataset(_gdrive_params(source="gdrive", gdrive_id="NOPE", sha256="0" * 64).data, 0, out)


def test_csv_layout_splits_by_patient_and_verify_catches_patient_leaks(tmp_path, demo_root):
    base = tmp_path / "csvset"
    rows = ["path,label,patient_id"]
    for cls in ("infected", "normal"):
        for i, path in enumerate(
            sorted(p for s in ("train", "val", "test") for p in (demo_root / s / cls).glob("*.png"))
        ):
            dest = base / "img" / f"{cls}_{path.parent.parent.name}_{path.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest)
            rows.append(f"img/{dest.name},{cls},{cls}-patient-{i // 3}")  # three images per patient
    (base / "labels.csv").write_text("\n".join(rows) + "\n")
    raw = tiny_params_dict()
    raw["data"].update(source="folder", folder=str(base), split={"val": 0.25, "test": 0.25})
    out = tmp_path / "out"
    out.mkdir()
    assert "CSV layout" in sources.write_dataset(parse_params(raw).data, 7, out)
    report = verify_splits(out)  # raises on any patient in two splits
    assert report.patients_across == {}
    assert [report.counts[s]["infected"] for s in ("train", "val", "test")] == [12, 6, 6]  # 8 patients: 4/2/2

    # move one image of a test patient into train: verify names the patient
    test_rows = (out / "test" / "labels.csv").read_text().splitlines()
    moved = test_rows[1].split(",")
    shutil.copy(out / "test" / moved[0], out / "train" / "images" / "img" / "moved.png")
    with (out / "train" / "labels.csv").open("a") as f:
        f.write(f"images/img/moved.png,{moved[1]},{moved[2]}\n")
    with pytest.raises(
        DatasetError, match=f"patient {moved[2]} in test and train|patient {moved[2]} in train and test"
    ):
        verify_splits(out)


def test_a_tar_gz_bomb_is_refused_before_anything_is_written(tmp_path):
    """Issue 24, hole 2: a small tar.gz holding a member thousands of times its size expanded fully
    (the 1000-fold check covered zip members only); the stream's own ratio is checked now."""
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("train/normal/zeros.png")
        info.size = 64 * 2**20  # 64 MiB of zeros: about 64 KB compressed
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size < 200_000
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveError, match=r"bomb.tar.gz: .* expand to 67,108,864 .*refusing a compression bomb"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []
