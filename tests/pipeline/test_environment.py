"""The pinned environment (finding 15 of issue 14): requirements.lock pins every package the
requirements files pull in, within their ranges; the tests run in it; and the demo data it
generates is the data whose hash dvc.lock records."""

import hashlib
import importlib.metadata as metadata
import json

import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from cxr.config import load_params
from cxr.data.demo import write_demo_dataset
from tests.conftest import REPO


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def _requirements() -> list[Requirement]:
    out = []
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (REPO / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(Requirement(line))
    return out


def test_the_lock_pins_every_requirement_within_its_range():
    pins = _pins()
    for req in _requirements():
        key = req.name.lower().replace("_", "-")
        assert key in pins, f"requirements.lock does not pin {req.name}: regenerate it (see its header)"
        assert req.specifier.contains(pins[key]), f"requirements.lock pins {req.name}=={pins[key]}, outside {req}"


def test_the_tests_run_in_the_locked_environment():
    """The README's commands install with `-c requirements.lock`; a drifted install is named."""
    drifted = []
    for name, pinned in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-only package (CUDA wheels on Linux) this machine may not need
        if Version(installed).base_version != Version(pinned).base_version:  # 2.14.1+cpu is 2.14.1
            drifted.append(f"{name} {installed} (lock: {pinned})")
    assert drifted == [], f"installed releases differ from requirements.lock: {drifted}"


def _dvc_dir_md5(root) -> str:
    """DVC's hash of a directory output: md5 of its sorted JSON listing of (relpath, md5)."""
    entries = [
        {"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(root).as_posix()}
        for p in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
        if p.is_file()
    ]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_the_demo_data_reproduces_the_hash_committed_in_dvc_lock(tmp_path):
    """What a fresh clone on another machine does first: generate data/raw. Its hash must be the
    committed one, or every later stage's numbers differ too."""
    params = load_params(REPO / "params.yaml")
    assert params.data.source == "demo", "params.yaml no longer defaults to the demo data"
    write_demo_dataset(tmp_path / "raw", params.data, params.seed)
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    (committed,) = [out["md5"] for out in lock["stages"]["download"]["outs"] if out["path"] == "data/raw"]
    assert _dvc_dir_md5(tmp_path / "raw") == committed, "data/raw differs from dvc.lock: run dvc repro and commit"
