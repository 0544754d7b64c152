"""The local page and JSON API of `python -m stages.serve`: one film in, the answer and its doubts out.

Built on the standard library's ThreadingHTTPServer, bound to 127.0.0.1: a page for one person on
their own machine needs no web framework, and FastAPI (+ Starlette, uvicorn, python-multipart) or
Gradio (hundreds of MB) would be most of the dependency weight of the whole project for three
routes. Multipart bodies are parsed by the standard library's email parser.

Uploads are hostile input: the body is refused over `max_bytes` and never kept (one up to
DRAIN_FACTOR times that is read in small chunks and dropped, so the client, which sends its whole
body before it reads the answer, gets the 413 instead of a broken pipe; a larger one closes the
connection), a stalled client is dropped after READ_TIMEOUT_S, the file's type
is read from its first bytes (PNG, JPEG, DICOM), never from the client's name, the film is written
under a fresh temporary folder with a fixed name and removed after, and decoding applies the
pixel limit of the pipeline. Errors are JSON: {"error": why} with a 4xx status.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
import threading
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from cxr.data.film_checks import check_files
from cxr.data.store import decode_all
from cxr.evaluate.doubt import Abstention, Scorer, checks_only
from cxr.evaluate.gradcam import gradcam, gradcam_layer, overlay
from cxr.evaluate.predict import decide
from cxr.model.ensemble import explained

MAX_BYTES = 32 * 1024 * 1024  # an upload over this is refused and never kept
DRAIN_FACTOR = 4  # an over-size body up to this many times MAX_BYTES is read and dropped before the 413
READ_TIMEOUT_S = 30  # a client that stops sending mid-body is dropped after this
OVERLAY_SIDE = 320  # the Grad-CAM overlay is drawn this wide on the page
SIGNATURES = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg"}


class UploadError(ValueError):
    """A bad upload: the HTTP status and the message the client sees."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


def film_suffix(data: bytes) -> str:
    """The suffix the decoder needs, from the file's own first bytes (DICOM: 'DICM' at byte 128)."""
    for magic, suffix in SIGNATURES.items():
        if data.startswith(magic):
            return suffix
    if data[128:132] == b"DICM":
        return ".dcm"
    raise UploadError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "not a PNG, JPEG or DICOM file (read from its first bytes)")


def uploaded_file(content_type: str, body: bytes) -> tuple[str, bytes]:
    """(client's file name, bytes) of the multipart field `file`."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(HTTPStatus.BAD_REQUEST, "send multipart/form-data with the film in a field named 'file'")
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    for part in message.iter_parts() if message.is_multipart() else ():
        if part.get_param("name", header="content-disposition") == "file":
            data = part.get_payload(decode=True) or b""
            if not data:
                raise UploadError(HTTPStatus.BAD_REQUEST, "the field 'file' is empty")
            return Path(part.get_filename() or "upload").name[:200], data
    raise UploadError(HTTPStatus.BAD_REQUEST, "no field named 'file' in the form")


@dataclass
class Service:
    """The loaded model and what it needs to answer: thresholds and abstention rule fitted by
    evaluate (None: the defaults, model-free checks only), and the model card's path."""

    scorer: Scorer
    thresholds: dict | None
    rule: Abstention | None
    card: Path
    max_bytes: int = MAX_BYTES

    def __post_init__(self):
        self.lock = threading.Lock()  # one film through the model at a time

    def answer(self, name: str, data: bytes) -> dict:
        """The JSON answer for one uploaded film."""
        suffix = film_suffix(data)
        spec = self.scorer.spec
        with tempfile.TemporaryDirectory(prefix="cxr-serve-") as tmp:
            path = Path(tmp) / f"film{suffix}"
            path.write_bytes(data)
            good, pixels, problems = decode_all([path], spec.image_size, self.scorer.max_pixels, spec.preprocessing)
            if not good:
                why = problems[0][1] if problems else "unreadable"
                raise UploadError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{name}: {why}")
            checks = check_files(good, self.scorer.max_pixels)
        with self.lock:
            doubt = self.scorer.assess(pixels)
            picture = self._overlay(pixels, doubt.probs)
        reasons = self.rule.reasons(doubt, checks) if self.rule else checks_only(checks, 1)
        decisions, used = decide(spec, doubt.probs, self.thresholds)
        ood = float(doubt.ood[0])
        return {
            "file": name,
            "probabilities": dict(zip(spec.classes, map(float, doubt.probs[0]), strict=True)),
            "decision": decisions[0],
            "thresholds": used,
            "ood_score": None if np.isnan(ood) else ood,
            "ood_threshold": self.rule.ood_threshold if self.rule else None,
            "uncertainty": float(doubt.uncertainty[0]),
            "uncertainty_threshold": self.rule.uncertainty_threshold if self.rule else None,
            "uncertainty_over": doubt.spread_over,
            "abstain": bool(reasons[0]),
            "reason": reasons[0],
            "fitted_by_evaluate": self.rule is not None,
            "overlay_png": picture,
            "model": {"arch": spec.arch, "image_size": spec.image_size, "preprocessing": spec.preprocessing},
        }

    def _overlay(self, pixels: np.ndarray, probs: np.ndarray) -> str:
        """The Grad-CAM of the most probable class over the film, as a PNG data URL."""
        runtime, model = self.scorer.runtime, explained(self.scorer.model)
        images = runtime.images(torch.from_numpy(pixels))
        cam = gradcam(model, images, torch.as_tensor(probs.argmax(1)), gradcam_layer(model, images)).numpy()[0]
        picture = overlay(pixels[0], cam).resize((OVERLAY_SIDE, OVERLAY_SIDE))
        out = io.BytesIO()
        picture.save(out, format="PNG")
        return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), GET /card (the model card), POST /predict (multipart field `file`)."""

    service: Service  # set on the subclass `make_server` builds
    server_version = "cxr-serve"
    timeout = READ_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        if self.path in ("/", "/index.html"):
            page = resources.files("cxr.serve").joinpath("page.html").read_text()
            page = page.replace("{{MAX_BYTES}}", str(self.service.max_bytes))  # the page refuses larger files itself
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        elif self.path == "/card":
            card = self.service.card
            text = card.read_bytes() if card.is_file() else f"{card}: no model card; run `dvc repro export`\n".encode()
            self._send(HTTPStatus.OK, text, "text/plain; charset=utf-8")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"{self.path}: no such page (try / or POST /predict)")

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/predict":
            return self._error(HTTPStatus.NOT_FOUND, f"{self.path}: POST a film to /predict")
        try:
            length = int(self.headers.get("Content-Length") or -1)
        except ValueError:
            length = -1
        if length < 0:
            return self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if length > self.service.max_bytes:
            self._drop_body(length)
            limit = self.service.max_bytes // 2**20
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"upload of {length:,} bytes is over {limit} MB")
        body = self.rfile.read(length)
        try:
            name, data = uploaded_file(self.headers.get("Content-Type", ""), body)
            result = self.service.answer(name, data)
        except UploadError as exc:
            return self._error(exc.status, str(exc))
        self._send(HTTPStatus.OK, json.dumps(result).encode(), "application/json")

    def _drop_body(self, length: int) -> None:
        """Read and forget an over-size body in 64 KiB chunks, or close the connection if it is huge."""
        if length > DRAIN_FACTOR * self.service.max_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 2**16))
            if not chunk:
                break
            length -= len(chunk)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the standard library's signature
        print(f"serve: {self.address_string()} {format % args}")


def make_server(service: Service, port: int) -> ThreadingHTTPServer:
    """The server on 127.0.0.1:`port` (0: any free port; read it from server.server_address)."""
    handler = type("BoundHandler", (Handler,), {"service": service})
    return ThreadingHTTPServer(("127.0.0.1", port), handler)
