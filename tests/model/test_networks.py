import hashlib
import http.server
import socket
import threading
from functools import partial

import pytest
import torch
from torch import nn
from torchvision.models import get_model

from cxr.model import weights as weights_module
from cxr.model.networks import build_model, feature_width, freeze, train_mode, trainable_parameters
from cxr.model.weights import WeightsError


def test_resnet_head_width_comes_from_the_model():
    model = build_model("resnet18", 3, [20, 10], 0.3, 32)
    head = model.fc
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 20), (20, 10), (10, 3)]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in head)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_vgg_head_replaces_the_classifier():
    model = build_model("vgg16", 2, [], 0.0, 32)
    assert isinstance(model.classifier, nn.Sequential) and len(model.classifier) == 1
    assert model.classifier[0].in_features == 512 * 7 * 7
    assert feature_width(get_model("vgg16"), 32) == 25088


def _step(model, n_classes=2):
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, n_classes, (4,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_mode(model)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_freeze_backbone_trains_only_the_head_and_keeps_bn_stats():
    torch.manual_seed(0)
    model = build_model("resnet18", 2, [8], 0.0, 32)
    n = freeze(model, "backbone")
    head_params = sum(p.numel() for p in model.fc.parameters())
    assert n == head_params == trainable_parameters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model)
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        if key.startswith("fc.") and key.endswith("weight"):
            assert changed, key
        elif not key.startswith("fc."):
            assert not changed, f"{key} moved although the backbone is frozen"
    assert not model.bn1.training  # frozen BatchNorm stays in eval mode


def test_freeze_none_trains_everything():
    model = build_model("resnet18", 2, [], 0.0, 32)
    assert freeze(model, "none") == sum(p.numel() for p in model.parameters())
    before = model.bn1.running_mean.clone()
    _step(model)
    assert not torch.equal(before, model.bn1.running_mean)


def test_local_state_dict_is_loaded(tmp_path):
    torch.manual_seed(1)
    source = get_model("resnet18")
    path = tmp_path / "my_resnet18.pt"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", 2, [8], 0.0, 32, weights=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    # a checkpoint that wraps the state dict under "model" works as well
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, wrapped)
    model = build_model("resnet18", 2, [8], 0.0, 32, weights=str(wrapped))
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_wrong_or_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nope.pt: file not found"):
        build_model("resnet18", 2, [], 0.0, 32, weights=str(tmp_path / "nope.pt"))
    other = tmp_path / "vgg.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match="vgg.pt: does not match this architecture"):
        build_model("resnet18", 2, [], 0.0, 32, weights=str(other))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="junk.pt: not a readable PyTorch state-dict file"):
        build_model("resnet18", 2, [], 0.0, 32, weights=str(junk))


@pytest.fixture
def weights_server(tmp_path):
    """Serve a resnet18 state dict named as torchvision names its files (hash prefix included)."""
    torch.manual_seed(2)
    source = get_model("resnet18")
    staging = tmp_path / "staging.pth"
    torch.save(source.state_dict(), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    served = tmp_path / "www"
    served.mkdir()
    name = f"resnet18-{digest[:8]}.pth"
    staging.rename(served / name)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{name}", source
    server.shutdown()
    server.server_close()


def test_imagenet_weights_download_through_torch_hub(tmp_path, monkeypatch, weights_server):
    url, source = weights_server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(weights_module, "imagenet_weights_url", lambda arch: url)
    model = build_model("resnet18", 2, [], 0.0, 32, weights="imagenet")
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    cached = weights_module.imagenet_cache_file("resnet18")
    assert cached.is_file() and cached.parent == tmp_path / "torch_home" / "hub" / "checkpoints"


def _closed_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_imagenet_weights_offline_fail_clearly(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/resnet18-1234abcd.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(weights_module, "imagenet_weights_url", lambda arch: url)
    with pytest.raises(WeightsError) as err:
        build_model("resnet18", 2, [], 0.0, 32, weights="imagenet")
    message = str(err.value)
    assert "train.weights=imagenet" in message
    assert "`train.weights: none`" in message and "local state-dict file" in message
