"""Chest X-ray pretrained backbones from torchxrayvision (`train.weights: txrv:<name>`).

torchxrayvision's DenseNet121 and ResNet50 were trained on seven public chest X-ray collections; they read one
channel scaled to [-1024, 1024] (`XRV_MEAN`, `XRV_STD` in the checkpoint's spec: (pixel / 255 - 0.5) * 2048). The
file comes through the package's own download and cache (~/.torchxrayvision/models_data, or wherever HOME points);
offline, with the file absent, `XrayWeightsError` names the file, the folder and the URL: never random weights.

Its DenseNet files are pickled whole modules, and loading one with pickle runs whatever code it names. So a file is
never unpickled as it stands: its sha256 is checked first against the release asset's where one is pinned
(`PUBLISHED_SHA256`, plus a site's own pins in the JSON file `CXR_WEIGHTS_PINS` names), and then it is read by an
unpickler that builds tensors and nothing else (`read_tensors`): every class the file names becomes an inert record
of its state, from which the parameters and buffers are collected by their dotted names.
"""

from __future__ import annotations

import collections
import copyreg
import json
import os
import pickle
import types
import warnings
from pathlib import Path

import torch

from cxr.checksums import sha256_of
from cxr.config import XRV_PREFIX, XRV_WEIGHTS
from cxr.model.weights import WeightsError

XRV_MEAN = (0.5,)  # one channel: (pixels / 255 - 0.5) / (1 / 2048) = (2 * pixels / 255 - 1) * 1024
XRV_STD = (1 / 2048,)

# sha256 of the release assets (the publisher lists none; these are the files of the v1 release, as downloaded).
PUBLISHED_SHA256 = {
    "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt": (
        "56524913dd16a906422e8d8b66a7a5c46be1d82eb7ac012d8103776f1aa68899"
    ),
    "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt": (
        "23b13a04459684ffa41247d068207a7657b4e1b4dec2b02431f5026bd75b1189"
    ),
}
PINS_ENV = "CXR_WEIGHTS_PINS"  # a JSON file {file name: sha256} of copies a site has vetted itself


class XrayWeightsError(WeightsError):
    """txrv weights that cannot be had or must not be read."""


def xrv_name(weights: str) -> str:
    """`txrv:densenet121-res224-all` -> `densenet121-res224-all`."""
    return weights.removeprefix(XRV_PREFIX)


def _package():
    """torchxrayvision, imported only when its weights are asked for (it silences every warning of the process
    on import: the filters are restored)."""
    with warnings.catch_warnings():
        import torchxrayvision

    return torchxrayvision


def weights_url(name: str) -> str:
    return _package().models.model_urls[name]["weights_url"]


def weights_file(name: str) -> Path:
    """Where torchxrayvision keeps the file of `name` (its cache folder, under HOME)."""
    return Path(_package().utils.get_cache_dir()) / Path(weights_url(name)).name


def pinned_sha256(filename: str) -> str | None:
    """The sha256 a file must have: a site's pin (CXR_WEIGHTS_PINS) first, then the published one; None if neither."""
    pins_path = os.environ.get(PINS_ENV)
    if pins_path:
        try:
            pins = json.loads(Path(pins_path).read_text())
        except (OSError, ValueError) as exc:
            raise XrayWeightsError(f"{PINS_ENV}={pins_path}: not a JSON file of file name -> sha256 ({exc})") from None
        if not isinstance(pins, dict) or not all(isinstance(v, str) for v in pins.values()):
            raise XrayWeightsError(f"{PINS_ENV}={pins_path}: expected a JSON object of file name -> sha256")
        if filename in pins:
            return pins[filename].lower()
    return PUBLISHED_SHA256.get(filename)


def fetch(name: str) -> Path:
    """The local file of txrv weights `name`, downloaded by torchxrayvision into its cache if absent."""
    path, url = weights_file(name), weights_url(name)
    if path.is_file():
        return path
    try:
        _package().models.get_weights(name)  # prints where it downloads to and a progress bar; resumes a .part file
    except Exception as exc:  # noqa: BLE001 - offline, HTTP errors, a full disk: all end here, by name
        raise XrayWeightsError(
            f"train.weights={XRV_PREFIX}{name}: the weights file {path.name} is not in torchxrayvision's cache "
            f"({path.parent}) and downloading it failed ({type(exc).__name__}: {exc}).\n"
            f"Fix: on a connected machine download {url}\nand put it at {path} (the folder follows HOME), then run "
            f"again; or set train.weights: none to train from random weights on purpose."
        ) from None
    return path


def checked(path: Path) -> str:
    """The file's sha256, refused by name when a pinned value differs; read before anything is unpickled."""
    digest = sha256_of(path)
    expected = pinned_sha256(path.name)
    if expected is not None and digest != expected:
        raise XrayWeightsError(
            f"{path}: sha256 {digest} is not the published {expected}: refused before unpickling (a pickled file "
            "runs code when loaded). Delete it so it is downloaded again, or pin a copy you have vetted in the JSON "
            f"file {PINS_ENV} names."
        )
    return digest


class _Inert:
    """What every class a weights file names becomes: its constructor arguments and state, kept and never run."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
}


class _TensorUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _TENSOR_GLOBALS:
            return _TENSOR_GLOBALS[(module, name)]
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstruct
        return type(name, (_Inert,), {"_qualname": f"{module}.{name}"})


def _reconstruct(cls, base, state):
    """copyreg._reconstructor (protocol 0/1 objects) for inert classes only."""
    if not (isinstance(cls, type) and issubclass(cls, _Inert)):
        raise pickle.UnpicklingError(f"refused: {cls!r} is not a class the weights reader keeps inert")
    return copyreg._reconstructor(cls, object, None)


def _load(file, **kwargs):
    return _TensorUnpickler(file, **kwargs).load()


# what torch.load takes as its pickle module: the zip format uses Unpickler, the legacy format (the 2020 DenseNet
# files) load as well
_tensor_pickle = types.SimpleNamespace(Unpickler=_TensorUnpickler, load=_load, __name__="cxr_tensor_pickle")


def _collect(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Parameters and buffers of a pickled module tree (inert records of nn.Module state) by dotted name."""
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return
    for kind in ("_parameters", "_buffers"):
        for key, value in (state.get(kind) or {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value.detach()
    for key, child in (state.get("_modules") or {}).items():
        _collect(child, f"{prefix}{key}.", out)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file by name: a state dict as it is, a whole pickled module as its state dict;
    no class the file names is imported or run."""
    try:
        with warnings.catch_warnings():  # a legacy file's "Couldn't retrieve source code": inert on purpose
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code", category=UserWarning)
            loaded = torch.load(path, map_location="cpu", pickle_module=_tensor_pickle, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise XrayWeightsError(f"{path}: not a readable PyTorch weights file ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, _Inert):
        state: dict[str, torch.Tensor] = {}
        _collect(loaded, "", state)
    elif isinstance(loaded, dict):
        state = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    else:
        state = {}
    if not state:
        raise XrayWeightsError(f"{path}: holds no tensors (a {type(loaded).__name__}); is it a torchxrayvision file?")
    return state


def backbone_state(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchxrayvision model's tensors under torchvision's names for its network: DenseNet's `features.*` are
    torchvision's already (its pathology classifier and op_threshs are left out); ResNet's sit under `model.`
    in a whole module and at the top in a state-dict file."""
    network = XRV_WEIGHTS[name][0]
    if network.startswith("densenet"):
        return {k: v for k, v in state.items() if k.startswith("features.")}
    return {k.removeprefix("model."): v for k, v in state.items() if not k.removeprefix("model.").startswith("fc.")}


def xray_state_dict(weights: str) -> tuple[dict[str, torch.Tensor], Path, str]:
    """(backbone tensors, file, sha256) of `train.weights: txrv:<name>`: fetched, checked, read as tensors only."""
    name = xrv_name(weights)
    path = fetch(name)
    digest = checked(path)
    return backbone_state(name, read_tensors(path)), path, digest
