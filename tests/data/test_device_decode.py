"""cxr/data/device_decode.py: JPEG films decoded in batches through torchvision (on CUDA where
decode.device is cuda; here on the CPU, through the same code) give the CPU path's rows byte for byte,
in order, with every film the device must not read (PNG, CMYK, EXIF-rotated, corrupt) left to it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cxr.config import parse_params
from cxr.data import device_decode
from cxr.data.decoding import Decoder, build_store
from cxr.data.device_decode import device_mode, device_rows, luma
from cxr.data.images import ImageTooLarge
from cxr.data.radiograph import DEFAULT, InputRecipe
from cxr.data.store import decode_image, decode_row
from cxr.errors import ConfigError
from stages import decode as decode_stage
from tests.conftest import tiny_params_dict

RNG = np.random.default_rng(7)
CPU = torch.device("cpu")


def _film(shape=(48, 40)) -> np.ndarray:
    """A smooth gray film with noise: JPEG's blocks and rounding both matter."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.clip(120 + 60 * np.sin(x / 7) * np.cos(y / 9) + RNG.normal(0, 12, shape), 0, 255).astype(np.uint8)


def _rotated_jpeg(path) -> None:
    exif = Image.Exif()
    exif[device_decode.EXIF_ORIENTATION] = 6  # rotate 90 degrees on display
    Image.fromarray(_film((30, 50))).save(path, "JPEG", exif=exif)


def _films(folder, count: int) -> list:
    """`count` films of every kind, shuffled by kind: gray and colour (progressive too) JPEGs for the
    device, PNG, CMYK and EXIF-rotated JPEGs for the CPU."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ["gray", "rgb", "progressive", "png", "cmyk", "rotated"]
    files = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        path = folder / f"{i:03d}-{kind}.{'png' if kind == 'png' else 'jpg'}"
        gray = _film((40 + i % 7, 36 + i % 5))
        if kind == "gray":
            Image.fromarray(gray).save(path, quality=80)
        elif kind in ("rgb", "progressive"):
            rgb = np.dstack([gray, np.roll(gray, 3, 1), 255 - gray])
            Image.fromarray(rgb).save(path, quality=90, progressive=kind == "progressive")
        elif kind == "png":
            Image.fromarray(gray).save(path)
        elif kind == "cmyk":
            Image.fromarray(np.dstack([gray] * 3)).convert("CMYK").save(path, "JPEG")
        else:
            _rotated_jpeg(path)
        files.append(path)
    return files


def test_luma_is_pil_s_gray_conversion_for_every_colour():
    levels = torch.arange(256, dtype=torch.uint8)
    r, g, b = torch.meshgrid(levels, levels[::5], levels[::3], indexing="ij")  # 256 x 52 x 86 colours
    rgb = torch.stack([r.reshape(-1), g.reshape(-1), b.reshape(-1)]).reshape(3, 256, -1)
    pil = np.asarray(Image.fromarray(rgb.permute(1, 2, 0).numpy(), "RGB").convert("L"))
    assert np.array_equal(luma(rgb).numpy(), pil)


def test_only_films_the_device_reads_as_the_cpu_does_go_to_it(tmp_path):
    files = _films(tmp_path, 6)
    modes = {f.name.split("-")[1].split(".")[0]: device_mode(f, 50_000_000) for f in files}
    assert modes == {"gray": "L", "rgb": "RGB", "progressive": "RGB", "png": None, "cmyk": None, "rotated": None}
    assert device_mode(files[0], 1024) is None  # over verify.max_pixels: the CPU path refuses it by name
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(files[0].read_bytes()[:40])
    assert device_mode(cut, 50_000_000) is None


@pytest.mark.parametrize("recipe", [DEFAULT, InputRecipe(border="crop", intensity="equalize", aspect="pad")])
def test_batched_rows_are_the_cpu_rows_byte_for_byte_and_in_order(tmp_path, monkeypatch, recipe):
    monkeypatch.setattr(device_decode, "BATCH", 8)  # 27 films: four batches, one part-full
    batches, decode_films, calls = [], device_decode.decode_films, []

    def on_device(paths, modes, device):
        calls.append("device")
        batches.append(len(paths))
        return decode_films(paths, modes, device)

    monkeypatch.setattr(device_decode, "decode_films", on_device)
    on_cpu = []
    files = _films(tmp_path, 27)

    def cpu_rows(chosen):
        calls.append("cpu")
        on_cpu.extend(f.name for f in chosen)
        return map(decode_row, [(str(f), 24, 50_000_000, recipe) for f in chosen])

    rows = list(device_rows(files, 24, 50_000_000, recipe, CPU, cpu_rows))
    expected = [decode_image(f, 24, recipe=recipe).tobytes() for f in files]
    assert len(rows) == 27 and rows == expected
    assert batches == [5, 4, 3, 3] and len(on_cpu) == 12  # gray, colour and progressive JPEGs on the device
    assert {name.split("-")[1] for name in on_cpu} == {"png.png", "cmyk.jpg", "rotated.jpg"}
    assert calls == ["cpu", "device"] * 4, "each batch's CPU films start on the processes before the device decodes"


def test_a_store_built_through_the_batched_path_is_the_cpu_store(tmp_path):
    for split in ("train", "val", "test"):
        for label in ("infected", "normal"):
            _films(tmp_path / "raw" / split / label, 9)
    one = build_store(tmp_path / "raw", tmp_path / "cpu", 32, False, decoder=Decoder(workers=2))
    two = build_store(tmp_path / "raw", tmp_path / "dev", 32, False, decoder=Decoder(workers=2, device=CPU))
    assert one == two == {"train": 18, "val": 18, "test": 18}
    for name in ("train.npy", "val.npy", "test.npy", "index.json"):
        assert (tmp_path / "cpu" / name).read_bytes() == (tmp_path / "dev" / name).read_bytes(), name


def test_a_bad_film_is_named_by_the_cpu_path_as_before(tmp_path):
    files = _films(tmp_path, 4)
    cut = tmp_path / "z-cut.jpg"
    cut.write_bytes(files[0].read_bytes()[:40])
    big = tmp_path / "z-big.jpg"
    buffer = io.BytesIO()
    Image.fromarray(_film((64, 64))).save(buffer, "JPEG")
    big.write_bytes(buffer.getvalue())
    cpu_rows = lambda chosen: map(decode_row, [(str(f), 16, 2048, DEFAULT) for f in chosen])  # noqa: E731
    with pytest.raises(ImageTooLarge, match="z-big.jpg: 64x64 = 4,096 pixels, over the limit of 2,048"):
        list(device_rows([*files, big], 16, 2048, DEFAULT, CPU, cpu_rows))
    cpu_rows = lambda chosen: map(decode_row, [(str(f), 16, 50_000_000, DEFAULT) for f in chosen])  # noqa: E731
    with pytest.raises(OSError):
        list(device_rows([*files, cut], 16, 50_000_000, DEFAULT, CPU, cpu_rows))


def test_a_batch_the_device_refuses_goes_to_the_cpu_whole(tmp_path, monkeypatch, capsys):
    def refuses(paths, modes, device):
        raise RuntimeError("nvjpegDecodeBatched failed: 6")

    monkeypatch.setattr(device_decode, "decode_films", refuses)
    files = _films(tmp_path, 9)
    cpu_rows = lambda chosen: map(decode_row, [(str(f), 16, 50_000_000, DEFAULT) for f in chosen])  # noqa: E731
    assert list(device_rows(files, 16, 50_000_000, DEFAULT, CPU, cpu_rows)) == [
        decode_image(f, 16).tobytes() for f in files
    ]
    assert "decode: 6 JPEG films from 000-gray.jpg on the CPU instead (cpu said: nvjpegDecodeBatched failed: 6)" in (
        capsys.readouterr().out
    )


def test_decode_device_cuda_without_a_gpu_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    raw = tiny_params_dict()
    raw["decode"]["device"] = "cuda"
    with pytest.raises(ConfigError, match="decode.device is 'cuda' but torch finds no CUDA device"):
        decode_stage.decode(parse_params(raw))
    assert decode_stage.decoder("cpu") == Decoder()  # cpu: the unchanged process path
