"""train.weights: txrv:<name>: torchxrayvision's chest X-ray backbones, offline, from files the tests build in the
package's own format (the real architecture, random weights) where the package reads them."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.config import XRV_WEIGHTS, ConfigError, parse_params
from cxr.model import xray_weights
from cxr.model.inference import Runtime
from cxr.model.networks import freeze
from cxr.model.spec import initial_model, spec_from_params
from cxr.model.xray_weights import PINS_ENV, XrayWeightsError, read_tensors, weights_file
from tests.conftest import tiny_params_dict

with warnings.catch_warnings():
    import torchxrayvision as xrv

ALL = "densenet121-res224-all"


def place_weights(home: Path, name: str = ALL, pin: bool = True, seed: int = 0, legacy: bool = False) -> Path:
    """A torchxrayvision file for `name` (whole pickled DenseNet, or ResNet50's state dict) with random weights,
    at the path the package reads under `home`; with `pin`, its sha256 in a pins file for the test only."""
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        path = weights_file(name)
    finally:
        os.environ["HOME"] = old or ""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if name.startswith("densenet"):
        payload = xrv.models.DenseNet(weights=None)  # the whole module, as the published DenseNet files are
    else:
        payload = torchvision_resnet50_one_channel().state_dict()
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    if pin:
        pins = home / "pins.json"
        known = json.loads(pins.read_text()) if pins.is_file() else {}
        known[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        pins.write_text(json.dumps(known))
    return path


def torchvision_resnet50_one_channel():
    import torchvision

    model = torchvision.models.resnet50(num_classes=18)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(PINS_ENV, str(tmp_path / "pins.json"))
    return tmp_path


def txrv_params(name: str = ALL, **train):
    return parse_params(tiny_params_dict(weights=f"txrv:{name}", **train))


def test_the_names_are_torchxrayvisions_own_with_their_network_and_size():
    urls = xrv.models.model_urls
    ours = {k: v for k, v in urls.items() if k.startswith(("densenet121-", "resnet50-"))}
    assert set(XRV_WEIGHTS) == set(ours)
    for name, (network, size) in XRV_WEIGHTS.items():
        assert name.startswith(network) and ours[name]["input_resolution"] == size


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickled_module_is_read_as_tensors_without_running_its_classes(tmp_path, legacy):
    torch.manual_seed(1)
    model = xrv.models.DenseNet(weights=None)
    path = tmp_path / "w.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    state = read_tensors(path)
    reference = model.state_dict()
    assert set(state) == {k for k, v in reference.items() if v is not None}
    assert all(torch.equal(state[k], reference[k]) for k in state)


class _Payload:
    """Unpickled, it creates `marker` (a file system call standing in for any code a pickle may run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


class _MethodPayload(_Payload):
    def __reduce__(self):
        return (Path.mkdir, (self.marker,))  # pickled as getattr(PosixPath, "mkdir"): a call of a call


def test_a_hostile_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pt"
    torch.save({"conv.weight": torch.ones(2), "evil": _Payload(marker)}, path)
    assert set(read_tensors(path)) == {"conv.weight"}  # the call became an inert record
    torch.save({"conv.weight": torch.ones(2), "evil": _MethodPayload(marker)}, path)
    with pytest.raises(XrayWeightsError, match="not a readable PyTorch weights file"):
        read_tensors(path)  # calling what getattr gave is refused
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe loader refuses such a file outright
        torch.load(path, weights_only=True)


def test_the_name_brings_its_network_and_torchxrayvisions_input_scaling(home):
    place_weights(home)
    params = txrv_params()
    assert params.train.arch == "resnet18" and params.train.network == "densenet121"
    spec = spec_from_params(params, ("infected", "normal"))
    assert spec.arch == "densenet121" and spec.channels == 1
    pixels = torch.tensor([[[[0, 255], [127, 64]]]], dtype=torch.uint8)
    x = Runtime(torch.device("cpu"), channels_last=False).scaled(spec).normalise(pixels)
    expected = xrv.utils.normalize(pixels.numpy().astype(np.float32), 255)  # the package's own scaling
    assert x.shape == (1, 1, 2, 2) and torch.allclose(x, torch.from_numpy(expected), atol=1e-3)


@pytest.mark.parametrize("name", [ALL, "resnet50-res512-all"])
def test_the_backbone_gives_the_packages_features(home, name):
    """Our network with the file loaded computes what torchxrayvision's own model computes on the same film."""
    path = place_weights(home, name)
    params = txrv_params(name, image_size=64)
    model, spec, _ = initial_model(params, ("infected", "normal"))
    model.eval()
    pixels = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    x = Runtime(torch.device("cpu"), channels_last=False).scaled(spec).normalise(pixels)
    if name.startswith("densenet"):
        theirs = xrv.models.DenseNet(weights=None)
        theirs.load_state_dict(torch.load(path, weights_only=False).state_dict())
        reference = torch.nn.functional.adaptive_avg_pool2d(torch.relu(theirs.eval().features(x)), 1).flatten(1)
        ours = torch.nn.functional.adaptive_avg_pool2d(torch.relu(model.features(x)), 1).flatten(1)
    else:
        theirs = torchvision_resnet50_one_channel()
        theirs.load_state_dict(torch.load(path, weights_only=True))
        theirs.fc = torch.nn.Identity()
        reference = theirs.eval()(x)
        head, model.fc = model.fc, torch.nn.Identity()
        ours = model(x)
        model.fc = head
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.parametrize("mode", ["none", "backbone", "head", ["features.denseblock1", "features.conv0"]])
def test_every_freeze_mode_works(home, mode):
    place_weights(home)
    model, spec, trainable = initial_model(txrv_params(freeze=mode), ("infected", "normal"))
    assert trainable == freeze(model, mode) and trainable > 0
    out = model(Runtime(torch.device("cpu"), channels_last=False).scaled(spec).normalise(
        torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)))
    assert out.shape == (2, 2)


def test_the_legacy_file_format_loads_too(home):
    place_weights(home, legacy=True)
    model, _, _ = initial_model(txrv_params(), ("a", "b"))
    assert model.features.conv0.in_channels == 1


def test_offline_without_the_file_the_error_names_file_folder_and_url(home, monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens: offline, at once
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    expected = weights_file(ALL)
    with pytest.raises(XrayWeightsError) as info:
        initial_model(txrv_params(), ("infected", "normal"))
    message = str(info.value)
    assert expected.name in message and str(expected.parent) in message
    assert xrv.models.model_urls[ALL]["weights_url"] in message
    assert "train.weights: none" in message
    assert not expected.exists() and not Path(str(expected) + ".part").exists()


def test_a_file_whose_sha256_is_not_the_published_one_is_refused_before_unpickling(home, monkeypatch):
    monkeypatch.delenv(PINS_ENV)  # the published pin applies
    path = weights_file(ALL)
    assert path.name in xray_weights.PUBLISHED_SHA256
    path.parent.mkdir(parents=True)
    marker = home / "ran"
    with path.open("wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(XrayWeightsError, match="refused before unpickling") as info:
        initial_model(txrv_params(), ("infected", "normal"))
    assert str(path) in str(info.value) and xray_weights.PUBLISHED_SHA256[path.name] in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("txrv:densenet121-res224-al", "did you mean txrv:densenet121-res224-all"),
        ("txrv:", "not a torchxrayvision weights name"),
        ("txrv:vgg16", "allowed: densenet121-res224-all"),
        ("xrv:densenet121-res224-all", "txrv:<name>"),
    ],
)
def test_bad_txrv_names_are_refused_with_the_fix(value, message):
    with pytest.raises(ConfigError, match="train.weights") as info:
        parse_params(tiny_params_dict(weights=value))
    assert message in str(info.value)


def test_a_connected_machine_gets_the_file_through_the_packages_own_download(home, tmp_path, monkeypatch):
    """torchxrayvision's download, pointed at a local HTTP server holding a file the test built, fills its cache."""
    import http.server
    import threading
    from functools import partial

    served = tmp_path / "served"
    built = place_weights(served)  # built under another HOME: its pin lands in served/pins.json
    monkeypatch.setenv(PINS_ENV, str(served / "pins.json"))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(built.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        entry = dict(xrv.models.model_urls[ALL], weights_url=f"http://127.0.0.1:{server.server_port}/{built.name}")
        monkeypatch.setitem(xrv.models.model_urls, ALL, entry)
        monkeypatch.setitem(xrv.models.model_urls, "all", entry)
        target = weights_file(ALL)
        assert not target.exists()
        model, _, _ = initial_model(txrv_params(), ("infected", "normal"))
    finally:
        server.shutdown()
        server.server_close()
    assert target.read_bytes() == built.read_bytes()
    assert torch.equal(model.features.conv0.weight, torch.load(built, weights_only=False).features.conv0.weight)
