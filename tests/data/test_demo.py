import hashlib

import numpy as np
import pytest
from PIL import Image

from cxr.config import parse_params
from cxr.data.demo import write_demo_dataset
from cxr.data.phantoms import render_phantom
from tests.conftest import tiny_params_dict


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_and_counts(demo_root):
    for split, n in (("train", 12), ("val", 6), ("test", 6)):
        for cls in ("infected", "normal"):
            files = sorted((demo_root / split / cls).glob("*.png"))
            assert len(files) == n
    with Image.open(next((demo_root / "train" / "normal").glob("*.png"))) as img:
        assert img.size == (48, 48) and img.mode == "L"


def test_same_params_give_identical_files(tmp_path, demo_root):
    params = parse_params(tiny_params_dict())
    for workers in (1, 2):  # one process or several: the same bytes
        again = tmp_path / f"again{workers}"
        write_demo_dataset(again, params.data, params.seed, workers=workers)
        assert _digest(again) == _digest(demo_root)


def test_seed_changes_the_images(tmp_path, demo_root):
    raw = tiny_params_dict()
    raw["seed"] = raw["seed"] + 1
    params = parse_params(raw)
    other = tmp_path / "other"
    write_demo_dataset(other, params.data, params.seed)
    assert _digest(other) != _digest(demo_root)


def test_multiclass_task_writes_three_classes(tmp_path):
    raw = tiny_params_dict()
    raw["data"]["task"] = "multiclass"
    params = parse_params(raw)
    counts = write_demo_dataset(tmp_path / "raw", params.data, params.seed)
    assert set(counts["train"]) == {"covid", "pneumonia", "normal"}
    assert all(n == 12 for n in counts["train"].values())


def _lower_lung_brightness(cls, difficulty, n=24):
    """Mean brightness of the lower lung zones (where opacities sit) over n phantoms."""
    values = []
    for i in range(n):
        img = render_phantom(cls, 128, difficulty, np.random.default_rng(i)).astype(float)
        values.append(img[64:100, 20:50].mean() + img[64:100, 78:108].mean())
    return float(np.mean(values))


@pytest.mark.parametrize("cls", ["infected", "pneumonia"])
def test_lesions_brighten_the_lungs_and_fade_with_difficulty(cls):
    # the same RNG seeds draw the same anatomy, so the difference is the lesion alone
    normal = _lower_lung_brightness("normal", 0.0)
    easy = _lower_lung_brightness(cls, 0.0) - normal
    hard = _lower_lung_brightness(cls, 1.0) - _lower_lung_brightness("normal", 1.0)
    assert easy > 3.0  # grey levels out of 255
    assert 0 < hard < easy


class _UlpNudgedNumpy:
    """numpy as the phantom renderer sees it, except that the vectorised transcendental functions
    (whose SIMD versions differ by a few ULP between CPUs: SSE, AVX2, AVX-512/SVML) return results
    moved by up to `ulps` units in the last place, in a fixed pseudo-random direction per element."""

    FUNCTIONS = ("exp", "cos", "sin", "power", "sqrt")

    def __init__(self, ulps: int):
        self.ulps = ulps

    def __getattr__(self, name):
        real = getattr(np, name)
        if name not in self.FUNCTIONS:
            return real

        def nudged(*args, **kwargs):
            out = np.asarray(real(*args, **kwargs))
            steps = np.random.default_rng(out.size).integers(-self.ulps, self.ulps + 1, out.shape)
            for _ in range(self.ulps):
                up, down = steps > 0, steps < 0
                out = np.where(up, np.nextafter(out, np.inf), np.where(down, np.nextafter(out, -np.inf), out))
                steps = steps - np.sign(steps)
            return out[()] if out.ndim == 0 else out

        return nudged


def test_demo_bytes_do_not_depend_on_the_cpus_vector_math(monkeypatch):
    """Finding 15 (issue 14): another machine's SIMD exp/cos/pow differ in the last bits; the demo's
    bytes (and so data/raw's hash in dvc.lock) must not."""
    import cxr.data.phantoms as phantoms

    def render_all():
        return [render_phantom(cls, 128, 0.3, np.random.default_rng(i)).tobytes() for i in range(12)
                for cls in ("normal", "covid", "pneumonia")]  # fmt: skip

    exact = render_all()
    monkeypatch.setattr(phantoms, "np", _UlpNudgedNumpy(ulps=4))
    assert render_all() == exact


def test_demo_bytes_do_not_depend_on_numpys_dispatched_cpu_features(tmp_path):
    """The same, for real: generate the demo with numpy's dispatched CPU features (AVX2, AVX-512 where
    this CPU has them) disabled, in a fresh process, and compare with this process's bytes."""
    import os
    import subprocess
    import sys

    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    present = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    script = (
        "import sys, numpy as np; from cxr.data.phantoms import render_phantom; "
        "sys.stdout.buffer.write(b''.join(render_phantom(c, 128, 0.3, np.random.default_rng(i)).tobytes() "
        "for i in range(6) for c in ('normal', 'covid', 'pneumonia')))"
    )
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(present)}
    baseline = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True).stdout
    here = b"".join(
        render_phantom(c, 128, 0.3, np.random.default_rng(i)).tobytes()
        for i in range(6)
        for c in ("normal", "covid", "pneumonia")
    )
    assert baseline == here, f"the demo's bytes change with numpy's CPU features {present}"
