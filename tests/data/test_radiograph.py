"""Radiograph-aware input (train.input): each step does what it says, the default changes no byte,
and the recipe travels by name from decode to prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxr.data.decoding import Decoder, build_store
from cxr.data.radiograph import BASE, DEFAULT, InputRecipe, RecipeError, crop_border, square
from cxr.data.store import SplitStore, StoreError, decode_all

RNG = np.random.default_rng(3)
LUNGS = (RNG.random((60, 80)) * 160 + 40).astype(np.uint8)  # a textured film, 80 wide


def letterboxed(film: np.ndarray, bar: int = 20, value: int = 0) -> np.ndarray:
    """`film` with uniform bars of `bar` rows above and below and `bar // 2` columns left and right."""
    h, w = film.shape
    out = np.full((h + 2 * bar, w + bar), value, np.uint8)
    out[bar : bar + h, bar // 2 : bar // 2 + w] = film
    return out


def test_default_recipe_is_the_old_decoding_byte_for_byte():
    img = Image.fromarray(LUNGS, mode="L")
    assert DEFAULT.name == BASE == "gray8-square-bilinear"
    assert np.array_equal(DEFAULT.row(img, 32), np.asarray(img.resize((32, 32), Image.BILINEAR)))


def test_names_round_trip_and_unknown_ones_are_refused():
    recipe = InputRecipe(border="crop", intensity="clahe", aspect="pad")
    assert recipe.name == "gray8-square-bilinear;border=crop;intensity=clahe;aspect=pad"
    assert InputRecipe.from_name(recipe.name) == recipe and InputRecipe.from_name(BASE) == DEFAULT
    with pytest.raises(RecipeError, match="not this version's"):
        InputRecipe.from_name("rgb-square-bicubic")
    with pytest.raises(RecipeError, match="steps this version does not know"):
        InputRecipe.from_name(BASE + ";sharpen=2")
    with pytest.raises(RecipeError, match="intensity 'gamma' is not one of none, window, equalize, clahe"):
        InputRecipe.from_name(BASE + ";intensity=gamma")


@pytest.mark.parametrize("value", [0, 255, 128])
def test_border_crop_strips_black_white_and_grey_bars(value):
    assert np.array_equal(crop_border(letterboxed(LUNGS, value=value)), LUNGS)
    assert np.array_equal(crop_border(LUNGS), LUNGS)  # nothing uniform: nothing cut


def test_border_crop_keeps_at_least_half_of_each_side():
    mostly_bar = np.zeros((100, 100), np.uint8)
    mostly_bar[45:55, 45:55] = LUNGS[:10, :10]
    kept = crop_border(mostly_bar)
    assert kept.shape == (50, 50)
    assert np.array_equal(crop_border(np.zeros((40, 40), np.uint8)).shape, (20, 20))  # all uniform


def test_intensity_steps_spread_a_dim_film_over_the_range():
    dim = (LUNGS // 4 + 30).astype(np.uint8)  # 40..70: an under-exposed, low-contrast export
    img = Image.fromarray(dim, mode="L")
    for intensity in ("window", "equalize", "clahe"):
        row = InputRecipe(intensity=intensity).row(img, 60)
        assert row.shape == (60, 60) and row.dtype == np.uint8
        assert int(row.max()) - int(row.min()) > 100, intensity  # from 30 levels to over 100 (CLAHE: clip-limited)
        assert np.array_equal(row, InputRecipe(intensity=intensity).row(img, 60))  # deterministic
    window = InputRecipe(intensity="window").row(img, 60)
    assert window.min() == 0 and window.max() == 255


def test_aspect_steps():
    assert square(LUNGS, "pad").shape == (80, 80) and (square(LUNGS, "pad")[:10] == 0).all()
    assert np.array_equal(square(LUNGS, "crop"), LUNGS[:, 10:70])
    assert square(LUNGS, "squash") is LUNGS


def test_decode_records_the_recipe_and_prediction_rebuilds_it(tmp_path):
    raw = tmp_path / "raw"
    for split in ("train", "val", "test"):
        for k, cls in enumerate(("infected", "normal")):
            (raw / split / cls).mkdir(parents=True)
            for i in range(2):
                film = np.roll(LUNGS, 7 * i + 3 * k, axis=1)
                Image.fromarray(letterboxed(film, value=255 * k)).save(raw / split / cls / f"{i}.png")
    recipe = InputRecipe(border="crop", intensity="clahe", aspect="crop")
    build_store(raw, tmp_path / "store", 32, multilabel=False, decoder=Decoder(workers=2), recipe=recipe)
    index = json.loads((tmp_path / "store" / "index.json").read_text())
    assert index["preprocessing"] == recipe.name
    store = SplitStore(tmp_path / "store", "test", 32, recipe.name)
    files = [raw / f for f in store.files]
    good, pixels, problems = decode_all(files, 32, preprocessing=recipe.name)  # as external and predict decode
    assert good == files and not problems and np.array_equal(pixels, store[range(len(store))].numpy())
    plain = decode_all(files, 32)[1]
    assert not np.array_equal(plain, pixels)  # the steps did something: bars gone, contrast spread
    with pytest.raises(StoreError, match=r"decoded by .*border=crop.* but the model needs 'gray8-square-bilinear'"):
        SplitStore(tmp_path / "store", "test", 32, BASE)
