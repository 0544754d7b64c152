"""The JSON API of `python -m stages.serve`, through an HTTP client only (no browser): a film in,
the answer and its doubts out; bad uploads refused with a 4xx JSON error, nothing left on disk."""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import threading
import uuid

import numpy as np
import pytest
from PIL import Image

from cxr.config import parse_params
from cxr.evaluate.run import evaluate
from cxr.serve.app import uploaded_file
from stages import serve
from tests.conftest import train_on


def multipart(field: str, name: str, data: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def test_multipart_parsing_keeps_binary_bytes_exactly():
    data = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)) + b"\r\n--x\r\n\n\r"
    content_type, body = multipart("file", "../../etc/passwd", data)
    name, got = uploaded_file(content_type, body)
    assert got == data and name == "passwd"  # the client's path is cut to a bare name, used only in the answer


@pytest.fixture
def server(tmp_path, demo_root, tiny_params_raw):
    raw = dict(tiny_params_raw)
    raw["train"] = {**raw["train"], "head": {**raw["train"]["head"], "dropout": 0.2}}
    params = parse_params(raw)
    train_on(params, demo_root, tmp_path)
    metrics = tmp_path / "test.json"
    evaluate(params, tmp_path / "models/model.pt", tmp_path / "data/decoded", demo_root, metrics,
             tmp_path / "p.csv", tmp_path / "eval")  # fmt: skip
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Model card: test\n")
    argv = ["--port", "0", "--model", str(tmp_path / "models/model.pt"), "--metrics", str(metrics),
            "--card", str(card), "--max-mb", "1"]  # fmt: skip
    args = serve.argparse_args(argv)
    httpd = serve.make_server(serve.build_service(args), 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], demo_root
    httpd.shutdown()
    httpd.server_close()


def call(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type"), data


def test_the_api_answers_a_film_and_refuses_bad_uploads(server, tmp_path):
    port, raw = server
    film = sorted((raw / "test").rglob("*.png"))[0]
    content_type, body = multipart("file", film.name, film.read_bytes())
    status, kind, data = call(port, "POST", "/predict", body, {"Content-Type": content_type})
    answer = json.loads(data)
    assert status == 200 and kind == "application/json"
    assert set(answer) >= {"probabilities", "decision", "ood_score", "uncertainty", "abstain", "reason"}
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["decision"] in answer["probabilities"] and answer["ood_score"] > 0
    assert answer["fitted_by_evaluate"] and answer["overlay_png"].startswith("data:image/png;base64,")
    assert answer["uncertainty_over"].startswith("MC dropout")
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("cxr-serve-")]  # its temp folder is gone

    colour = tmp_path / "photo.png"
    Image.fromarray(np.dstack([np.full((64, 64), v, np.uint8) for v in (220, 30, 40)])).save(colour)
    content_type, body = multipart("file", "photo.png", colour.read_bytes())
    answer = json.loads(call(port, "POST", "/predict", body, {"Content-Type": content_type})[2])
    assert answer["abstain"] and answer["reason"].startswith("not a radiograph: a colour image")

    refusals = [
        (multipart("file", "notes.txt", b"hello, not a film"), 415, "not a PNG, JPEG or DICOM"),
        (multipart("other", "a.png", film.read_bytes()), 400, "no field named 'file'"),
        (multipart("file", "big.png", b"\x89PNG\r\n\x1a\n" + bytes(2 * 2**20)), 413, "over 1 MB"),
        (multipart("file", "cut.png", film.read_bytes()[:60]), 422, "cut.png"),
    ]
    for (content_type, body), expected, message in refusals:
        status, kind, data = call(port, "POST", "/predict", body, {"Content-Type": content_type})
        assert (status, kind) == (expected, "application/json") and message in json.loads(data)["error"], data
    assert call(port, "GET", "/nowhere")[0] == 404


def test_an_over_size_upload_always_gets_its_413_and_a_huge_one_is_not_read(server):
    port, _ = server
    content_type, body = multipart("file", "big.png", b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20))
    for _ in range(10):  # the client sends all of it before it reads: the server must not close mid-body
        status, _, data = call(port, "POST", "/predict", body, {"Content-Type": content_type})
        assert status == 413 and "over 1 MB" in json.loads(data)["error"]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(10**12))  # a terabyte is announced and never sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "1,000,000,000,000 bytes is over 1 MB" in json.loads(response.read())["error"]
    conn.close()


def test_the_page_and_the_card_are_served(server):
    port, _ = server
    status, kind, page = call(port, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b"Drop a PNG, JPEG or DICOM film" in page
    assert b"const MAX_BYTES = 1048576;" in page and b"{{" not in page
    status, _, card = call(port, "GET", "/card")
    assert status == 200 and card.startswith(b"# Model card")


def test_serve_refuses_an_exported_file_by_name(tmp_path):
    from cxr.model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="serve loads the PyTorch checkpoint"):
        serve.build_service(serve.argparse_args(["--model", str(tmp_path / "model.onnx")]))
