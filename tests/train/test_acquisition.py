"""Acquisition augmentations (another hospital's film) and batches balanced across sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import gaussian_blur as reference_blur

from cxr.config import load_params
from cxr.errors import PipelineError
from cxr.train.augment import acquire, augment_batch, gaussian_blur, is_active
from cxr.train.loop import epoch_order, source_balanced

AUGMENT = load_params().train.augment  # every key off


def films(n: int = 6, side: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(n, 1, side, side, generator=g), 3, 1, 1)
    return (smooth * 0.6 + 0.2).clamp(0, 1)


def variation(x: torch.Tensor) -> torch.Tensor:
    """Per image, the mean absolute difference between horizontal neighbours (detail, edges, noise)."""
    return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))


def with_(**keys):
    return AUGMENT.model_copy(update=keys)


def test_blur_matches_torchvision_per_image_sigma():
    x = films(2)
    ours = gaussian_blur(x, torch.tensor([0.8, 1.6]), reach=1.6)
    radius = int(np.ceil(3 * 1.6))
    for i, sigma in enumerate((0.8, 1.6)):
        expected = reference_blur(x[i : i + 1], [2 * radius + 1] * 2, [sigma, sigma])
        assert torch.allclose(ours[i : i + 1], expected, atol=1e-5)


def test_each_acquisition_step_does_what_it_says():
    x = films()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert not is_active(AUGMENT) and is_active(with_(noise=0.05)) and is_active(with_(resolution=0.5))
    gamma = acquire(x, with_(gamma=0.5), g())
    ranks = lambda t: t.flatten(1).argsort(1)  # noqa: E731 - a power curve keeps every pixel's rank
    assert torch.equal(ranks(gamma), ranks(x)) and (gamma - x).abs().mean() > 0.01
    assert (variation(acquire(x, with_(blur=2.0), g())) <= variation(x) + 1e-6).all()
    assert (variation(acquire(x, with_(sharpen=2.0), g())) >= variation(x) - 1e-6).all()
    assert variation(acquire(x, with_(sharpen=2.0), g())).mean() > variation(x).mean() * 1.2
    noisy = acquire(x, with_(noise=0.1), g())
    assert 0.005 < (noisy - x).std() < 0.1
    coarse = acquire(x, with_(resolution=0.25), g())
    assert coarse.shape == x.shape and variation(coarse).mean() < variation(x).mean() * 0.95
    every = with_(gamma=0.3, blur=1.0, sharpen=1.0, noise=0.05, resolution=0.5)
    a, b = augment_batch(x, every, g()), augment_batch(x, every, g())
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1  # seeded and in range


def test_acquisition_off_draws_nothing():
    """Runs made before these keys draw the same random numbers: an old recipe's batches are unchanged."""
    x = films()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    augment_batch(x, with_(hflip=0.5, brightness=0.2), g1)
    augment_batch(x, with_(hflip=0.5, brightness=0.2, noise=0.0, resolution=1.0), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_source_sampler_draws_each_source_equally():
    sources = ["big"] * 90 + ["small"] * 10
    weights = source_balanced(sources, "train")
    assert weights[:90].sum() == pytest.approx(0.5) and weights[90:].sum() == pytest.approx(0.5)
    drawn = torch.cat(list(epoch_order(100, 32, torch.Generator().manual_seed(0), weights)))
    assert len(drawn) == 100
    small = int((drawn >= 90).sum())
    counts = [int((torch.cat(list(epoch_order(100, 32, torch.Generator().manual_seed(s), weights))) >= 90).sum())
              for s in range(20)]  # fmt: skip
    assert 40 <= np.mean(counts) <= 60 and 0 <= small <= 100  # about half from 10% of the films
    shuffled = torch.cat(list(epoch_order(100, 32, torch.Generator().manual_seed(0), None)))
    assert sorted(shuffled.tolist()) == list(range(100))  # shuffle: each image once
    with pytest.raises(PipelineError, match=r"2 of 3 in data/decoded/train have none"):
        source_balanced(["a", "", ""], "data/decoded/train")
    assert torch.equal(source_balanced(["", "", "", ""], "train"), torch.full((4,), 0.25, dtype=torch.float64))


def test_store_records_each_films_source_and_train_balances_them(tmp_path):
    from PIL import Image

    from cxr.data.decoding import Decoder, build_store
    from cxr.data.store import SplitStore

    raw = tmp_path / "raw"
    for split in ("train", "val", "test"):
        rows = ["path,labels,patient_id,source"]
        for cls in ("infected", "normal"):
            (raw / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(raw / split / cls / f"{i}.png")
                rows.append(f"{cls}/{i}.png,{cls},p{cls}{i},{'north' if i else 'south'}")
        (raw / split / "labels.csv").write_text("\n".join(rows) + "\n")
    build_store(raw, tmp_path / "store", 8, multilabel=False, decoder=Decoder(workers=1))
    train = SplitStore(tmp_path / "store", "train")
    assert train.sources == ("south", "north", "north") * 2
    weights = source_balanced(train.sources, "train")
    assert weights[0] == pytest.approx(0.25) and weights[1] == pytest.approx(0.125)
